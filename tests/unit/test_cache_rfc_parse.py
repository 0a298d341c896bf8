"""Step 7: strict field parsing and what may be stored (RFC 9110 §5.6.7, RFC 9111 §3,
§4.2.1, §5.1-§5.3, RFC 9213), as tables of cases against the pure functions, then
through the proxy with a scripted origin (tests/unit/cachesite.py)."""

from __future__ import annotations

import asyncio
import calendar
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web

from gateway.cache.httpfields import parse_age, parse_sf_dictionary, parse_targeted_cache_control
from gateway.cache.rules import (
    DELTA_MAX,
    Kind,
    StoredMeta,
    decide,
    format_http_date,
    freshen_with_304,
    freshness_lifetime,
    is_storable,
    parse_cache_control,
    parse_http_date,
    storable_headers,
    update_from_head,
)
from gateway.cache.store import CacheStore, Entry
from tests.unit.cachesite import Answer, CacheSite, cache_site

NOV_1994 = 784111777.0  # Sun, 06 Nov 1994 08:49:37 GMT (the RFC's example)
T0 = 1_700_000_000.0
DATE = format_http_date(T0)


# -- HTTP-date (RFC 9110 §5.6.7) ------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("Sun, 06 Nov 1994 08:49:37 GMT", NOV_1994),
    ("Sunday, 06-Nov-94 08:49:37 GMT", NOV_1994),  # obsolete RFC 850: recipients accept it
    ("Sun Nov  6 08:49:37 1994", NOV_1994),  # asctime
    ("Sun Nov 16 08:49:37 1994", NOV_1994 + 10 * 86400),
    ("  Sun, 06 Nov 1994 08:49:37 GMT\t", NOV_1994),  # surrounding OWS is not the value
    ("Mon, 06 Nov 1994 08:49:37 GMT", NOV_1994),  # the weekday is not checked
    ("Sat, 31 Dec 2016 23:59:60 GMT", calendar.timegm((2017, 1, 1, 0, 0, 0))),  # leap second
], ids=["imf-fixdate", "rfc850", "asctime", "asctime-2-digit-day", "ows", "wrong-weekday",
        "leap-second"])
def test_valid_http_dates(value: str, expected: float) -> None:
    assert parse_http_date(value) == expected


@pytest.mark.parametrize("value", [
    "Sun, 06 Nov 1994 08:49:37 UTC",
    "Sun, 06 Nov 1994 08:49:37 +0000",
    "Sun, 06 Nov 1994 08:49:37",
    "Sun, 06 Nov 94 08:49:37 GMT",
    "Sun 06 Nov 1994 08:49:37 GMT",
    "Sun, 06-Nov-1994 08:49:37 GMT",
    "Sun,  06 Nov 1994 08:49:37 GMT",
    "Sun, 06 Nov 1994  08:49:37 GMT",
    "Sun,06 Nov 1994 08:49:37 GMT",
    "sun, 06 nov 1994 08:49:37 gmt",
    "SUN, 06 NOV 1994 08:49:37 GMT",
    "Sun, 6 Nov 1994 08:49:37 GMT",
    "Sun, 06 Nov 1994 8:49:37 GMT",
    "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT",
    "Sun, 30 Feb 1994 08:49:37 GMT",
    "Sun, 06 Nov 1994 24:00:00 GMT",
    "Sun, 06 Nov 1994 08:60:00 GMT",
    "Sun, 06 November 1994 08:49:37 GMT",
    "Sunday, 06-Nov-94 08:49:37 UTC",
    "Sun, 06-Nov-94 08:49:37 GMT",
    "Sun Nov 6 08:49:37 1994",
    "Sun, \u0966\u0966 Nov 1994 08:49:37 GMT",
    "1994-11-06T08:49:37Z",
    "784111777",
    "0",
    "-1",
    "",
], ids=["zone-utc", "zone-offset", "no-zone", "2-digit-year", "no-comma", "dashes",
        "extra-space", "extra-space-2", "missing-space", "lower-case", "upper-case",
        "1-digit-day", "1-digit-hour", "two-values", "feb-30", "hour-24", "minute-60",
        "long-month", "rfc850-utc", "rfc850-short-day", "asctime-1-space", "unicode-digits",
        "iso-8601", "epoch", "zero", "minus-one", "empty"])
