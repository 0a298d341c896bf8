"""Table-driven tests of the HTTP caching rules (RFC 9111 + RFC 5861)."""

from __future__ import annotations

import aiohttp
import pytest
from multidict import CIMultiDict

from gateway.cache.proxy import UPSTREAM_CONNECTION_ERRORS
from gateway.cache.rules import (
    Decision,
    Kind,
    StoredMeta,
    age_header,
    conditional_request_headers,
    current_age,
    decide,
    format_http_date,
    freshen_applies,
    freshen_with_304,
    freshness_lifetime,
    header_dict,
    if_range_ok,
    invalidates,
    is_error_for_stale,
    is_storable,
    may_serve_stale,
    not_modified_for_request,
    parse_cache_control,
    parse_range,
    pick_variant,
    storable_headers,
    vary_key_headers,
    vary_matches,
)

T0 = 1_700_000_000.0  # response received (and Date) at T0
DAY = 86400.0


def http(ts: float) -> str:
    return format_http_date(ts)


def stored(cc: str | None = None, *, status: int = 200, extra: dict[str, str] | None = None,
           vary: dict[str, str | None] | None = None, request_time: float = T0) -> StoredMeta:
    headers = {"date": http(T0)}
    if cc is not None:
        headers["cache-control"] = cc
    headers.update(extra or {})
    return StoredMeta(status, headers, request_time, T0, vary or {})


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(("value", "expected"), [
    (None, {}),
    ("", {}),
    ("max-age=60", {"max-age": "60"}),
    ("Max-Age=60, PUBLIC", {"max-age": "60", "public": None}),
    ('private="set-cookie, x-a", no-cache', {"private": "set-cookie, x-a", "no-cache": None}),
    (' , ,max-age = 5 ,,', {"max-age": "5"}),
    # Step 7: conflicting values make the directive invalid (stale), RFC 9111 §4.2.1
    ("max-age=5, max-age=10", {"max-age": ""}),
    ('a b, =x, ok, "q"', {"ok": None}),  # junk ignored
    ('ext="a \\"quoted\\" , comma"', {"ext": 'a "quoted" , comma'}),
])
def test_parse_cache_control(value: str | None, expected: dict[str, str | None]) -> None:
    assert parse_cache_control(value) == expected


def test_header_dict_from_multidict_and_pairs() -> None:
    md = CIMultiDict([("Vary", "Accept-Language"), ("VARY", "Accept-Encoding"), ("ETag", '"x"')])
    assert header_dict(md) == {"vary": "Accept-Language, Accept-Encoding", "etag": '"x"'}
    assert header_dict([("A", "1"), ("a", "2")]) == {"a": "1, 2"}


# ------------------------------------------------------------------ storability

AUTH = {"authorization": "Bearer x"}


@pytest.mark.parametrize(("method", "status", "req", "resp", "expected"), [
    ("GET", 200, {}, {}, True),  # heuristically cacheable status: kept for validation / offline
    ("GET", 200, {}, {"cache-control": "max-age=60"}, True),
    ("HEAD", 200, {}, {"cache-control": "max-age=60"}, False),  # HEAD never stored
    ("POST", 200, {}, {"cache-control": "max-age=60"}, False),
    ("GET", 206, {}, {"cache-control": "max-age=60"}, False),  # partials not stored
    ("GET", 304, {}, {"cache-control": "max-age=60"}, False),
    ("GET", 200, {}, {"cache-control": "no-store"}, False),
    ("GET", 200, {"cache-control": "no-store"}, {"cache-control": "max-age=60"}, False),
    ("GET", 200, {}, {"cache-control": "private, max-age=60"}, False),
    ("GET", 200, {}, {"cache-control": 'private="x-user", max-age=60'}, True),
    ("GET", 200, AUTH, {"cache-control": "max-age=60"}, False),
    ("GET", 200, AUTH, {"cache-control": "public, max-age=60"}, True),
    ("GET", 200, AUTH, {"cache-control": "s-maxage=60"}, True),
    ("GET", 200, AUTH, {"cache-control": "must-revalidate, max-age=60"}, True),
    ("GET", 200, {}, {"cache-control": "max-age=60", "vary": "*"}, False),
    ("GET", 200, {}, {"cache-control": "max-age=60", "set-cookie": "sid=1"}, False),
    ("GET", 200, {}, {"cache-control": "public, max-age=60", "set-cookie": "sid=1"}, True),
    ("GET", 200, {"cookie": "sid=1"}, {"cache-control": "max-age=60"}, False),
    ("GET", 200, {"cookie": "sid=1"}, {"last-modified": "Mon, 01 Jan 2024 00:00:00 GMT"}, False),
    ("GET", 200, {"cookie": "sid=1"}, {"cache-control": "public, max-age=60"}, True),
    ("GET", 200, {"cookie": "sid=1"}, {"cache-control": "s-maxage=60"}, True),
    ("GET", 200, {"cookie": "sid=1"}, {"cache-control": "max-age=60", "vary": "Cookie"}, True),
    ("GET", 302, {}, {}, False),  # not heuristically cacheable, no explicit freshness
    ("GET", 302, {}, {"cache-control": "max-age=60"}, True),
    ("GET", 404, {}, {}, True),
    # Step 7: explicit freshness makes any final status storable (RFC 9111 §3); a 5xx only
    # never *replaces* a good copy (is_storable(replacing=...), tests/unit/test_cache_rfc_parse.py)
    ("GET", 503, {}, {"cache-control": "max-age=60"}, True),
    ("GET", 299, {}, {"cache-control": "max-age=60"}, True),
    ("GET", 200, {}, {"cache-control": "no-store, must-understand, max-age=60"}, True),
    ("GET", 200, {}, {"cache-control": "no-cache"}, True),  # stored, always revalidated
])
def test_is_storable(method: str, status: int, req: dict[str, str], resp: dict[str, str],
                     expected: bool) -> None:
    assert is_storable(method, status, req, resp) is expected


