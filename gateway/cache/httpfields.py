"""HTTP field values a cache reads (RFC 9110, RFC 9111 §5): pure parsing, no I/O.

Header representation: lower-case field names, repeated fields joined with ", "
(``header_dict``).  Everything here is small, allocation-light and memoized where a
cache hit asks again for the same strings.
"""

from __future__ import annotations

import calendar
import email.utils
import functools
import re
from collections.abc import Iterable, Mapping

DELTA_MAX = 2**31  # RFC 9111 §1.2.2

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def header_dict(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lower-case keys, repeated fields joined with ", " (works for CIMultiDict too)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def split_list(value: str) -> list[str]:
    """Split a comma list, respecting quoted strings."""
    items: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append("".join(buf).strip())
            buf = []
            continue
        buf.append(ch)
    items.append("".join(buf).strip())
    return [i for i in items if i]


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """Directives by lower-case name; value None when absent, quotes removed.

    Junk (empty items, names that are not tokens) is ignored; when a directive
    repeats, the first occurrence wins (RFC 9111 §4.2.1).
    """
    out: dict[str, str | None] = {}
    for item in split_list(value or ""):
        name, sep, raw = item.partition("=")
        name = name.strip().lower()
        if not _TOKEN.match(name) or name in out:
            continue
        arg: str | None = None
        if sep:
            raw = raw.strip()
            arg = re.sub(r"\\(.)", r"\1", raw[1:-1]) if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
        out[name] = arg
    return out


def delta_seconds(value: str | None) -> float | None:
    """delta-seconds; None if absent; 0 if invalid (invalid freshness means stale)."""
    if value is None:
        return None
    v = value.strip()
    if not v.isdigit():
        return 0.0
    return float(min(int(v), DELTA_MAX))


@functools.lru_cache(maxsize=4096)
def parse_http_date(value: str | None) -> float | None:
    """IMF-fixdate, RFC 850 or asctime (always GMT) -> POSIX seconds; None if invalid.

    Memoized: every cache hit parses the stored Date (and Expires, Last-Modified)
    again, and the same few strings come back over and over."""
    parsed = email.utils.parsedate_tz(value.strip()) if value else None
    if parsed is None:
        return None
    try:
        return float(calendar.timegm((*parsed[:6], 0, 1, 0)) - (parsed[9] or 0))
    except (OverflowError, ValueError):
        return None


def format_http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def field_names(value: str | None) -> set[str]:
    return {n.strip().lower() for n in (value or "").split(",") if n.strip()}
