"""A HEAD for a stale stored copy is written through as a HEAD (RFC 9111 §4.3.5): no
body crosses the uplink, its answer reaches the villager and updates the stored GET
answer; with no answer (or a 5xx) the stored copy stands in when the rules allow."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from tests.unit.cachesite import Answer, CacheSite, cache_site


def methods(site: CacheSite, path: str) -> list[str]:
    return [seen.method for seen in site.origin.requests_for(path)]


async def test_a_head_for_a_stale_copy_goes_up_as_a_head_and_refreshes_it(tmp_path: Path) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(headers={"Cache-Control": "max-age=0", "ETag": '"v1"',
                                                 "X-Version": "1"}, body="stored body"))
        await site.settled("GET", "/a")

        async def head_or_get(request: web.Request) -> web.StreamResponse:
            headers = {"Cache-Control": "max-age=3600", "ETag": '"v1"', "X-Version": "2",
                       "Content-Length": "11"}
            if request.method == "HEAD":
                return web.Response(headers=headers)
            return web.Response(body=b"stored body", headers=headers)

        site.origin.script("/a", head_or_get)
        resp, _ = await site.settled("HEAD", "/a")
        assert resp.status == 200 and resp.headers["X-Version"] == "2"
        assert methods(site, "/a") == ["GET", "HEAD"]  # written through as a HEAD
        # The HEAD's fields and freshness now belong to the stored GET answer.
        resp, body = await site.settled("GET", "/a")
        assert body == b"stored body" and resp.headers["X-Version"] == "2"
        assert resp.headers["Cache-Status"].startswith("desanet; hit")
        assert methods(site, "/a") == ["GET", "HEAD"]


async def test_a_head_that_contradicts_the_copy_makes_the_next_get_revalidate(tmp_path: Path) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/b", Answer(headers={"Cache-Control": "max-age=0", "ETag": '"v1"'},
                                        body="old"))
        await site.settled("GET", "/b")
        site.origin.script("/b", Answer(headers={"Cache-Control": "max-age=3600", "ETag": '"v2"'},
                                        body="new"))
        resp, _ = await site.settled("HEAD", "/b")
        assert resp.headers["ETag"] == '"v2"'
        resp, body = await site.settled("GET", "/b")
        assert body == b"new"  # never the old body under the new validator
        assert methods(site, "/b") == ["GET", "HEAD", "GET"]


async def test_a_fresh_copy_answers_a_head_without_the_origin(tmp_path: Path) -> None:
    """Positive control: the write-through is for stale copies only."""
    async with cache_site(tmp_path) as site:
        site.origin.script("/c", Answer(headers={"Cache-Control": "max-age=3600"}, body="x"))
        await site.settled("GET", "/c")
        resp, body = await site.settled("HEAD", "/c")
        assert resp.status == 200 and body == b""
        assert methods(site, "/c") == ["GET"]


async def test_a_failing_origin_leaves_the_villager_the_stored_copy(tmp_path: Path) -> None:
    async with cache_site(tmp_path, offline_for="1h") as site:
        site.origin.script("/d", Answer(headers={"Cache-Control": "max-age=0", "X-Copy": "stored"}))
        await site.settled("GET", "/d")
        site.origin.script("/d", Answer(status=503, body="down"))
        resp, _ = await site.settled("HEAD", "/d")
        assert resp.status == 200 and resp.headers["X-Copy"] == "stored"
        assert "stale-if-error" in resp.headers["Cache-Status"]
        assert methods(site, "/d") == ["GET", "HEAD"]


async def test_must_revalidate_passes_the_origins_error_through(tmp_path: Path) -> None:
    async with cache_site(tmp_path, offline_for="1h") as site:
        site.origin.script("/e", Answer(headers={"Cache-Control": "max-age=0, must-revalidate"}))
        await site.settled("GET", "/e")
        site.origin.script("/e", Answer(status=503, body="down"))
        resp, _ = await site.settled("HEAD", "/e")
        assert resp.status == 503
