"""Step 11: what a plan sells besides its rates, as Indonesian hotspot operators know it
("1 jam, berlaku 1 hari", "1GB, berlaku 1 hari", several phones on one voucher).

The fields live on :class:`gateway.config.schema.Plan`; their types and the checks that
span them live here, so schema.py stays a list of sections. Semantics: docs/plans.md.

- ``time_of_use``: seconds of use, counted only while a device of the voucher is online
  (idle time excluded); ``validity``: wall-clock seconds from first use. Both may be set
  ("1 jam, berlaku 1 hari"); time of use longer than the validity could never be used up
  and is refused.
- ``quota`` (down + up together) and ``quota_down`` / ``quota_up`` may all be set: each
  is a limit of its own and the first one reached ends the quota. A directional quota
  above the total could never be reached and is refused.
- ``after_quota = "slow"`` needs a quota and both fair-use rates; fair-use rates with
  ``after_quota = "cut"`` would be silently ignored and are refused.
- Sizes: "5MB", "1GB", "500MiB", "1.5gb" or a bare number of bytes; KB/MB/GB count in
  powers of 1024 like KiB/MiB/GiB, as MikroTik's limit-bytes and disks do.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Protocol

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from gateway.config.units import format_duration, format_rate, format_size, json_quote

MAX_SHARED_DEVICES = 10  # as the control API's max_devices
MAX_PRICE = 100_000_000  # rupiah: far above any voucher, far below a typo's 10**18
MIN_QUOTA = 1024**2  # below a megabyte the portal page alone would use it up
MAX_QUOTA = 1024**5

_BYTES_RE = re.compile(r"^(\d{1,18}(?:\.\d{1,9})?)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)?$")
_BYTES_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4,
                "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_BYTES_EXAMPLE = 'write e.g. "500MB", "1GB" or "500MiB"'


def parse_bytes(value: object) -> int:
    """Bytes for "5MB", "1GB", "500MiB", "1.5gb" or an integer; raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _BYTES_RE.match(value.strip().lower())):
        size = int(Decimal(match.group(1)) * _BYTES_UNITS[match.group(2) or "b"])
    else:
        raise ValueError(f"{json_quote(value)} is not an amount of data; {_BYTES_EXAMPLE}")
    if size <= 0:
        raise ValueError(f"{json_quote(value)} must be above zero; {_BYTES_EXAMPLE}")
    return size


def _optional_bytes(value: object) -> int | None:
    return None if value is None else parse_bytes(value)


def _quota_bounds(value: int | None) -> int | None:
    if value is not None and not MIN_QUOTA <= value <= MAX_QUOTA:
        raise ValueError(f"{format_size(value)} is outside {format_size(MIN_QUOTA)} .. "
                         f"{format_size(MAX_QUOTA)}; {_BYTES_EXAMPLE}")
    return value


Quota = Annotated[int | None, BeforeValidator(_optional_bytes), AfterValidator(_quota_bounds)]
SharedDevices = Annotated[int, Field(strict=True, ge=1, le=MAX_SHARED_DEVICES)]
Price = Annotated[int, Field(strict=True, ge=0, le=MAX_PRICE)]


class PlanLimits(Protocol):
    """What check_limits reads of a plan (read-only: plans are frozen)."""

    @property
    def time_of_use(self) -> int | None: ...
    @property
    def validity(self) -> int | None: ...
    @property
    def quota(self) -> int | None: ...
    @property
    def quota_down(self) -> int | None: ...
    @property
    def quota_up(self) -> int | None: ...
    @property
    def after_quota(self) -> str: ...
    @property
    def fair_use_down(self) -> int | None: ...
    @property
    def fair_use_up(self) -> int | None: ...
    @property
    def ceil_down(self) -> int | None: ...
    @property
    def ceil_up(self) -> int | None: ...


def _error(kind: str, text: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError(kind, text, ctx or None)


def check_limits(plan: PlanLimits) -> None:
    """Raise PydanticCustomError (naming the fields) for limits that contradict."""
    if plan.time_of_use is not None and plan.validity is not None \
            and plan.time_of_use > plan.validity:
        raise _error("time_of_use_above_validity",
                     "time_of_use {use} is longer than validity {valid}: it could never be "
                     'used up; write e.g. time_of_use = "1h", validity = "1d"',
                     use=format_duration(plan.time_of_use), valid=format_duration(plan.validity))
    if plan.quota is not None:
        for direction in ("down", "up"):
            part = getattr(plan, f"quota_{direction}")
            if part is not None and part > plan.quota:
                raise _error("quota_part_above_total",
                             "quota_{d} {part} is above quota {total}: it could never be "
                             "reached; lower it or leave it out",
                             d=direction, part=format_size(part), total=format_size(plan.quota))
    has_quota = any(q is not None for q in (plan.quota, plan.quota_down, plan.quota_up))
    fair = {d: getattr(plan, f"fair_use_{d}") for d in ("down", "up")}
    if plan.after_quota == "slow":
        if not has_quota:
            raise _error("slow_without_quota",
                         'after_quota = "slow" but the plan has no quota; set quota (e.g. '
                         'quota = "1GB") or quota_down / quota_up')
        missing = [f"fair_use_{d}" for d, rate in fair.items() if rate is None]
        if missing:
            raise _error("slow_without_rates",
                         'after_quota = "slow" needs the fair-use rates; {missing} missing '
                         '(write e.g. fair_use_down = "256kbit", fair_use_up = "128kbit")',
                         missing=" and ".join(missing) + (" is" if len(missing) == 1 else " are"))
    else:
        given = [f"fair_use_{d}" for d, rate in fair.items() if rate is not None]
        if given:
            raise _error("rates_without_slow",
                         '{given} set but after_quota is "cut", so they would never apply; '
                         'write after_quota = "slow" or leave them out',
                         given=" and ".join(given))
    for direction, rate in fair.items():
        ceil = getattr(plan, f"ceil_{direction}")
        if rate is not None and ceil is not None and rate > ceil:
            raise _error("fair_use_above_ceil",
                         "fair_use_{d} {rate} is above ceil_{d} {ceil}: fair use is the slower "
                         "rate after the quota; lower it",
                         d=direction, rate=format_rate(rate), ceil=format_rate(ceil))