def test_invalid_http_dates(value: str) -> None:
    assert parse_http_date(value) is None


def test_rfc850_two_digit_year_is_never_more_than_50_years_ahead() -> None:
    year = time.gmtime().tm_year
    ahead = (year + 10) % 100  # 10 years ahead: this century
    behind = (year + 60) % 100  # "60 years ahead" means 40 years ago
    a = parse_http_date(f"Monday, 01-Jan-{ahead:02d} 00:00:00 GMT")
    b = parse_http_date(f"Monday, 01-Jan-{behind:02d} 00:00:00 GMT")
    assert a is not None and time.gmtime(a).tm_year == year + 10
    assert b is not None and time.gmtime(b).tm_year == year - 40


# -- Expires (RFC 9111 §5.3): invalid means already expired -----------------------------------

@pytest.mark.parametrize("headers, lifetime", [
    ({"expires": format_http_date(T0 + 3600)}, 3600.0),
    ({"expires": "Tuesday, 14-Nov-23 23:13:20 GMT"}, 3600.0),  # RFC 850 is valid
    ({"expires": "Tue Nov 14 23:13:20 2023"}, 3600.0),  # asctime is valid
    ({"expires": format_http_date(T0 + 3600).replace("GMT", "UTC")}, 0.0),
    ({"expires": format_http_date(T0 + 3600).replace("GMT", "+0000")}, 0.0),
    ({"expires": "Tue, 14 Nov 23 23:13:20 GMT"}, 0.0),
    ({"expires": "Tue 14 Nov 2023 23:13:20 GMT"}, 0.0),
    ({"expires": "Tue, 14-Nov-2023 23:13:20 GMT"}, 0.0),
    ({"expires": "Tue,  14 Nov 2023 23:13:20 GMT"}, 0.0),
    ({"expires": f"{format_http_date(T0 + 3600)}, {format_http_date(T0 + 3600)}"}, 0.0),
    ({"expires": "0"}, 0.0),
    ({"expires": ""}, 0.0),
    ({"expires": format_http_date(T0 - 60)}, 0.0),  # in the past
    ({"expires": "0", "cache-control": "max-age=60"}, 60.0),  # max-age wins over any Expires
], ids=["imf", "rfc850", "asctime", "utc", "offset", "2-digit-year", "no-comma", "dashes",
        "extra-space", "two-lines", "zero", "empty", "past", "max-age-wins"])
def test_expires(headers: dict[str, str], lifetime: float) -> None:
    assert calendar.timegm((2023, 11, 14, 23, 13, 20)) == T0 + 3600
    assert freshness_lifetime({"date": DATE, **headers}) == lifetime


def stored(headers: dict[str, str], *, status: int = 200, at: float = T0) -> StoredMeta:
    return StoredMeta(status, {"date": format_http_date(at), **headers}, at, at)


@pytest.mark.parametrize("expires", ["Tue, 14 Nov 2023 23:13:20 UTC", "Tue, 14 Nov 23 23:13:20 GMT",
                                     "0", "Tue, 14-Nov-2023 23:13:20 GMT"],
                         ids=["utc", "2-digit-year", "zero", "dashes"])
def test_an_invalid_expires_is_never_served_fresh(expires: str) -> None:
    assert decide("GET", {}, stored({"expires": expires}), T0 + 1, offline_for=0).kind is Kind.REVALIDATE


# -- Age (RFC 9111 §5.1, §1.2.2) ------------------------------------------------------------

