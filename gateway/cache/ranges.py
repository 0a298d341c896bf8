"""Byte ranges of stored partial responses (RFC 9110 §14, RFC 9111 §3.3, §3.4): pure functions.

Theory of operation
-------------------
A 206 answer holds one continuous range of a representation whose complete
length its ``Content-Range`` names (``bytes 100-199/5000``).  The store keeps
such answers as a *partial entry*: a body file as long as the representation,
written only at the offsets received, plus the sorted list of byte ranges it
holds (``Held``, inclusive pairs, merged).  This module answers, without I/O:

* what a ``Content-Range`` says (``parse_content_range``);
* which validator identifies the representation (``strong_validator``): a
  strong ETag, else a Last-Modified at least 60 s before Date (RFC 9110
  §8.8.2.2, the rule for a cache comparing with its own entry); None when the
  answer has neither, and then parts are never combined (§3.4: only parts that
  share a strong validator are one representation);
* how held ranges grow (``add_range``) and whether they cover a request
  (``covers``) or the whole representation (``is_complete``);
* whether a client's ``If-Range`` matches an answer's headers (``if_range_matches``,
  RFC 9110 §13.1.5: an entity tag must match a strong ETag strongly; a date must
  equal a strong Last-Modified).
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Held = tuple[tuple[int, int], ...]  # sorted, merged, inclusive (first, last) pairs


@dataclass(frozen=True)
class PartialState:
    """What a partial entry holds of its representation: ``length`` bytes in all."""

    length: int
    held: Held

LM_STRONG_SECONDS = 60.0  # RFC 9110 §8.8.2.2: a cache's Last-Modified must be this far before Date

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$", re.IGNORECASE)


def parse_content_range(value: str | None) -> tuple[int, int, int] | None:
    """``bytes first-last/complete`` -> (first, last, complete); None for anything else
    (absent, ``*`` as length, an unsatisfied-range form, last before first or past the end)."""
    match = _CONTENT_RANGE.match(value or "")
    if match is None:
        return None
    first, last, complete = (int(g) for g in match.groups())
    if last < first or last >= complete:
        return None
    return first, last, complete


def _http_date(value: str | None) -> float | None:
    parsed = email.utils.parsedate_tz(value.strip()) if value else None
    if parsed is None:
        return None
    try:
        return float(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


def strong_validator(headers: Mapping[str, str]) -> str | None:
    """A string naming the representation, equal for two answers only when both carry
    the same strong validator; None when there is none (weak ETag, no usable date)."""
    etag = headers.get("etag", "").strip()
    if etag:
        if etag.startswith("W/") or not (len(etag) >= 2 and etag[0] == etag[-1] == '"'):
            return None  # a weak (or malformed) tag: never a strong validator, and no fallback
        return f"etag {etag}"
    last_modified = _http_date(headers.get("last-modified"))
    date = _http_date(headers.get("date"))
    if last_modified is None or date is None or date - last_modified < LM_STRONG_SECONDS:
        return None
    return f"last-modified {int(last_modified)}"


def add_range(held: Iterable[tuple[int, int]], first: int, last: int) -> Held:
    """``held`` with [first, last] added; touching or overlapping ranges are merged."""
    out: list[tuple[int, int]] = []
    for a, b in sorted([*held, (first, last)]):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return tuple(out)


def covers(held: Held, first: int, last: int) -> bool:
    """Is every byte of [first, last] held?"""
    return any(a <= first and last <= b for a, b in held)


def held_bytes(held: Held) -> int:
    return sum(b - a + 1 for a, b in held)


def is_complete(held: Held, length: int) -> bool:
    return held == ((0, length - 1),)


def missing(held: Held, first: int, last: int) -> list[tuple[int, int]]:
    """The parts of [first, last] not held (what a writer must still put on disk)."""
    out: list[tuple[int, int]] = []
    at = first
    for a, b in held:
        if b < at or a > last:
            continue
        if a > at:
            out.append((at, a - 1))
        at = max(at, b + 1)
        if at > last:
            break
    if at <= last:
        out.append((at, last))
    return out


def if_range_matches(request_headers: Mapping[str, str], response_headers: Mapping[str, str]) -> bool:
    """True when the request has no If-Range, or its validator names the answer's
    representation strongly (then the Range applies; else the whole answer is due)."""
    value = request_headers.get("if-range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        etag = response_headers.get("etag", "").strip()
        return bool(etag) and not etag.startswith("W/") and etag == value
    when = _http_date(value)
    last_modified = _http_date(response_headers.get("last-modified"))
    date = _http_date(response_headers.get("date"))
    if when is None or last_modified is None or date is None:
        return False
    return when == last_modified and last_modified <= date - 1