def test_storable_headers_strip_private_fields_and_hop_by_hop() -> None:
    resp = {"cache-control": 'private="x-user", no-cache="x-token"', "x-user": "ani", "x-token": "t",
            "connection": "x-hop", "x-hop": "1", "transfer-encoding": "chunked", "set-cookie": "a=b",
            "etag": '"e"'}
    assert set(storable_headers(resp)) == {"cache-control", "etag"}


def test_invalidates() -> None:
    assert invalidates("POST", 200) and invalidates("DELETE", 204)
    assert not invalidates("GET", 200) and not invalidates("POST", 500)


# ------------------------------------------------------------------ freshness


@pytest.mark.parametrize(("headers", "status", "expected"), [
    ({"cache-control": "s-maxage=10, max-age=60"}, 200, 10.0),
    ({"cache-control": "max-age=60", "expires": http(T0 + 999)}, 200, 60.0),
    ({"expires": http(T0 + 300)}, 200, 300.0),
    ({"expires": "0"}, 200, 0.0),  # invalid Expires = already expired
    ({"cache-control": "max-age=abc"}, 200, 0.0),  # invalid max-age = stale
    ({"last-modified": http(T0 - 10 * 3600)}, 200, 3600.0),  # 10 % heuristic
    ({"last-modified": http(T0 - 100 * DAY)}, 200, DAY),  # capped at 24 h
    ({"last-modified": http(T0 - 10 * 3600)}, 302, None),  # not heuristically cacheable
    ({"last-modified": http(T0 - 10 * 3600), "cache-control": "public"}, 302, 3600.0),
    ({"last-modified": http(T0 - 10 * 3600), "cache-control": "no-cache"}, 200, None),
    ({}, 200, None),
])
def test_freshness_lifetime(headers: dict[str, str], status: int, expected: float | None) -> None:
    assert freshness_lifetime({"date": http(T0), **headers}, status=status) == expected


def test_freshness_lifetime_private_cache_ignores_s_maxage() -> None:
    assert freshness_lifetime({"cache-control": "s-maxage=10, max-age=60"}, shared=False) == 60.0


@pytest.mark.parametrize(("date", "age", "request_time", "now", "expected"), [
    (T0, None, T0, T0 + 5, 5.0),  # resident time only
    (T0, "30", T0, T0 + 5, 35.0),  # upstream Age
    (T0, "30", T0 - 2, T0 + 5, 37.0),  # Age corrected by the response delay
    (T0 - 100, None, T0, T0, 100.0),  # apparent age from a Date in the past
    (T0 + 100, None, T0, T0, 0.0),  # upstream clock ahead: apparent age clamps at 0
    (None, None, T0, T0 + 7, 7.0),  # no Date: date = response time
    (T0, "junk", T0, T0 + 1, 1.0),
])
def test_current_age(date: float | None, age: str | None, request_time: float, now: float,
                     expected: float) -> None:
    headers = {} if date is None else {"date": http(date)}
    if age is not None:
        headers["age"] = age
    meta = StoredMeta(200, headers, request_time, T0)
    assert current_age(meta, now) == expected
    assert age_header(meta, now) == str(int(expected))


