"""Plain data of the village office's report, shared by gateway/core/office.py (which
builds it) and gateway/store/office.py (which runs it as SQL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FAR = 1 << 62  # an open end of the date range


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """``start`` inclusive, ``end`` exclusive (epoch seconds; None: open); ``days``: the
    local days to break sales down by, as (label, start, end); ``time_of_use``: (plan
    name, seconds of use it sells) pairs (a voucher that used them is over)."""

    now: int
    start: int | None = None
    end: int | None = None
    batch: str | None = None
    seller: str | None = None
    days: tuple[tuple[str, int, int], ...] = ()
    time_of_use: tuple[tuple[str, int], ...] = ()

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "now": self.now, "start": -FAR if self.start is None else self.start,
            "end": FAR if self.end is None else self.end, "batch": self.batch,
            "seller": self.seller, "far": FAR}
        for i, (plan, seconds) in enumerate(self.time_of_use):
            params[f"tp{i}"], params[f"tv{i}"] = plan, seconds
        return params

    def time_of_use_sql(self) -> str:
        """The seconds of use a voucher's plan sells, as SQL over ``plan`` (:far: none)."""
        if not self.time_of_use:
            return ":far"
        whens = " ".join(f"WHEN :tp{i} THEN :tv{i}" for i in range(len(self.time_of_use)))
        return f"CASE plan {whens} ELSE :far END"