@pytest.mark.parametrize("value, seconds", [
    ("60", 60.0),
    (" 60 ", 60.0),
    ("60, 30", 60.0),  # a list (two Age lines): the first
    ("abc, 30", 30.0),  # the first *valid* member
    ("60;foo=bar", 60.0),  # parameters are not part of the value
    ("-60", 0.0),
    ("6.5", 0.0),
    ("1e3", 0.0),
    ("", 0.0),
    (None, 0.0),
    ("\u0660", 0.0),  # a non-ASCII digit is not a digit here
    ("99999999999999999999", float(DELTA_MAX)),
], ids=["plain", "ows", "list", "first-valid", "parameter", "negative", "fraction", "exponent",
        "empty", "absent", "unicode-digit", "huge"])
def test_age(value: str | None, seconds: float) -> None:
    assert parse_age(value) == seconds


@pytest.mark.parametrize("age, fresh", [("7200", False), ("7200, 0", False), ("0, 7200", True),
                                        ("abc", True), ("7200;x=1", False)],
                         ids=["old", "list-first-old", "list-first-new", "invalid", "parameter"])
def test_age_decides_freshness(age: str, fresh: bool) -> None:
    meta = stored({"cache-control": "max-age=3600", "age": age})
    kind = decide("GET", {}, meta, T0 + 1, offline_for=0).kind
    assert (kind is Kind.FRESH) == fresh


# -- Cache-Control (RFC 9111 §5.2, §4.2.1) ---------------------------------------------------

@pytest.mark.parametrize("value, lifetime", [
    ("max-age=3600", 3600.0),
    ('max-age="3600"', 3600.0),  # recipients accept the quoted form too (§5.2)
    ("MAX-AGE=3600", 3600.0),  # names are case-insensitive
    ("Max-Age=3600, public", 3600.0),
    ("max-age = 3600", 3600.0),  # whitespace around "=" tolerated
    (" , ,max-age=3600 ,", 3600.0),  # empty list members are ignored
    ("max-age=3600, max-age=3600", 3600.0),  # the same directive twice is one
    ("max-age=3600, max-age=0", 0.0),  # conflicting duplicates: invalid, so stale
    ("max-age=0, max-age=3600", 0.0),
    ("max-age=3600, MAX-AGE=60", 0.0),
    ("max-age=abc", 0.0),
    ("max-age=-1", 0.0),
    ("max-age=1.5", 0.0),
    ("max-age=", 0.0),
    ("max-age", 0.0),
    ("max-age=3600abc", 0.0),
    ('max-age="36 00"', 0.0),
    ("max-age=99999999999999999999", float(DELTA_MAX)),
    ('foo="max-age=0, x", max-age=3600', 3600.0),  # unknown directive, quoted comma
    ("foo=bar, max-age=3600, baz", 3600.0),  # unknown directives with arguments ignored
    ("s-maxage=10, max-age=3600", 10.0),  # shared cache: s-maxage first
    ("max-age=3600, s-maxage=10", 10.0),
    ("s-maxage=abc, max-age=3600", 0.0),  # an invalid s-maxage is not skipped
], ids=["plain", "quoted", "upper", "mixed-case", "ws-around-eq", "empty-members", "same-twice",
        "conflict", "conflict-reversed", "conflict-case", "word", "negative", "fraction", "empty",
        "no-value", "trailing-junk", "quoted-space", "huge", "unknown-quoted-comma",
        "unknown-with-args", "s-maxage-first", "s-maxage-second", "s-maxage-invalid"])
def test_cache_control_lifetime(value: str, lifetime: float) -> None:
    assert freshness_lifetime({"cache-control": value, "date": DATE}) == lifetime


@pytest.mark.parametrize("value, expected", [
    ('no-cache="set-cookie", no-cache="x-a"', {"no-cache": "set-cookie, x-a"}),
    ('no-cache="set-cookie", no-cache', {"no-cache": None}),  # unqualified: most restrictive
    ('private="x-a", private', {"private": None}),
    ("public, public", {"public": None}),
    ('x="a\\"b"', {"x": 'a"b'}),
], ids=["no-cache-lists-joined", "no-cache-unqualified-wins", "private-unqualified-wins",
        "flag-twice", "escape"])
