"""While a service is offline, a request answered from the store alone asks the upstream in
the background (a HEAD) whether it is back; a request that goes upstream anyway does not add
that HEAD: the uplink carries one request for it, and the origin sees only that one.

Found by the conformance suite run through the lab (cc-resp-must-revalidate-stale: after
another test's dropped connection had marked the service offline, the origin saw a HEAD
beside the client's revalidation and took it for the third request)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.unit.cachesite import Answer, CacheSite, cache_site


async def quiet(site: CacheSite) -> None:
    """Wait until the cache has no fetch and no background task (recheck, refresh) left."""
    proxy = site.services.proxy
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while proxy.fetches_in_flight() or proxy._background:
        assert loop.time() < deadline, "the cache kept working in the background"
        await asyncio.sleep(0.005)


def methods(site: CacheSite, path: str) -> list[str]:
    return [seen.method for seen in site.origin.requests_for(path)]


@pytest.mark.parametrize(("stored_cc", "again"), [
    ("max-age=0", Answer(status=304, headers={"ETag": '"v1"', "Cache-Control": "max-age=0"},
                         body=b"")),                          # revalidated: 304
    ("max-age=0", Answer(headers={"ETag": '"v2"', "Cache-Control": "max-age=0"}, body="new")),
    ("no-cache", Answer(status=304, headers={"ETag": '"v1"'}, body=b"")),
])
async def test_a_request_that_goes_upstream_adds_no_recheck(tmp_path: Path, stored_cc: str,
                                                            again: Answer) -> None:
    async with cache_site(tmp_path, offline_for="1h") as site:
        site.origin.script("/a", Answer(headers={"ETag": '"v1"', "Cache-Control": stored_cc},
                                        body="stored"))
        await site.get("/a")
        await quiet(site)
        site.origin.script("/a", again)
        site.services.uplink_lost()  # the service is offline (no answer last time)
        resp, _ = await site.get("/a")
        await quiet(site)
        assert resp.status == 200
        assert methods(site, "/a") == ["GET", "GET"]  # the revalidation only, no HEAD
        assert site.origin.requests_for("/a")[1].headers.get("if-none-match") == '"v1"'
        assert site.services.health_states()["svc"] == "online"  # its answer said so


async def test_a_miss_adds_no_recheck(tmp_path: Path) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/m", Answer(headers={"Cache-Control": "max-age=60"}, body="m"))
        site.services.uplink_lost()
        resp, body = await site.get("/m")
        await quiet(site)
        assert (resp.status, body) == (200, b"m")
        assert methods(site, "/m") == ["GET"]


async def test_a_fresh_hit_while_offline_rechecks_in_the_background(tmp_path: Path) -> None:
    """Positive control: a hit does not ask the upstream, so the HEAD is how the service
    comes back (and the banner goes) without waiting for the probe."""
    async with cache_site(tmp_path) as site:
        site.origin.script("/f", Answer(headers={"Cache-Control": "max-age=3600",
                                                 "Content-Type": "text/html"},
                                        body="<html><body>page</body></html>"))
        await site.get("/f")
        await quiet(site)
        site.services.uplink_lost()
        resp, body = await site.get("/f")
        assert resp.status == 200 and b"Salinan offline" in body  # served as an offline copy
        await quiet(site)
        assert methods(site, "/f") == ["GET", "HEAD"]
        assert site.services.health_states()["svc"] == "online"
        resp, body = await site.get("/f")
        assert b"Salinan offline" not in body
