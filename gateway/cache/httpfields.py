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
import time
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


# Repeated directives whose arguments are field lists: the lists are combined, and the
# unqualified form (the whole response) wins as the most restrictive (RFC 9111 §4.2.1).
_FIELD_LIST_DIRECTIVES = frozenset({"no-cache", "private"})
# Directives whose argument is delta-seconds (RFC 9111 §5.2, RFC 5861).
DELTA_DIRECTIVES = frozenset({"max-age", "s-maxage", "min-fresh", "max-stale",
                              "stale-while-revalidate", "stale-if-error"})
_DIGITS = re.compile(r"[0-9]+", re.ASCII)


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """Directives by lower-case name (RFC 9111 §5.2); value None when absent.

    - Names are case-insensitive; junk items (empty, not a token) are ignored, and so
      are unknown directives (kept in the dict, never consulted).
    - An argument may be a token or a quoted-string: recipients accept both forms
      (§5.2), so ``max-age="3600"`` is 3600; the quotes and escapes are removed.
    - Whitespace around "=" is tolerated (no other reading is possible).
    - A directive repeated with the same argument is one directive.  Repeated with
      a different argument, its value is invalid ("" -> delta-seconds 0: stale, the
      RFC's "considered stale" choice of §4.2.1), except ``no-cache``/``private``
      whose field lists are combined (unqualified wins: most restrictive).
    """
    out: dict[str, str | None] = {}
    for item in split_list(value or ""):
        name, sep, raw = item.partition("=")
        name = name.strip().lower()
        if not _TOKEN.match(name):
            continue
        arg: str | None = None
        if sep:
            raw = raw.strip()
            arg = re.sub(r"\\(.)", r"\1", raw[1:-1]) if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
        if name not in out:
            out[name] = arg
        elif out[name] != arg:
            old = out[name]
            if name in _FIELD_LIST_DIRECTIVES:
                out[name] = None if old is None or arg is None else f"{old}, {arg}"
            else:
                out[name] = ""
    return out


def delta_seconds(value: str | None) -> float | None:
    """delta-seconds (RFC 9111 §1.2.2); None if absent; 0 if invalid (invalid freshness
    means stale, §4.2.1): only ASCII digits, so "-1", "1.5", "1e3", "" are all 0.
    Values beyond 2**31 are 2**31."""
    if value is None:
        return None
    v = value.strip()
    if not _DIGITS.fullmatch(v):
        return 0.0
    return float(min(int(v), DELTA_MAX))


def parse_age(value: str | None) -> float:
    """The Age field (RFC 9111 §5.1) as seconds; 0 when absent or invalid.

    Age is a singleton delta-seconds; a recipient of a list (two Age lines, or
    "Age: 10, 20") or of a value with parameters ("Age: 10;q=1") takes the first
    member that is valid delta-seconds and ignores the rest; a member that is not
    (negative, fractional, words) is ignored, as an invalid Age is "not available"
    (§4.2.3: age_value 0)."""
    for member in (value or "").split(","):
        v = member.partition(";")[0].strip()
        if _DIGITS.fullmatch(v):
            return float(min(int(v), DELTA_MAX))
    return 0.0


# --------------------------------------------------------------------------- dates

# RFC 9110 §5.6.7: the three HTTP-date forms, case-sensitive, exactly one SP between
# parts, always GMT.  Anything else is not an HTTP-date.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "|".join(_MONTHS)
_DAY = "Mon|Tue|Wed|Thu|Fri|Sat|Sun"
_DAY_L = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
_IMF = re.compile(rf"(?:{_DAY}), ([0-9]{{2}}) ({_MONTH}) ([0-9]{{4}}) {_TIME} GMT")
_RFC850 = re.compile(rf"(?:{_DAY_L}), ([0-9]{{2}})-({_MONTH})-([0-9]{{2}}) {_TIME} GMT")
_ASCTIME = re.compile(rf"(?:{_DAY}) ({_MONTH}) ([0-9]{{2}}| [0-9]) {_TIME} ([0-9]{{4}})")


