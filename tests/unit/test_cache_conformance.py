"""Step 7, measured against the public HTTP caching conformance suite: the behaviours it
found wrong or doubtful, each as a table of our own cases (positive and negative) through
the proxy with a scripted origin (tests/unit/cachesite.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.cache.rules import format_http_date
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