# ------------------------------------------------------------------ Vary


def test_vary_key_headers() -> None:
    assert vary_key_headers({}) == []
    assert vary_key_headers({"vary": "Accept-Language, accept-encoding ,Accept-Language"}) == [
        "accept-encoding", "accept-language"]
    assert vary_key_headers({"vary": "Accept-Language, *"}) is None


@pytest.mark.parametrize(("stored_lang", "request_lang", "expected"), [
    ("id", "id", True),
    ("id", "en", False),
    ("id,en;q=0.5", "id,  en;q=0.5", True),  # whitespace normalized
    (None, None, True),  # absent in both
    (None, "id", False),
    ("id", None, False),
])
def test_vary_matches_accept_language(stored_lang: str | None, request_lang: str | None,
                                      expected: bool) -> None:
    req = {"accept-language": stored_lang} if stored_lang is not None else {}
    meta = StoredMeta.capture(200, req, {"vary": "Accept-Language", "cache-control": "max-age=60"}, T0, T0)
    incoming = {"accept-language": request_lang} if request_lang is not None else {}
    assert vary_matches(meta, incoming) is expected


def test_pick_variant_prefers_matching_and_newest() -> None:
    resp = {"vary": "accept-language"}
    old_id = StoredMeta.capture(200, {"accept-language": "id"}, resp | {"date": http(T0 - 50)}, T0, T0)
    new_id = StoredMeta.capture(200, {"accept-language": "id"}, resp | {"date": http(T0)}, T0, T0)
    en = StoredMeta.capture(200, {"accept-language": "en"}, resp | {"date": http(T0 + 9)}, T0, T0)
    assert pick_variant([old_id, en, new_id], {"accept-language": "id"}, lambda m: m) is new_id
    assert pick_variant([old_id, en], {"accept-language": "fr"}, lambda m: m) is None


# ------------------------------------------------------------------ decide

OFF = 7 * DAY  # the default offline policy


@pytest.mark.parametrize(("cc", "req", "now", "offline_for", "kind", "on_error"), [
    # fresh / stale basics
    ("max-age=60", {}, T0 + 30, OFF, Kind.FRESH, None),
    ("max-age=60", {}, T0 + 90, OFF, Kind.REVALIDATE, True),
    ("max-age=60", {}, T0 + 90, 0, Kind.REVALIDATE, False),
    # stale-while-revalidate window
    ("max-age=60, stale-while-revalidate=30", {}, T0 + 80, 0, Kind.STALE_REVALIDATE_IN_BACKGROUND, None),
    ("max-age=60, stale-while-revalidate=30", {}, T0 + 100, 0, Kind.REVALIDATE, False),
    ("max-age=60, stale-while-revalidate=30, must-revalidate", {}, T0 + 80, OFF, Kind.REVALIDATE, False),
    # stale-if-error from the response, the request, and the policy: largest wins
    ("max-age=60, stale-if-error=100", {}, T0 + 90, 0, Kind.REVALIDATE, True),
    ("max-age=60, stale-if-error=10", {}, T0 + 90, 0, Kind.REVALIDATE, False),
    ("max-age=60, stale-if-error=10", {}, T0 + 90, 3600, Kind.REVALIDATE, True),
    ("max-age=60", {"cache-control": "stale-if-error=60"}, T0 + 90, 0, Kind.REVALIDATE, True),
    ("max-age=60", {}, T0 + 60 + OFF + 1, OFF, Kind.REVALIDATE, False),  # policy ran out
    # must-revalidate family: never stale, not even on error
    ("max-age=60, must-revalidate", {}, T0 + 90, OFF, Kind.REVALIDATE, False),
    ("max-age=60, proxy-revalidate", {}, T0 + 90, OFF, Kind.REVALIDATE, False),
    ("s-maxage=60", {}, T0 + 90, OFF, Kind.REVALIDATE, False),
    ("max-age=60, must-revalidate, stale-if-error=999", {}, T0 + 90, OFF, Kind.REVALIDATE, False),
    ("max-age=60, must-revalidate", {}, T0 + 30, OFF, Kind.FRESH, None),
    # response no-cache: always revalidate; only its own stale-if-error may stand in
    ("max-age=600, no-cache", {}, T0 + 1, OFF, Kind.REVALIDATE, False),
    ("no-cache, stale-if-error=60", {}, T0 + 1, OFF, Kind.REVALIDATE, True),
    # request directives
    ("max-age=600", {"cache-control": "no-cache"}, T0 + 1, 0, Kind.REVALIDATE, True),  # fresh copy ok
    ("max-age=600", {"pragma": "no-cache"}, T0 + 1, 0, Kind.REVALIDATE, True),
    ("max-age=600", {"pragma": "no-cache", "cache-control": "max-stale"}, T0 + 1, 0, Kind.FRESH, None),
    ("max-age=600", {"cache-control": "max-age=0"}, T0 + 1, 0, Kind.REVALIDATE, True),
    ("max-age=600", {"cache-control": "max-age=10"}, T0 + 5, 0, Kind.FRESH, None),
    ("max-age=600", {"cache-control": "min-fresh=599"}, T0 + 5, 0, Kind.REVALIDATE, True),
    ("max-age=600", {"cache-control": "min-fresh=60"}, T0 + 5, 0, Kind.FRESH, None),
    ("max-age=60", {"cache-control": "max-stale=60"}, T0 + 90, 0, Kind.FRESH, None),
    ("max-age=60", {"cache-control": "max-stale=10"}, T0 + 90, 0, Kind.REVALIDATE, False),
    ("max-age=60", {"cache-control": "max-stale"}, T0 + 9999, 0, Kind.FRESH, None),
    ("max-age=60, must-revalidate", {"cache-control": "max-stale"}, T0 + 90, 0, Kind.REVALIDATE, False),
    # only-if-cached
    ("max-age=60", {"cache-control": "only-if-cached"}, T0 + 30, 0, Kind.FRESH, None),
    ("max-age=60", {"cache-control": "only-if-cached"}, T0 + 90, OFF, Kind.GATEWAY_TIMEOUT, None),
    # no freshness information at all: revalidate, but keep working offline
    (None, {}, T0 + 1, OFF, Kind.REVALIDATE, True),
])
def test_decide(cc: str | None, req: dict[str, str], now: float, offline_for: float, kind: Kind,
                on_error: bool | None) -> None:
    d = decide("GET", req, stored(cc), now, offline_for=offline_for)
    assert d.kind is kind, d
    if on_error is not None:
        assert d.stale_on_error is on_error, d
        assert may_serve_stale(d, now) is on_error


