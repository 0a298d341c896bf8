"""Parsing of human-written durations ("4h", "30m") and rates ("10mbit").

Rates follow tc's spelling (bits per second with k/m/g prefixes, powers of
1000), because technicians who know tc already write them that way.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal


def json_quote(value: object) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)

# Digits are bounded so a number too long to be a value is refused here with its example,
# not by int()/float() deep inside (Python's digit limit, a float that overflows to inf).
_DURATION_RE = re.compile(r"^\s*(\d{1,18})\s*(s|m|h|d)?\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

_RATE_RE = re.compile(r"^(\d{1,18}(?:\.\d{1,9})?)(bit|kbit|mbit|gbit)$")
_RATE_UNITS = {"bit": 1, "kbit": 1_000, "mbit": 1_000_000, "gbit": 1_000_000_000}


def parse_duration(text: str | int) -> int:
    """Return seconds for "90s", "30m", "4h", "1d" or a bare number of seconds.

    Raises ValueError with an example of a valid value.
    """
    if isinstance(text, bool) or not isinstance(text, int | str):
        # bool is an int to Python; floats, lists and null are mistakes in JSON or TOML
        raise ValueError(f"{json_quote(text)} is not a duration; write e.g. \"30m\", \"4h\" or \"1d\"")
    if isinstance(text, int):
        seconds = text
    else:
        match = _DURATION_RE.match(text)
        if not match:
            raise ValueError(f"{json_quote(text)} is not a duration; write e.g. \"30m\", \"4h\" or \"1d\"")
        seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"{json_quote(text)} must be longer than zero; write e.g. \"30m\"")
    return seconds


def format_duration(seconds: int) -> str:
    """Shortest exact spelling: 14400 -> "4h", 90 -> "90s"."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_left(seconds: int) -> str:
    """Time left, rounded down, for tables: 14399 -> "3h59m", 90061 -> "1d1h", 75 -> "1m15s".

    Two units at most; the smaller one is dropped when it is zero ("4h").
    """
    seconds = max(0, int(seconds))
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for i, (unit, size) in enumerate(units[:-1]):
        if seconds >= size:
            big, rest = divmod(seconds, size)
            small_unit, small_size = units[i + 1]
            small = rest // small_size
            return f"{big}{unit}{small}{small_unit}" if small else f"{big}{unit}"
    return f"{seconds}s"


def parse_rate(text: str) -> int:
    """Return bits per second for "10mbit", "512kbit", "1.5mbit"."""
    if not isinstance(text, str):
        raise ValueError(f"{json_quote(text)} is not a rate; write e.g. \"10mbit\" or \"512kbit\"")
    match = _RATE_RE.match(text.strip().lower())
    if not match:
        raise ValueError(f"{json_quote(text)} is not a rate; write e.g. \"10mbit\" or \"512kbit\"")
    # Decimal: exact, so "9999999999999gbit" is reported as written, not as a rounded float
    bits = int(Decimal(match.group(1)) * _RATE_UNITS[match.group(2)])
    if bits <= 0:
        raise ValueError(f"{json_quote(text)} must be above zero; write e.g. \"512kbit\"")
    return bits


def human_rate(bits: float) -> str:
    """Rounded, for displays: 3880876 -> "3.88mbit"."""
    for unit, size in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits >= size:
            return f"{bits / size:.3g}{unit}"
    return f"{bits:.0f}bit"


def format_rate(bits: int) -> str:
    for unit, size in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits % size == 0 and bits >= size:
            return f"{bits // size}{unit}"
    return f"{bits}bit"


_SIZE_RE = re.compile(r"^(\d{1,18}(?:\.\d{1,9})?)(b|kb|mb|gb)$")
_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
_TIME_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_size(text: str) -> int:
    """Return bytes for "500mb", "2gb" (powers of 1024, as disks are reported)."""
    if not isinstance(text, str):
        raise ValueError(f"{json_quote(text)} is not a size; write e.g. \"500mb\" or \"2gb\"")
    match = _SIZE_RE.match(text.strip().lower())
    if not match:
        raise ValueError(f"{json_quote(text)} is not a size; write e.g. \"500mb\" or \"2gb\"")
    size = int(Decimal(match.group(1)) * _SIZE_UNITS[match.group(2)])
    if size <= 0:
        raise ValueError(f"{json_quote(text)} must be above zero; write e.g. \"500mb\"")
    return size


def format_size(size: int) -> str:
    """Shortest exact spelling: 2147483648 -> "2gb", 1536 -> "1536b"."""
    for unit, step in (("gb", 1024**3), ("mb", 1024**2), ("kb", 1024)):
        if size % step == 0 and size >= step:
            return f"{size // step}{unit}"
    return f"{size}b"


def parse_time_of_day(text: str) -> tuple[int, int]:
    """Return (hour, minute) for "02:30"."""
    match = _TIME_RE.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{json_quote(text)} is not a time of day; write e.g. \"02:30\"")
    return int(match.group(1)), int(match.group(2))