def test_cache_control_duplicates(value: str, expected: dict[str, str | None]) -> None:
    assert parse_cache_control(value) == expected


@pytest.mark.parametrize("cc, kind", [
    ("max-age=3600", Kind.FRESH),
    ("max-age=3600, max-age=60", Kind.REVALIDATE),
    ('max-age="3600"', Kind.FRESH),
    ("no-cache, max-age=3600", Kind.REVALIDATE),
    ('no-cache="x-secret", max-age=3600', Kind.FRESH),  # only the named field is withheld
    ("NO-CACHE, max-age=3600", Kind.REVALIDATE),
    ("must-revalidate, max-age=abc", Kind.REVALIDATE),
], ids=["fresh", "conflict", "quoted", "no-cache", "no-cache-fields", "no-cache-upper",
        "invalid-max-age"])
def test_cache_control_decides(cc: str, kind: Kind) -> None:
    assert decide("GET", {}, stored({"cache-control": cc}), T0 + 1, offline_for=0).kind is kind


def test_qualified_no_cache_fields_are_not_stored() -> None:
    headers = {"cache-control": 'no-cache="X-Secret", max-age=60', "x-secret": "s", "x-ok": "o"}
    assert storable_headers(headers) == {"cache-control": headers["cache-control"], "x-ok": "o"}


# -- what may be stored (RFC 9111 §3, §5.2.2.3) -----------------------------------------------

GOOD = StoredMeta(200, {"cache-control": "max-age=0"}, T0, T0)
ERROR = StoredMeta(503, {"cache-control": "max-age=60"}, T0, T0)


@pytest.mark.parametrize("status, resp, replacing, ok", [
    (299, {"cache-control": "max-age=60"}, None, True),
    (400, {"cache-control": "max-age=60"}, None, True),
    (499, {"cache-control": "max-age=60"}, None, True),
    (599, {"cache-control": "max-age=60"}, None, True),
    (500, {"expires": format_http_date(T0 + 60), "date": DATE}, None, True),
    (302, {"cache-control": "s-maxage=60"}, None, True),
    (599, {"cache-control": "public"}, None, True),  # public alone makes it storable (§3)
    (299, {}, None, False),  # no explicit freshness, not heuristically cacheable
    (400, {}, None, False),
    (599, {"last-modified": format_http_date(T0 - 86400)}, None, False),
    (299, {"cache-control": "no-store, max-age=60"}, None, False),
    (299, {"cache-control": "must-understand, max-age=60"}, None, False),  # not understood
    (200, {"cache-control": "must-understand, no-store, max-age=60"}, None, True),
    (404, {"cache-control": "must-understand, no-store"}, None, True),  # heuristic, understood
    (206, {"cache-control": "max-age=60"}, None, False),
    (304, {"cache-control": "max-age=60"}, None, False),
    (103, {"cache-control": "max-age=60"}, None, False),
    (503, {"cache-control": "max-age=60"}, GOOD, False),  # never replaces a good copy
    (599, {"cache-control": "max-age=60"}, GOOD, False),
    (501, {}, GOOD, False),  # heuristically cacheable, still an error
    (503, {"cache-control": "max-age=60"}, ERROR, True),  # an error may replace an error
    (404, {"cache-control": "max-age=60"}, GOOD, True),  # the origin's word, not a failure
], ids=["299", "400", "499", "599", "500-expires", "302-s-maxage", "599-public",
        "299-no-freshness", "400-no-freshness", "599-heuristic", "no-store", "must-understand-299",
        "must-understand-200", "must-understand-404", "206", "304", "1xx", "503-over-good",
        "599-over-good", "501-over-good", "503-over-503", "404-over-good"])