@functools.lru_cache(maxsize=4096)
def parse_http_date(value: str | None) -> float | None:
    """An HTTP-date (RFC 9110 §5.6.7) -> POSIX seconds; None if absent or invalid.

    All three forms are accepted, as recipients must: IMF-fixdate
    ("Sun, 06 Nov 1994 08:49:37 GMT"), the obsolete RFC 850 form
    ("Sunday, 06-Nov-94 08:49:37 GMT") and asctime ("Sun Nov  6 08:49:37 1994").
    Nothing else: another zone ("UTC", "+0000"), a 2-digit year outside RFC 850,
    lower-case names, missing commas, extra or missing spaces, two dates joined
    by ", " (a repeated field), impossible dates (31 Feb, 25:00).  The weekday
    is not checked against the date.  What an invalid date means is the caller's:
    Expires -> already expired (RFC 9111 §5.3); Date, Last-Modified,
    If-Modified-Since, If-Range -> as if absent (RFC 9110 §6.6.1, §13.1.3).

    Memoized: every cache hit parses the stored Date (and Expires, Last-Modified)
    again, and the same few strings come back over and over."""
    if not value:
        return None
    text = value.strip(" \t")
    if m := _IMF.fullmatch(text):
        day, month, year, hh, mm, ss = m.groups()
    elif m := _ASCTIME.fullmatch(text):
        month, day, hh, mm, ss, year = m.groups()
    elif m := _RFC850.fullmatch(text):
        day, month, yy, hh, mm, ss = m.groups()
        # A 2-digit year more than 50 years ahead is the last such year in the past.
        this_year = time.gmtime().tm_year
        century_year = this_year - this_year % 100 + int(yy)
        year = str(century_year - 100 if century_year > this_year + 50 else century_year)
    else:
        return None
    y, mon, d, h, mi, s = int(year), _MONTHS.index(month) + 1, int(day), int(hh), int(mm), int(ss)
    if y < 1 or not 1 <= d <= calendar.monthrange(y, mon)[1] or h > 23 or mi > 59 or s > 60:
        return None
    return float(calendar.timegm((y, mon, d, h, mi, s, 0, 1, 0)))


def format_http_date(ts: float) -> str:
    """IMF-fixdate, the form senders must generate."""
    return email.utils.formatdate(ts, usegmt=True)


def field_names(value: str | None) -> set[str]:
    return {n.strip().lower() for n in (value or "").split(",") if n.strip()}


# --------------------------------------------------------------------------- targeted fields

class _SFError(ValueError):
    pass


