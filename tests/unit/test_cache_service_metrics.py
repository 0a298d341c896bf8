"""Per-service hit counts (gateway/cache/metrics.py): each service's hits and misses are
its own, on the full path, the prepared fast path and the range path alike, and add up to
the cache-wide counters. Two services in front of one real scripted origin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.cache.metrics import RATIO_COUNTERS, Metrics, hit_ratio, serving
from gateway.cache.service import LocalServices
from gateway.config import parse_config
from tests.unit.cachesite import Answer, ScriptedOrigin

CACHEABLE = {"Cache-Control": "max-age=1000", "Content-Type": "application/pdf",
             "ETag": '"v1"', "Accept-Ranges": "bytes"}
BODY = b"d" * 4096


@asynccontextmanager
async def two_services(tmp_path: Path) -> AsyncIterator[tuple[LocalServices, TestClient[Any, Any]]]:
    origin = ScriptedOrigin()
    for path in ("/a", "/lain/b"):
        origin.script(path, Answer(200, CACHEABLE, BODY))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", origin.handle)
    async with TestServer(app) as server:
        base = str(server.make_url("")).rstrip("/")
        cfg = parse_config({
            "site": {"name": "Hotspot", "village": "Desa"},
            "network": {"lan_interface": "br-lan", "wan_interface": "wan0",
                        "lan_address": "10.42.0.1/24"},
            "dhcp": {"range_start": "10.42.0.100", "range_end": "10.42.0.250"},
            "local_services": {"enabled": True, "request_timeout": "2s", "services": [
                {"slug": "svc", "title_id": "A", "title_en": "A", "upstream": base,
                 "prefetch": []},
                {"slug": "lain", "title_id": "B", "title_en": "B", "upstream": base + "/lain",
                 "prefetch": []},
            ]},
        })
        services = LocalServices(lambda: cfg, tmp_path)
        front = web.Application()
        front.router.add_route("*", "/{tail:.*}", services.handle)
        try:
            async with TestClient(TestServer(front)) as client:
                yield services, client
        finally:
            await services.stop()


async def get(client: TestClient[Any, Any], path: str, **kw: Any) -> str:
    async with client.get(path, **kw) as resp:
        await resp.read()
        assert resp.status in (200, 206), resp.status
        return resp.headers.get("Cache-Status", "")


def per_service(services: LocalServices) -> dict[str, dict[str, Any]]:
    return {slug: s["cache"] for slug, s in services.status_json()["services"].items()}


async def test_each_service_counts_its_own_hits_and_misses(tmp_path: Path) -> None:
    async with two_services(tmp_path) as (services, client):
        before = per_service(services)
        assert before["svc"] == before["lain"] == {
            "hits": 0, "stale_served": 0, "stale_while_revalidate": 0, "misses": 0,
            "hit_ratio": None}  # no request yet: no ratio, not 0%

        assert "fwd=miss" in await get(client, "/svc/a")
        assert per_service(services)["svc"]["hit_ratio"] == 0.0
        assert "hit" in await get(client, "/svc/a")  # full path: prepares the fast answer
        assert "hit" in await get(client, "/svc/a")  # the prepared fast path
        assert services.hits.served == 1
        assert "hit" in await get(client, "/svc/a", headers={"Range": "bytes=0-99"})
        now = per_service(services)
        assert (now["svc"]["hits"], now["svc"]["misses"], now["svc"]["hit_ratio"]) == \
            (3, 1, 0.75)
        assert now["lain"]["hit_ratio"] is None  # the other service's count did not move

        assert "fwd=miss" in await get(client, "/lain/b")
        assert "hit" in await get(client, "/lain/b")
        now = per_service(services)
        assert now["lain"]["hit_ratio"] == 0.5 and now["svc"]["hit_ratio"] == 0.75

        # Every hit and miss counted for the cache was counted for one service too.
        cache = services.status_json()["cache"]
        for counter in RATIO_COUNTERS:
            assert cache[counter] == sum(s[counter] for s in now.values()), counter
        assert cache["hit_ratio"] == round(4 / 6, 4)  # 3 + 1 hits, 1 + 1 misses


def test_counting_outside_a_service_counts_only_the_cache() -> None:
    metrics = Metrics()
    metrics.count("hits")  # no service set for this task
    with serving("svc"):
        metrics.count("misses")
        metrics.count("passthrough")  # not a ratio counter: the cache's only
    metrics.count("hits", "lain")
    assert (metrics.hits, metrics.misses, metrics.passthrough) == (2, 1, 1)
    assert metrics.service_json("svc") == {"hits": 0, "stale_served": 0,
                                           "stale_while_revalidate": 0, "misses": 1,
                                           "hit_ratio": 0.0}
    assert metrics.service_json("lain")["hit_ratio"] == 1.0
    assert "per_service" not in metrics.as_json()
    assert hit_ratio({"hits": 1, "stale_served": 1, "misses": 2}) == 0.5
