"""Dates as villagers and staff read them: local to the site, with WIB/WITA/WIT.

The site's time zone comes from ``site.timezone`` (default ``Asia/Jakarta``).
Machine-readable output keeps epoch seconds and adds ISO 8601 with the offset,
so a dashboard in another zone never has to guess.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TIMEZONE = "Asia/Jakarta"

_MONTHS = {
    "id": ("Jan", "Feb", "Mar", "Apr", "Mei", "Jun", "Jul", "Agu", "Sep", "Okt", "Nov", "Des"),
    "en": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
}


@lru_cache(maxsize=16)
def zone(name: str) -> ZoneInfo:
    """The named zone; raises ValueError naming it when the system does not know it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (e.g. Asia/Jakarta)") from exc


def is_known_zone(name: str) -> bool:
    try:
        zone(name)
    except ValueError:
        return False
    return True


def local(ts: float, tz: str = DEFAULT_TIMEZONE) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, zone(tz))


def zone_label(when: dt.datetime) -> str:
    """WIB / WITA / WIT for Indonesian zones; the zone's own abbreviation or UTC offset elsewhere."""
    name = when.tzname() or ""
    if name and name[0] not in "+-":
        return name
    offset = when.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def format_datetime(ts: float | None, tz: str = DEFAULT_TIMEZONE, lang: str = "id") -> str:
    """``2 Des 2026 14:05 WIB`` (a dash for no time)."""
    if not ts:
        return "-"
    when = local(ts, tz)
    month = _MONTHS.get(lang, _MONTHS["id"])[when.month - 1]
    return f"{when.day} {month} {when.year} {when:%H:%M} {zone_label(when)}"


def format_date(ts: float | None, tz: str = DEFAULT_TIMEZONE, lang: str = "id") -> str:
    """``2 Des 2026`` (a dash for no time)."""
    if not ts:
        return "-"
    when = local(ts, tz)
    month = _MONTHS.get(lang, _MONTHS["id"])[when.month - 1]
    return f"{when.day} {month} {when.year}"


def format_time(ts: float | None, tz: str = DEFAULT_TIMEZONE, seconds: bool = False) -> str:
    """``14:05 WIB`` (``14:05:09 WIB`` with seconds)."""
    if not ts:
        return "-"
    when = local(ts, tz)
    clock = f"{when:%H:%M:%S}" if seconds else f"{when:%H:%M}"
    return f"{clock} {zone_label(when)}"


def iso(ts: float | None, tz: str = DEFAULT_TIMEZONE) -> str | None:
    """ISO 8601 with the site's offset, whole seconds: ``2026-12-02T14:05:09+07:00``."""
    if ts is None:
        return None
    return local(ts, tz).replace(microsecond=0).isoformat()