def test_storable_statuses(status: int, resp: dict[str, str], replacing: StoredMeta | None,
                           ok: bool) -> None:
    assert is_storable("GET", status, {}, resp, replacing=replacing) is ok


@pytest.mark.parametrize("status, cc, lifetime", [
    (200, None, 8640.0),
    (302, "public", 8640.0),  # public allows heuristics (§4.2.2)
    (451, "public", 8640.0),
    (302, None, None),  # neither heuristically cacheable nor public
    (599, "public", None),  # a server failure is never guessed fresh
    (503, "public", None),
    (501, None, 8640.0),  # heuristically cacheable by definition
    (200, "no-cache", None),
], ids=["200", "302-public", "451-public", "302", "599-public", "503-public", "501", "no-cache"])
def test_heuristic_freshness(status: int, cc: str | None, lifetime: float | None) -> None:
    headers = {"date": DATE, "last-modified": format_http_date(T0 - 86400)}
    if cc is not None:
        headers["cache-control"] = cc
    assert freshness_lifetime(headers, status=status) == lifetime


# -- CDN-Cache-Control (RFC 9213) -----------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("max-age=60", {"max-age": 60}),
    ("max-age=60, must-revalidate", {"max-age": 60, "must-revalidate": True}),
    ("max-age=60;x=1, a=?0, b=\"s\", c=tok, d=1.5, e=:AQ==:, f=(1 2)",
     {"max-age": 60, "a": False, "b": "s", "c": "tok", "d": 1.5, "e": b"AQ==", "f": [1, 2]}),
    ("max-age=60,max-age=10", {"max-age": 10}),  # a Dictionary keeps the last
], ids=["integer", "boolean", "types", "duplicate"])
def test_sf_dictionary(value: str, expected: dict[str, object]) -> None:
    assert parse_sf_dictionary(value) == expected


@pytest.mark.parametrize("value", ["MAX-AGE=60", "max-age=60,", "max-age=60 public", ",max-age=60",
                                   "max-age=", 'max-age="60', "max-age=(1", "max-age=60,,public"],
                         ids=["upper-case-key", "trailing-comma", "no-comma", "leading-comma",
                              "empty-value", "open-string", "open-list", "empty-member"])
def test_targeted_field_that_does_not_parse_is_ignored(value: str) -> None:
    assert parse_targeted_cache_control(value) is None


@pytest.mark.parametrize("headers, lifetime", [
    ({"cdn-cache-control": "max-age=60", "cache-control": "max-age=3600"}, 60.0),
    ({"cdn-cache-control": "max-age=60", "cache-control": "no-store"}, 60.0),
    ({"cdn-cache-control": "MAX-AGE=60", "cache-control": "max-age=3600"}, 3600.0),  # fallback
    ({"cdn-cache-control": "", "cache-control": "max-age=3600"}, 3600.0),  # empty: fallback
    ({"cdn-cache-control": "max-age=60,", "cache-control": "max-age=3600"}, 3600.0),
    ({"cdn-cache-control": "none", "cache-control": "max-age=3600",
      "expires": format_http_date(T0 + 3600)}, None),  # valid: Cache-Control and Expires ignored
    ({"cdn-cache-control": "max-age=1.5", "cache-control": "max-age=3600"}, None),  # not consumed
    ({"cdn-cache-control": 'max-age="60"', "cache-control": "max-age=3600"}, None),
    ({"cdn-cache-control": "max-age=-1", "cache-control": "max-age=3600"}, None),
    ({"cdn-cache-control": "max-age=60;a=1"}, 60.0),
    ({"cdn-cache-control": "s-maxage=5, max-age=60"}, 5.0),
], ids=["beats-cache-control", "beats-no-store", "invalid-key-fallback", "empty-fallback",
        "trailing-comma-fallback", "none-ignores-others", "decimal", "string", "negative",
        "parameters", "s-maxage"])
def test_cdn_cache_control_freshness(headers: dict[str, str], lifetime: float | None) -> None:
    assert freshness_lifetime({"date": DATE, **headers}) == lifetime