def test_decide_heuristic_freshness() -> None:
    meta = stored(extra={"last-modified": http(T0 - 10 * DAY)})  # 10 % of 10 days -> capped at 24 h
    assert decide("GET", {}, meta, T0 + 3600, offline_for=0).kind is Kind.FRESH
    assert decide("GET", {}, meta, T0 + DAY + 1, offline_for=0).kind is Kind.REVALIDATE


def test_decide_stale_until_is_absolute_and_counts_from_expiry() -> None:
    d = decide("GET", {}, stored("max-age=60, stale-if-error=100"), T0 + 90, offline_for=30)
    assert d.stale_until == T0 + 60 + 100
    assert may_serve_stale(d, T0 + 150) and not may_serve_stale(d, T0 + 161)


def test_decide_must_revalidate_flag_for_504() -> None:
    d = decide("GET", {}, stored("max-age=1, must-revalidate"), T0 + 90, offline_for=OFF)
    assert d.must_revalidate and not d.stale_on_error and d.stale_until is None


@pytest.mark.parametrize(("method", "stored_meta", "req", "kind"), [
    ("GET", None, {}, Kind.MISS),
    ("GET", None, {"cache-control": "only-if-cached"}, Kind.GATEWAY_TIMEOUT),
    ("POST", stored("max-age=60"), {}, Kind.MISS),
    ("HEAD", stored("max-age=60"), {}, Kind.FRESH),  # HEAD served from a stored GET
    ("GET", StoredMeta.capture(200, {"accept-language": "id"}, {"vary": "accept-language",
                                                                 "cache-control": "max-age=60",
                                                                 "date": http(T0)}, T0, T0),
     {"accept-language": "en"}, Kind.MISS),
])
def test_decide_miss(method: str, stored_meta: StoredMeta | None, req: dict[str, str], kind: Kind) -> None:
    assert decide(method, req, stored_meta, T0 + 1, offline_for=OFF).kind is kind


def test_decision_defaults() -> None:
    assert Decision(Kind.MISS, "x").stale_until is None


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(("outcome", "expected"), [
    (500, True), (502, True), (503, True), (504, True), (501, False), (404, False), (200, False),
    (ConnectionRefusedError(), True),
    (TimeoutError(), True),
    (aiohttp.ClientPayloadError("body cut"), True),
    (aiohttp.ServerDisconnectedError(), True),
    (ValueError("bug"), False),
])
def test_is_error_for_stale(outcome: int | BaseException, expected: bool) -> None:
    assert is_error_for_stale(outcome, UPSTREAM_CONNECTION_ERRORS) is expected


