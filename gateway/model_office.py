"""Plain data of the village office's report, shared by gateway/core/office.py (which
builds it) and gateway/store/office.py (which runs it as SQL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FAR = 1 << 62  # an open end of the date range


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """``start`` inclusive, ``end`` exclusive (epoch seconds; None: open); ``days``: the
    local days to break sales down by, as (label, start, end); ``time_of_use``: a JSON
    object of plan name -> seconds of use it sells (a voucher that used them is over)."""

    now: int
    start: int | None = None
    end: int | None = None
    batch: str | None = None
    seller: str | None = None
    days: tuple[tuple[str, int, int], ...] = ()
    time_of_use: str = "{}"

    def params(self) -> dict[str, Any]:
        return {"now": self.now, "start": -FAR if self.start is None else self.start,
                "end": FAR if self.end is None else self.end, "batch": self.batch,
                "seller": self.seller, "tou": self.time_of_use, "far": FAR}