@pytest.mark.parametrize("headers, ok", [
    ({"cdn-cache-control": "max-age=60", "cache-control": "no-store"}, True),
    ({"cdn-cache-control": "no-store", "cache-control": "max-age=60"}, False),
    ({"cdn-cache-control": "private", "cache-control": "public, max-age=60"}, False),
    ({"cdn-cache-control": "Max-Age=60", "cache-control": "no-store"}, False),  # fallback
    ({"cdn-cache-control": "none", "expires": format_http_date(T0 + 60)}, False),
], ids=["stores-over-no-store", "no-store-wins", "private", "fallback-no-store", "expires-ignored"])
def test_cdn_cache_control_storable(headers: dict[str, str], ok: bool) -> None:
    assert is_storable("GET", 299, {}, {"date": DATE, **headers}) is ok


def test_cdn_cache_control_must_revalidate_is_honoured() -> None:
    meta = stored({"cdn-cache-control": "max-age=1, must-revalidate", "cache-control": "max-age=3600"})
    decision = decide("GET", {}, meta, T0 + 10, offline_for=3600)
    assert decision.kind is Kind.REVALIDATE and not decision.stale_on_error


# -- through the proxy, with a real origin ---------------------------------------------------

async def get(site: CacheSite, path: str, **kw: Any) -> tuple[ClientResponse, bytes]:
    return await site.settled("GET", path, **kw)


OLD_DATE = "Tue, 14 Nov 2023 22:13:20 GMT"


@pytest.mark.parametrize("headers, origin_requests", [
    ({"Cache-Control": "max-age=3600"}, 1),
    ({"Expires": "Thu, 01 Jan 2099 00:00:00 GMT"}, 1),
    ({"Expires": "Thu, 01 Jan 2099 00:00:00 UTC"}, 2),  # invalid Expires: already expired
    ({"Expires": "Thu, 01 Jan 99 00:00:00 GMT"}, 2),
    ({"Expires": "Thu, 01-Jan-2099 00:00:00 GMT"}, 2),
    ([("Expires", "Thu, 01 Jan 2099 00:00:00 GMT"), ("Expires", "Thu, 01 Jan 2099 00:00:00 GMT")], 2),
    ({"Cache-Control": "max-age=3600, max-age=0"}, 2),  # conflicting duplicates: stale
    ({"Cache-Control": 'max-age="3600"'}, 1),
    ({"Cache-Control": "max-age=3600", "Age": "7200, 0"}, 2),  # the first Age: too old
    ({"Cache-Control": "max-age=3600", "Age": "7200;x=1"}, 2),
    ({"CDN-Cache-Control": "max-age=3600", "Cache-Control": "no-store"}, 1),
    ({"CDN-Cache-Control": "no-store", "Cache-Control": "max-age=3600"}, 2),
    ({"CDN-Cache-Control": "Max-Age=3600", "Cache-Control": "no-store"}, 2),  # ignored: fallback
], ids=["max-age", "expires", "expires-utc", "expires-2-digit-year", "expires-dashes",
        "expires-two-lines", "max-age-conflict", "max-age-quoted", "age-list", "age-parameter",
        "cdn-beats-no-store", "cdn-no-store-wins", "cdn-invalid-fallback"])
async def test_second_request(tmp_path: Path, headers: dict[str, str] | list[tuple[str, str]],
                              origin_requests: int) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, headers, "page"))
        for _ in range(2):
            resp, body = await get(site, "/a")
            assert resp.status == 200 and body == b"page"
        assert len(site.origin.requests_for("/a")) == origin_requests


@pytest.mark.parametrize("status", [299, 400, 499, 599],
                         ids=lambda s: f"status-{s}")
async def test_explicitly_fresh_answers_of_any_status_are_stored(tmp_path: Path, status: int) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(status, {"Cache-Control": "max-age=3600"}, "answer"))
        for _ in range(2):
            resp, body = await get(site, "/a")
            assert (resp.status, body) == (status, b"answer")
        assert len(site.origin.requests_for("/a")) == 1
        assert "hit" in resp.headers["Cache-Status"]