# ------------------------------------------------------------------ validation and 304


def test_conditional_request_headers() -> None:
    meta = stored("max-age=1", extra={"etag": '"v1"', "last-modified": http(T0 - DAY)})
    assert conditional_request_headers(meta) == {"if-none-match": '"v1"', "if-modified-since": http(T0 - DAY)}
    assert conditional_request_headers(stored("max-age=1")) == {}


def test_freshen_with_304_merges_headers_and_restarts_age() -> None:
    meta = stored("max-age=60", extra={"etag": '"v1"', "content-length": "10", "content-type": "text/html",
                                       "age": "50", "x-old": "keep"})
    h304 = {"date": http(T0 + 500), "cache-control": "max-age=120", "etag": '"v1"',
            "content-length": "0", "content-type": "text/plain", "connection": "close", "x-new": "1"}
    assert freshen_applies(meta, h304)
    new = freshen_with_304(meta, h304, T0 + 499, T0 + 500)
    assert new.headers["cache-control"] == "max-age=120"
    assert new.headers["content-length"] == "10" and new.headers["content-type"] == "text/html"
    assert new.headers["x-old"] == "keep" and new.headers["x-new"] == "1"
    assert "connection" not in new.headers and "age" not in new.headers
    assert current_age(new, T0 + 510) == 11.0  # 1 s response delay + 10 s resident
    assert decide("GET", {}, new, T0 + 510, offline_for=0).kind is Kind.FRESH


def test_freshen_applies_rejects_other_etag() -> None:
    meta = stored("max-age=60", extra={"etag": '"v1"'})
    assert not freshen_applies(meta, {"etag": '"v2"'})
    assert freshen_applies(meta, {"etag": 'W/"v1"'}) and freshen_applies(meta, {})


@pytest.mark.parametrize(("req", "expected"), [
    ({"if-none-match": '"v1"'}, True),
    ({"if-none-match": 'W/"v1"'}, True),  # weak comparison
    ({"if-none-match": '"a", "v1"'}, True),
    ({"if-none-match": '"v2"'}, False),
    ({"if-none-match": "*"}, True),
    ({"if-none-match": '"v2"', "if-modified-since": http(T0)}, False),  # INM takes precedence
    ({"if-modified-since": http(T0 - DAY)}, True),  # equal to Last-Modified
    ({"if-modified-since": http(T0 - 2 * DAY)}, False),
    ({"if-modified-since": "junk"}, False),
    ({}, False),
])
def test_not_modified_for_request(req: dict[str, str], expected: bool) -> None:
    meta = stored("max-age=60", extra={"etag": '"v1"', "last-modified": http(T0 - DAY)})
    assert not_modified_for_request(req, meta) is expected


# ------------------------------------------------------------------ ranges


@pytest.mark.parametrize(("header", "size", "expected"), [
    (None, 100, None),
    ("bytes=0-9", 100, (0, 9)),
    ("bytes=10-", 100, (10, 99)),
    ("bytes=-10", 100, (90, 99)),
    ("bytes=-500", 100, (0, 99)),
    ("bytes=90-500", 100, (90, 99)),  # clamped
    ("bytes=100-", 100, "unsatisfiable"),
    ("bytes=-0", 100, "unsatisfiable"),
    ("bytes=0-", 0, "unsatisfiable"),
    ("bytes=5-1", 100, None),  # invalid: ignore the Range
    ("bytes=0-1,5-6", 100, None),  # multi-range: full 200
    ("items=0-1", 100, None),
    ("bytes=a-b", 100, None),
    ("BYTES = 1-2", 100, (1, 2)),
])
def test_parse_range(header: str | None, size: int, expected: object) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("if_range", "etag", "expected"), [
    (None, '"v1"', True),
    ('"v1"', '"v1"', True),
    ('"v2"', '"v1"', False),
    ('W/"v1"', 'W/"v1"', False),  # weak tags never match for If-Range
    ('"v1"', 'W/"v1"', False),
    (http(T0 - DAY), '"v1"', True),  # equals a strong Last-Modified
    (http(T0 - DAY + 5), '"v1"', False),
])
def test_if_range_ok(if_range: str | None, etag: str, expected: bool) -> None:
    meta = stored("max-age=60", extra={"etag": etag, "last-modified": http(T0 - DAY)})
    req = {} if if_range is None else {"if-range": if_range}
    assert if_range_ok(req, meta) is expected
