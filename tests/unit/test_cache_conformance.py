"""Step 7, measured against the public HTTP caching conformance suite: the behaviours it
found wrong or doubtful, each as a table of our own cases (positive and negative) through
the proxy with a scripted origin (tests/unit/cachesite.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aiohttp import web

from gateway.cache.rules import StoredMeta, format_http_date, freshen_applies, freshen_with_304
from tests.unit.cachesite import Answer, cache_site

# -- 1. a villager's conditional GET answered from a fresh stored copy (RFC 9111 §4.3.2) -------

NOW = time.time()
DATE = format_http_date(NOW)

# (stored ETag, villager's conditional fields, status the cache answers itself)
FRESH_CONDITIONALS = [
    ('"v1"', {"If-None-Match": '"v1"'}, 304),
    ('"v1"', {"If-None-Match": 'W/"v1"'}, 304),  # If-None-Match compares weakly
    ('W/"v1"', {"If-None-Match": 'W/"v1"'}, 304),
    ('"v1"', {"If-None-Match": '"a", "v1", "b"'}, 304),  # any of several tags
    ('"v1"', {"If-None-Match": '"a",  "b" ,"v1"'}, 304),
    ('"v1"', {"If-None-Match": "*"}, 304),
    ('"v1"', {"If-None-Match": '"v2"'}, 200),  # no match: the stored body
    ('"v1"', {"If-None-Match": "v1"}, 200),  # an unquoted tag is no entity-tag: never guess
    ('"v1"', {"If-None-Match": '"v2"', "If-Modified-Since": DATE}, 200),  # INM decides
    # No Last-Modified stored: If-Modified-Since is compared with the stored Date.
    (None, {"If-Modified-Since": format_http_date(NOW + 60)}, 304),
    (None, {"If-Modified-Since": DATE}, 304),
    (None, {"If-Modified-Since": format_http_date(NOW - 3000)}, 200),  # changed after it
    (None, {"If-Modified-Since": "not a date"}, 200),
]


@pytest.mark.parametrize(("etag", "conditional", "status"), FRESH_CONDITIONALS)
async def test_a_conditional_request_for_a_fresh_copy_is_answered_by_the_cache(
        tmp_path: Path, etag: str | None, conditional: dict[str, str], status: int) -> None:
    headers = {"Cache-Control": "max-age=3600", "Date": DATE, "Vary": "Accept-Language",
               "Content-Location": "/a.id", "X-Other": "1"}
    if etag is not None:
        headers["ETag"] = etag
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, headers, b"stored body"))
        await site.get("/a")
        resp, body = await site.get("/a", headers=conditional)
        assert len(site.origin.requests_for("/a")) == 1  # never sent to the origin
        assert resp.status == status
        assert resp.headers["Cache-Status"].startswith("desanet; hit")
        if status == 200:
            assert body == b"stored body"
            return
        assert body == b""
        # RFC 9110 §15.4.5: the fields a 200 would have carried that describe it.
        for name in ("Cache-Control", "Date", "Vary", "Content-Location"):
            assert resp.headers[name] == headers[name]
        assert resp.headers.get("ETag") == etag
        assert "Age" in resp.headers and "X-Other" not in resp.headers


async def test_a_conditional_request_for_a_stale_copy_is_revalidated_first(tmp_path: Path) -> None:
    """Negative: the cache answers 304 itself only from a fresh copy; a stale one is
    revalidated with the cache's own validators, and the villager's match is checked
    against the freshened copy."""
    async with cache_site(tmp_path) as site:
        headers = {"Cache-Control": "max-age=0", "ETag": '"v1"'}
        site.origin.script("/a", Answer(200, headers, b"x"), Answer(304, headers, b""))
        await site.get("/a")
        resp, _ = await site.get("/a", headers={"If-None-Match": '"v1"'})
        assert resp.status == 304 and resp.headers["ETag"] == '"v1"'
        assert len(site.origin.requests_for("/a")) == 2
        assert site.origin.requests_for("/a")[1].headers["if-none-match"] == '"v1"'


# -- 3. what a 304 updates in the stored copy (RFC 9111 §3.2, §4.3.4) ------------------------

STORED_304 = StoredMeta(200, {"etag": '"v1"', "content-md5": "rL0Y20zC+Fzt72VPzMSk2A==",
                              "content-type": "text/plain", "cache-control": "max-age=2",
                              "x-note": "old", "content-length": "4"}, NOW - 10, NOW - 10)

# (field in the 304, value, the stored value afterwards)
FIELDS_FROM_304 = [
    ("x-note", "new", "new"),  # any other field is replaced
    ("cache-control", "max-age=60", "max-age=60"),
    ("content-md5", "N7UdGUp1E+RbVvZSTy1R8g==", "rL0Y20zC+Fzt72VPzMSk2A=="),  # digest of our body
    ("etag", 'W/"v1"', '"v1"'),  # names our body
    ("content-type", "text/plain;charset=utf-8", "text/plain"),  # kept: describes our bytes
    ("content-length", "0", "4"),
    ("set-cookie", "a=1", None),  # never stored
    ("connection", "close", None),  # hop-by-hop
]


@pytest.mark.parametrize(("name", "value", "after"), FIELDS_FROM_304)
def test_the_fields_a_304_updates(name: str, value: str, after: str | None) -> None:
    incoming = {"etag": '"v1"', name: value} if name != "etag" else {name: value}
    assert freshen_applies(STORED_304, incoming)
    meta = freshen_with_304(STORED_304, incoming, NOW, NOW)
    assert meta.headers.get(name) == after
    assert meta.response_time == NOW  # the age restarts


# (ETag in the 304, whether it selects the stored '"v1"')
SELECTS = [(None, True), ('"v1"', True), ('W/"v1"', True), ('"v2"', False), ('W/"v2"', False)]


@pytest.mark.parametrize(("etag", "selects"), SELECTS)
def test_a_304_updates_only_the_copy_its_etag_names(etag: str | None, selects: bool) -> None:
    assert freshen_applies(STORED_304, {} if etag is None else {"etag": etag}) is selects


async def test_a_304_naming_another_etag_leaves_the_stored_copy_as_it_was(tmp_path: Path) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script(
            "/a",
            Answer(200, {"Cache-Control": "max-age=0", "ETag": '"v1"', "Content-MD5": "old"}, b"x"),
            Answer(304, {"Cache-Control": "max-age=3600", "ETag": '"v2"', "Content-MD5": "new"}, b""),
            Answer(304, {"Cache-Control": "max-age=3600", "ETag": '"v1"', "Content-MD5": "new"}, b""))
        await site.get("/a")
        resp, body = await site.get("/a")  # the origin's 304 answers this request ...
        assert (resp.status, body, resp.headers["ETag"]) == (200, b"x", '"v1"')
        assert resp.headers["Content-MD5"] == "old"
        resp, body = await site.get("/a")  # ... but did not freshen the copy: asked again
        assert len(site.origin.requests_for("/a")) == 3
        assert (resp.status, body, resp.headers["ETag"]) == (200, b"x", '"v1"')
        assert resp.headers["Content-MD5"] == "old"  # a matching 304 keeps it too
        await site.get("/a")  # now fresh for an hour
        assert len(site.origin.requests_for("/a")) == 3


# -- 5. extension methods reach the origin and invalidate like any unsafe method (§4.4) -------

# (method, the origin's status for it, whether the stored /a, /loc and /cl are dropped)
INVALIDATING = [
    ("M-SEARCH", 200, True),
    ("PROPFIND", 207, True),
    ("M-SEARCH", 302, True),
    ("M-SEARCH", 500, False),  # a failed request changes nothing
    ("M-SEARCH", 404, False),
    ("OPTIONS", 200, False),  # safe (RFC 9110 §9.2.1)
    ("POST", 200, True),
]


@pytest.mark.parametrize(("method", "status", "dropped"), INVALIDATING)
async def test_an_unsafe_extension_method_invalidates_the_urls_it_names(
        tmp_path: Path, method: str, status: int, dropped: bool) -> None:
    async with cache_site(tmp_path) as site:
        fresh = {"Cache-Control": "max-age=3600"}
        for path in ("/a", "/loc", "/cl"):
            site.origin.script(path, Answer(200, fresh, f"page {path}"))
            await site.get(path)

        async def answer(request: web.Request) -> web.StreamResponse:
            if request.method == "GET":
                return web.Response(text="page /a", headers=fresh)
            return web.Response(status=status, text=f"{request.method} answered",
                                headers={"Location": "/loc", "Content-Location": "/cl"})

        site.origin.script("/a", answer)
        resp, body = await site.request(method, "/a", data=b"body")
        assert (resp.status, body) == (status, f"{method} answered".encode())
        (seen,) = [s for s in site.origin.requests_for("/a") if s.method == method]
        assert seen.body == b"body"
        for path in ("/a", "/loc", "/cl"):
            await site.get(path)
            gets = [s for s in site.origin.requests_for(path) if s.method == "GET"]
            assert len(gets) == (2 if dropped else 1), path


# -- 6. a 206 is kept as a part only when its Content-Range describes its body -----------------

# (Content-Range, body, ETag, whether the same range comes from the stored part next time)
PARTS = [
    ("bytes 5-9/10", b"56789", '"p1"', True),
    ("bytes 5-9/10", b"56789", None, True),  # one part alone mixes nothing
    ("bytes 4-9/10", b"01234", '"p1"', False),  # claims 6 bytes, carries 5: never stored
    ("bytes 5-9/*", b"56789", '"p1"', False),  # unknown length: nothing to place it in
]


@pytest.mark.parametrize(("content_range", "body", "etag", "reused"), PARTS)
async def test_a_part_is_stored_only_when_it_is_what_it_says(
        tmp_path: Path, content_range: str, body: bytes, etag: str | None, reused: bool) -> None:
    headers = {"Cache-Control": "max-age=3600", "Content-Range": content_range}
    if etag is not None:
        headers["ETag"] = etag
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(206, headers, body))
        first, got = await site.get("/a", headers={"Range": "bytes=-5"})
        assert (first.status, got) == (206, body)
        second, got = await site.get("/a", headers={"Range": "bytes=-5"})
        assert (second.status, got) == (206, body)
        assert len(site.origin.requests_for("/a")) == (1 if reused else 2)
        assert second.headers["Cache-Status"].startswith("desanet; hit") is reused


# -- 7. Vary: which request values count as the same (RFC 9111 §4.1) ---------------------------

# (Vary, the first request's value, the second's, whether the second is a hit)
VARY_SAME = [
    ("Accept-Language", "en, de", "eN, De", True),  # language tags ignore case
    ("Accept-Language", "en,de", "en,  de", True),  # and list whitespace
    ("Accept-Encoding", "gzip, br", "GZIP, br", True),
    ("Accept-Language", "en, de", "de, en", False),  # order may be a preference: kept
    ("Accept-Language", "en", "de", False),
    ("X-Token", "abc", "ABC", False),  # an unknown field's case may matter
]


@pytest.mark.parametrize(("vary", "first", "second", "hit"), VARY_SAME)
async def test_vary_values_compare_as_their_field_defines(
        tmp_path: Path, vary: str, first: str, second: str, hit: bool) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, {"Cache-Control": "max-age=3600", "Vary": vary}, b"x"))
        await site.get("/a", headers={vary: first})
        resp, _ = await site.get("/a", headers={vary: second})
        assert len(site.origin.requests_for("/a")) == (1 if hit else 2)
        assert resp.headers["Cache-Status"].startswith("desanet; hit") is hit


# -- a pooled connection the origin closed as the request went out ------------------------------

@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("HEAD", True), ("POST", False),
                                                 ("M-SEARCH", False)])
async def test_a_connection_closed_before_any_answer_is_retried_for_get_and_head_only(
        tmp_path: Path, method: str, retried: bool) -> None:
    calls: list[str] = []

    async def drop_first(request: web.Request) -> web.StreamResponse:
        calls.append(request.method)
        if len(calls) == 1:
            assert request.transport is not None
            request.transport.close()  # no answer at all: the client sees a disconnect
            return web.Response()
        return web.Response(text="answer", headers={"Cache-Control": "no-store"})

    async with cache_site(tmp_path) as site:
        site.origin.script("/a", drop_first)
        resp, body = await site.request(method, "/a")
        if retried:
            assert resp.status == 200 and body == (b"" if method == "HEAD" else b"answer")
            assert calls == [method, method]
        else:  # not idempotent: never sent twice; the villager gets our page
            assert resp.status == 504 and calls == [method]
