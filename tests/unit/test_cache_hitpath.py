"""The prepared-answer fast path for fresh hits (gateway/cache/hitpath.py).

Every case runs against a real scripted origin (tests/unit/cachesite.py) with the clock
frozen (``time.time`` patched), so the fast path's answer can be compared field by field
with the full path's (``CachingProxy.get``) for the same request at the same instant.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cache import rules
from tests.unit.cachesite import SLUG, Answer, CacheSite, cache_site, site_config

T0 = 1_900_000_000.0  # the frozen "now" (2030), advanced by the tests
SMALL = b"x" * 2048
PLAIN = {"Cache-Control": "max-age=100", "Content-Type": "application/pdf", "ETag": '"v1"',
         "Last-Modified": "Tue, 01 Jan 2030 00:00:00 GMT", "X-Origin": "kept"}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock()
    monkeypatch.setattr(time, "time", c)
    yield c


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for ``condition`` (e.g. a store commit that runs after the answer went out)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def served(site: CacheSite) -> int:
    return site.services.hits.served


def header_pairs(resp: Any) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in resp.headers.items()]


async def warm(site: CacheSite, path: str, **kw: Any) -> None:
    """A miss (stored), then a full-path hit (which prepares the answer)."""
    await site.get(path, **kw)
    resp, _ = await site.get(path, **kw)
    assert resp.headers["Cache-Status"].startswith("desanet; hit")


async def full_path(site: CacheSite, method: str, path: str, **kw: Any) -> tuple[Any, bytes]:
    """The same request answered with the fast path off (and the prepared answers gone)."""
    hits = site.services.hits
    hits.enabled = False
    hits.clear()
    try:
        return await site.request(method, path, **kw)
    finally:
        hits.enabled = True


# -- the fast path answers exactly what the full path would --------------------------------

@pytest.mark.parametrize("headers", [
    PLAIN,
    {"Cache-Control": "public, max-age=100", "Content-Type": "text/html; charset=utf-8"},
    {"Expires": "Thu, 01 Jan 2060 00:00:00 GMT", "Date": "Fri, 17 May 2030 03:33:20 GMT"},
    {"Cache-Control": "max-age=100", "Age": "30", "Content-Type": "image/png"},
    {"Cache-Control": "s-maxage=100, max-age=0"},  # no Content-Type stored
    [("Cache-Control", "max-age=100"), ("Link", "</a>; rel=x"), ("Link", "</b>; rel=y")],
], ids=["pdf", "html-no-queue", "expires", "origin-age", "no-content-type", "repeated-field"])
async def test_fast_answer_equals_full_answer(tmp_path: Path, clock: Clock,
                                              headers: Any) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/doc?id=1", Answer(200, headers, SMALL))
        await warm(site, "/doc?id=1")
        before = served(site)
        clock.now += 7.4  # Age moves on: the prepared headers must follow
        fast, fast_body = await site.get("/doc?id=1")
        assert served(site) == before + 1
        full, full_body = await full_path(site, "GET", "/doc?id=1")
        assert (fast.status, fast_body) == (full.status, full_body) == (200, SMALL)
        assert header_pairs(fast) == header_pairs(full)
        assert fast.headers["Cache-Status"] == "desanet; hit"
        assert len(site.origin.requests_for("/doc?id=1")) == 1


async def test_age_is_the_current_age_in_whole_seconds(tmp_path: Path, clock: Clock) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, {"Cache-Control": "max-age=1000", "Age": "5"}, SMALL))
        await warm(site, "/a")
        entry = site.services.store.lookup(f"GET {site.services.services()[SLUG].upstream}/a")[0]
        for step in (0.2, 0.5, 0.9, 1.0, 40.3):
            clock.now += step
            resp, _ = await site.get("/a")
            assert resp.headers["Age"] == rules.age_header(entry.meta, clock.now)
        assert int(resp.headers["Age"]) >= 5 + 42
        assert served(site) == 5


async def test_metrics_and_lru_follow_fast_hits(tmp_path: Path, clock: Clock) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, PLAIN, SMALL))
        await warm(site, "/a")
        metrics = site.services.proxy.metrics
        hits, sent, requests = metrics.hits, metrics.bytes_from_cache, metrics.requests
        clock.now += 3
        for _ in range(3):
            await site.get("/a")
        assert served(site) == 3
        assert metrics.hits == hits + 3
        assert metrics.requests == requests + 3
        assert metrics.bytes_from_cache == sent + 3 * len(SMALL)
        url = site.services.services()[SLUG].upstream
        store = site.services.store
        assert store.lookup(f"GET {url}/a")[0].last_used == clock.now
        touched = clock.now
        clock.now += 0.5
        await site.get("/a")
        assert store.lookup(f"GET {url}/a")[0].last_used == touched  # once a second at most
        clock.now += 0.6
        await site.get("/a")
        assert store.lookup(f"GET {url}/a")[0].last_used == clock.now


# -- what must fall through to the full path ---------------------------------------------

@pytest.mark.parametrize(("method", "headers", "status"), [
    ("GET", {"Range": "bytes=0-9"}, 206),
    ("GET", {"If-None-Match": '"v1"'}, 304),
    ("GET", {"If-Modified-Since": "Wed, 01 Jan 2031 00:00:00 GMT"}, 304),
    ("GET", {"If-Range": '"v1"', "Range": "bytes=0-0"}, 206),
    ("GET", {"Cache-Control": "max-age=0"}, 200),
    ("GET", {"Cache-Control": "no-cache"}, 200),
    ("GET", {"Pragma": "no-cache"}, 200),
    ("GET", {"Authorization": "Basic dTpw"}, 200),
    ("HEAD", {}, 200),
], ids=["range", "if-none-match", "if-modified-since", "if-range", "max-age-0", "no-cache",
        "pragma", "authorization", "head"])
async def test_requests_that_may_get_another_answer_take_the_full_path(
        tmp_path: Path, clock: Clock, method: str, headers: dict[str, str], status: int) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, PLAIN, SMALL))
        await warm(site, "/a")
        assert len(site.services.hits) == 1
        resp, body = await site.request(method, "/a", headers=headers)
        assert served(site) == 0
        assert resp.status == status
        full, full_body = await full_path(site, method, "/a", headers=headers)
        assert (full.status, full_body) == (resp.status, body)
        assert full.headers.get("Cache-Status") == resp.headers.get("Cache-Status")


async def test_stale_copy_is_never_served_fast(tmp_path: Path, clock: Clock) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, {"Cache-Control": "max-age=10"}, SMALL))
        await warm(site, "/a")
        clock.now += 9.5
        await site.get("/a")
        assert served(site) == 1
        clock.now += 1.0  # age 10.5 > 10: stale, the full path revalidates
        resp, _ = await site.get("/a")
        assert served(site) == 1
        assert len(site.origin.requests_for("/a")) == 2
        assert resp.headers["Cache-Status"] == "desanet; fwd=miss; stored"


@pytest.mark.parametrize(("headers", "service"), [
    ({"Cache-Control": "max-age=100", "Vary": "Accept-Language"}, {}),
    ({"Cache-Control": "max-age=100", "Vary": "*"}, {}),
    ({"Cache-Control": "max-age=100, no-cache"}, {}),
    ({"Cache-Control": "max-age=0"}, {}),
    ({"Cache-Control": "max-age=100", "Content-Type": "text/html"}, {"queue_posts": True}),
], ids=["vary", "vary-star", "response-no-cache", "max-age-0", "html-with-form-token"])
async def test_answers_that_are_not_prepared(tmp_path: Path, clock: Clock,
                                             headers: dict[str, str],
                                             service: dict[str, Any]) -> None:
    async with cache_site(tmp_path, **service) as site:
        site.origin.script("/a", Answer(200, headers, b"<form method=post></form>"))
        for _ in range(3):
            await site.get("/a", headers={"Accept-Language": "id"})
        assert len(site.services.hits) == 0
        assert served(site) == 0


async def test_offline_service_takes_the_full_path(tmp_path: Path, clock: Clock) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, PLAIN, SMALL))
        await warm(site, "/a")
        site.services.uplink_lost()
        await site.get("/a")
        await site.get("/a")
        assert served(site) == 0


async def test_config_reload_takes_the_full_path(tmp_path: Path, clock: Clock) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, PLAIN, SMALL))
        await warm(site, "/a")
        upstream = site.services.services()[SLUG].upstream
        new = site_config(upstream, queue_posts=True)
        site.services._config = lambda: new
        await site.get("/a")
        assert served(site) == 0
        await site.get("/a")  # prepared again under the new configuration
        assert served(site) == 1
        assert (len(site.services.hits), site.services.hits.bytes) == (1, len(SMALL))


# -- prepared answers go when the stored entry changes -----------------------------------

async def test_invalidated_after_post(tmp_path: Path, clock: Clock) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, PLAIN, SMALL))
        await warm(site, "/a")
        site.origin.script("/a", Answer(200, PLAIN, b"new"))
        resp, _ = await site.request("POST", "/a", data={"x": "1"})
        assert resp.status == 200
        assert len(site.services.hits) == 0
        resp, body = await site.get("/a")
        assert body == b"new"
        assert served(site) == 0


async def test_replaced_after_revalidation(tmp_path: Path, clock: Clock) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a",
                           Answer(200, {"Cache-Control": "max-age=10", "ETag": '"v1"'}, SMALL),
                           Answer(304, {"Cache-Control": "max-age=500", "ETag": '"v1"',
                                        "X-Fresh": "2"}, b""))
        await warm(site, "/a")
        clock.now += 11  # stale: revalidated, 304 freshens the stored copy
        resp, _ = await site.get("/a")
        assert "fwd-status=304" in resp.headers["Cache-Status"]
        await site.get("/a")  # full-path hit on the freshened entry: prepared again
        fast, body = await site.get("/a")
        assert served(site) == 1
        assert fast.headers["X-Fresh"] == "2"
        assert fast.headers["Cache-Control"] == "max-age=500"
        assert body == SMALL
        full, _ = await full_path(site, "GET", "/a")
        assert header_pairs(fast) == header_pairs(full)


async def test_replaced_by_a_new_copy(tmp_path: Path, clock: Clock) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, PLAIN, SMALL), Answer(200, PLAIN, b"second"))
        await warm(site, "/a")
        assert len(site.services.hits) == 1
        # A forced reload stores the origin's new copy: the prepared answer goes with it.
        _, body = await site.get("/a", headers={"Cache-Control": "no-cache"})
        assert body == b"second"
        await until(lambda: len(site.services.hits) == 0)  # the new copy is committed
        await site.get("/a")
        _, body = await site.get("/a")
        assert (served(site), body) == (1, b"second")


async def test_evicted(tmp_path: Path, clock: Clock) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, PLAIN, SMALL))
        site.origin.script("/b", Answer(200, PLAIN, SMALL))
        await warm(site, "/a")
        site.services.store.max_bytes = len(SMALL) + 10  # room for one body
        clock.now += 1
        await site.get("/b")  # stored; /a, least recently used, is evicted
        await until(lambda: len(site.services.hits) == 0)
        await site.get("/a")
        assert served(site) == 0
        assert len(site.origin.requests_for("/a")) == 2


async def test_a_change_while_preparing_is_not_overtaken(tmp_path: Path, clock: Clock,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, PLAIN, SMALL))
        await site.get("/a")
        store = site.services.store
        read_small = store.read_small

        def changed_meanwhile(entry: Any) -> bytes | None:
            store._changed(entry.key)  # e.g. a 304 committed on a worker thread
            return read_small(entry)

        monkeypatch.setattr(store, "read_small", changed_meanwhile)
        await site.get("/a")
        assert len(site.services.hits) == 0


async def test_store_close_forgets_everything(tmp_path: Path, clock: Clock) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, PLAIN, SMALL))
        await warm(site, "/a")
        hits = site.services.hits
        assert len(hits) == 1
    assert len(hits) == 0


async def test_prepared_answers_are_bounded(tmp_path: Path, clock: Clock,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cache import hitpath
    monkeypatch.setattr(hitpath, "MAX_PREPARED", 2)
    async with cache_site(tmp_path) as site:
        hits = site.services.hits
        for name in ("/a", "/b", "/c"):
            site.origin.script(name, Answer(200, PLAIN, SMALL))
            await warm(site, name)
        assert (len(hits), hits.bytes) == (2, 2 * len(SMALL))
        await site.get("/a")  # the oldest went: full path (which prepares it again)
        assert served(site) == 0
        await site.get("/c")
        assert served(site) == 1
        assert (len(hits), hits.bytes) == (2, 2 * len(SMALL))