@pytest.mark.parametrize("status", [299, 400, 599], ids=lambda s: f"status-{s}")
async def test_answers_without_freshness_are_not_stored(tmp_path: Path, status: int) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(status, {"Last-Modified": OLD_DATE}, "answer"))
        for _ in range(2):
            resp, _ = await get(site, "/a")
            assert resp.status == status
        assert len(site.origin.requests_for("/a")) == 2


async def test_an_error_answer_does_not_replace_a_good_copy(tmp_path: Path) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, {"Cache-Control": "max-age=0", "ETag": '"g"'}, "good"),
                           Answer(599, {"Cache-Control": "max-age=3600"}, "error"),
                           Answer(304, {"Cache-Control": "max-age=3600"}, ""))
        assert (await get(site, "/a"))[1] == b"good"
        resp, body = await get(site, "/a")
        assert (resp.status, body) == (599, b"error")  # passed on
        resp, body = await get(site, "/a")  # the good copy was kept: revalidated, not refetched
        assert (resp.status, body) == (200, b"good")
        assert site.origin.requests_for("/a")[2].headers.get("if-none-match") == '"g"'
        assert len(site.origin.requests_for("/a")) == 3


async def test_a_hit_keeps_the_stored_date(tmp_path: Path) -> None:
    async with cache_site(tmp_path) as site:
        date = format_http_date(time.time() - 10)  # not what aiohttp would add now
        site.origin.script("/a", Answer(200, {"Cache-Control": "max-age=3600", "Date": date,
                                              "Age": "5"}, "page"))
        first, _ = await get(site, "/a")
        hit, _ = await get(site, "/a")
        assert "hit" in hit.headers["Cache-Status"]
        assert first.headers["Date"] == hit.headers["Date"] == date
        assert len(hit.headers.getall("Date")) == 1


def stored_entry(site: CacheSite, path: str) -> Entry:
    upstream = site.services._config().local_services.services[0].upstream
    entries = site.services.store.lookup(f"GET {upstream.rstrip('/')}{path}")
    assert len(entries) == 1
    return entries[0]


async def test_a_hit_without_a_stored_date_gets_the_time_it_was_received(tmp_path: Path) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, {"Cache-Control": "max-age=3600"}, "page"))
        await get(site, "/a")
        entry = stored_entry(site, "/a")
        # aiohttp's origin always sends a Date: take it out of the stored copy instead
        headers = {k: v for k, v in entry.meta.headers.items() if k != "date"}
        site.services.store.update_meta(entry.id, replace(entry.meta, headers=headers,
                                                          response_time=T0 + 1))
        hit, _ = await get(site, "/a", headers={"Cache-Control": "max-stale"})
        assert "hit" in hit.headers["Cache-Status"]
        assert hit.headers.getall("Date") == [format_http_date(T0 + 1)]


# -- a HEAD answer updates the stored GET answer (RFC 9111 §4.3.5) ----------------------------

LM = format_http_date(T0 - 86400)
HELD = StoredMeta(200, {"date": DATE, "etag": '"v1"', "last-modified": LM, "content-length": "4",
                        "cache-control": "max-age=60", "content-type": "text/plain"}, T0, T0)


@pytest.mark.parametrize("head, updated", [
    ({"etag": '"v1"', "content-length": "4"}, True),
    ({"etag": '"v1"', "last-modified": LM}, True),
    ({"last-modified": LM}, True),
    ({}, True),  # contradicts nothing
    ({"content-length": "4"}, True),
    ({"etag": '"v2"'}, False),
    ({"etag": 'W/"v1"'}, False),  # not the same value
    ({"etag": '"v1"', "content-length": "5"}, False),
    ({"last-modified": format_http_date(T0)}, False),
    ({"content-length": "999"}, False),
], ids=["etag-and-length", "both-validators", "last-modified", "nothing", "length",
        "other-etag", "weak-etag", "other-length", "other-last-modified", "only-length-differs"])