_SF_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*", re.ASCII)
_SF_NUMBER = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,3})?", re.ASCII)
_SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+.^_`|~0-9A-Za-z:/-]*", re.ASCII)
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"', re.ASCII)
_SF_BYTES = re.compile(r":[A-Za-z0-9+/=]*:", re.ASCII)
_SF_BOOL = re.compile(r"\?[01]", re.ASCII)
SFValue = int | float | str | bool | bytes | list[object]


def _sf_bare_item(text: str, pos: int) -> tuple[SFValue, int]:
    if m := _SF_NUMBER.match(text, pos):
        number = m.group()
        if "." in number:
            if len(number.lstrip("-").partition(".")[0]) > 12:
                raise _SFError("decimal too long")
            return float(number), m.end()
        return int(number), m.end()
    if m := _SF_STRING.match(text, pos):
        return re.sub(r"\\(.)", r"\1", m.group(1)), m.end()
    if m := _SF_TOKEN.match(text, pos):
        return _SFToken(m.group()), m.end()
    if m := _SF_BYTES.match(text, pos):
        return m.group()[1:-1].encode(), m.end()  # kept as base64 text: never consulted
    if m := _SF_BOOL.match(text, pos):
        return m.group() == "?1", m.end()
    raise _SFError(f"no item at {pos}")


class _SFToken(str):
    """An sf-token (not an sf-string)."""


def _sf_params(text: str, pos: int) -> int:
    """Skip parameters (RFC 8941 §3.1.2): targeted fields ignore them (RFC 9213 §2.1)."""
    while pos < len(text) and text[pos] == ";":
        pos += 1
        while pos < len(text) and text[pos] == " ":
            pos += 1
        m = _SF_KEY.match(text, pos)
        if m is None:
            raise _SFError("bad parameter key")
        pos = m.end()
        if pos < len(text) and text[pos] == "=":
            _, pos = _sf_bare_item(text, pos + 1)
    return pos


def _sf_member(text: str, pos: int) -> tuple[SFValue, int]:
    if text[pos] != "(":
        value, pos = _sf_bare_item(text, pos)
        return value, _sf_params(text, pos)
    items: list[object] = []  # an inner list
    pos += 1
    while True:
        while pos < len(text) and text[pos] == " ":
            pos += 1
        if pos >= len(text):
            raise _SFError("unterminated inner list")
        if text[pos] == ")":
            return items, _sf_params(text, pos + 1)
        item, pos = _sf_bare_item(text, pos)
        items.append(item)
        pos = _sf_params(text, pos)
        if pos < len(text) and text[pos] not in " )":
            raise _SFError("bad inner list")


def parse_sf_dictionary(value: str) -> dict[str, SFValue]:
    """A Structured Field Dictionary (RFC 8941 §4.2.2); parameters are dropped.
    Raises ValueError when it does not parse (the whole field is then invalid)."""
    text = value.strip(" ")
    out: dict[str, SFValue] = {}
    pos = 0
    while pos < len(text):
        m = _SF_KEY.match(text, pos)
        if m is None:
            raise _SFError(f"bad key at {pos}")
        key, pos = m.group(), m.end()
        if pos < len(text) and text[pos] == "=":
            if pos + 1 >= len(text):
                raise _SFError("missing value")
            out[key], pos = _sf_member(text, pos + 1)
        else:
            out[key] = True
            pos = _sf_params(text, pos)
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos == len(text):
            break
        if text[pos] != ",":
            raise _SFError(f"expected ',' at {pos}")
        pos += 1
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos == len(text):
            raise _SFError("trailing comma")
    return out


@functools.lru_cache(maxsize=1024)
def _targeted(value: str) -> tuple[tuple[str, str | None], ...] | None:
    try:
        parsed = parse_sf_dictionary(value)
    except ValueError:
        return None
    if not parsed:
        return None
    out: list[tuple[str, str | None]] = []
    for name, v in parsed.items():
        if v is False:
            continue  # ?0: the directive is not there
        if name in DELTA_DIRECTIVES:
            # Integers only: a decimal, negative or quoted max-age is not consumed
            # (RFC 9213 §2.1 "SHOULD NOT consume values that violate these constraints").
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                continue
            out.append((name, str(min(v, DELTA_MAX))))
        elif v is True:
            out.append((name, None))
        elif isinstance(v, str) and name in _FIELD_LIST_DIRECTIVES:
            out.append((name, v))  # no-cache="set-cookie": an sf-string of field names
        elif name not in _FIELD_LIST_DIRECTIVES:
            out.append((name, str(v)))
        # no-cache / private with another type: ignored, as not understood
    return tuple(out)


def parse_targeted_cache_control(value: str | None) -> dict[str, str | None] | None:
    """A targeted cache-control field such as CDN-Cache-Control (RFC 9213 §2.1) in the
    form ``parse_cache_control`` gives; None when it is absent, empty or does not
    parse as a Dictionary (the cache then falls back to Cache-Control, §2.2)."""
    if value is None:
        return None
    directives = _targeted(value)
    return None if directives is None else dict(directives)