def test_update_from_head(head: dict[str, str], updated: bool) -> None:
    head = {"date": format_http_date(T0 + 100), "cache-control": "max-age=3600", "x-new": "1",
            "content-type": "text/html", **head}
    meta = update_from_head(HELD, head, 4, T0 + 100, T0 + 100)
    if updated:
        assert not meta.stale and meta.headers["x-new"] == "1"
        assert meta.headers["cache-control"] == "max-age=3600" and meta.response_time == T0 + 100
        assert meta.headers["content-type"] == "text/plain"  # describes the stored body
        assert decide("GET", {}, meta, T0 + 200, offline_for=0).kind is Kind.FRESH
    else:
        assert meta.stale and meta.headers == HELD.headers and meta.response_time == T0
        decision = decide("GET", {}, meta, T0 + 1, offline_for=3600)  # fresh by its age alone
        assert decision.kind is Kind.REVALIDATE and decision.stale_on_error  # still kept offline


def test_a_stale_mark_survives_the_store_and_goes_with_a_304(tmp_path: Path) -> None:
    store = CacheStore(tmp_path, 10**6)
    with store.begin("GET http://o/a", HELD) as writer:
        writer.write(b"body")
        entry = writer.commit()
    assert entry is not None
    store.update_meta(entry.id, replace(HELD, stale=True))
    store.close()
    store = CacheStore(tmp_path, 10**6)
    [again] = store.lookup("GET http://o/a")
    assert again.meta.stale
    assert not freshen_with_304(again.meta, {"etag": '"v1"'}, T0, T0).stale
    store.close()


def by_method(get: Answer, head: Answer) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        return (head if request.method == "HEAD" else get).response()
    return handle


@pytest.mark.parametrize("head, body, updated", [
    ({"ETag": '"v1"', "Cache-Control": "max-age=3600", "X-New": "1"}, "v1!!", True),
    ({"Cache-Control": "max-age=3600", "X-New": "1"}, "v1!!", True),
    ({"ETag": '"v2"', "Cache-Control": "max-age=3600", "X-New": "1"}, "v1!!", False),
    ({"ETag": '"v1"', "Cache-Control": "max-age=3600", "X-New": "1"}, "longer", False),
], ids=["same-etag", "no-validator", "other-etag", "other-length"])
async def test_the_offline_probe_head_updates_the_stored_copy(
        tmp_path: Path, head: dict[str, str], body: str, updated: bool) -> None:
    async with cache_site(tmp_path, offline_for="1h") as site:
        site.origin.script("/a", by_method(
            Answer(200, {"ETag": '"v1"', "Cache-Control": "max-age=3600"}, "v1!!"),
            Answer(200, head, body)))
        await get(site, "/a")
        site.services.uplink_lost()
        resp, _ = await get(site, "/a")  # a hit; the service is offline: a HEAD probes it
        assert "hit" in resp.headers["Cache-Status"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while not (stored_entry(site, "/a").meta.stale or "x-new" in stored_entry(site, "/a").meta.headers):
            assert loop.time() < deadline, "the HEAD answer was not applied"
            await asyncio.sleep(0.005)
        assert [s.method for s in site.origin.requests_for("/a")] == ["GET", "HEAD"]
        resp, got = await get(site, "/a")
        if updated:  # served from the updated copy, with the HEAD's fields
            assert "hit" in resp.headers["Cache-Status"] and resp.headers["X-New"] == "1"
            assert got == b"v1!!" and len(site.origin.requests_for("/a")) == 2
        else:  # the stored copy is stale now: asked again
            assert [s.method for s in site.origin.requests_for("/a")] == ["GET", "HEAD", "GET"]
            assert site.origin.requests_for("/a")[2].headers["if-none-match"] == '"v1"'
