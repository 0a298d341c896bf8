"""Partial content in the government-services cache (RFC 9111 §3.3, §3.4; RFC 9110 §14):
206 answers stored as parts, combined when they share a strong validator, served for
ranges they hold (fresh, or stale on error as the rules allow), completed into a 200;
and range/HEAD requests that arrive during a fill wait for it.

Each case runs against a real aiohttp origin (tests/unit/cachesite.py) whose log of
received requests tells a cache hit (the origin saw nothing) from a miss. The store is
16 MiB, so one object may be 2 MiB: ``BIG`` (3 MiB) is never stored whole and its
ranges are kept as parts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.cache.ranges import (
    Held,
    add_range,
    covers,
    if_range_matches,
    missing,
    parse_content_range,
    strong_validator,
)
from gateway.cache.rules import StoredMeta
from gateway.cache.service import LocalServices
from gateway.cache.store import CacheStore
from gateway.config import parse_config
from tests.unit.cachesite import SLUG, Answer, CacheSite, ScriptedOrigin

BIG = bytes(range(251)) * (3 * 1024 * 1024 // 251)  # ~3 MiB, over the 2 MiB object limit
SMALL = b"0123456789"
ETAG = '"v1"'


def _config(upstream: str) -> Any:
    return parse_config({
        "site": {"name": "Hotspot", "village": "Desa", "timezone": "Asia/Jakarta"},
        "network": {"lan_interface": "br-lan", "wan_interface": "wan0",
                    "lan_address": "10.42.0.1/24"},
        "dhcp": {"range_start": "10.42.0.100", "range_end": "10.42.0.250"},
        "local_services": {
            "enabled": True, "request_timeout": "2s", "cache_size": "16mb",
            "services": [{"slug": SLUG, "title_id": "Layanan", "title_en": "Service",
                          "upstream": upstream, "prefetch": [], "offline_for": "1h"}],
        },
    })


class RangeSite(CacheSite):
    upstream = ""

    def key(self, path: str) -> str:
        """The store's key for an origin path."""
        return f"GET {self.upstream}{path}"


@asynccontextmanager
async def small_cache_site(tmp_path: Path) -> AsyncIterator[RangeSite]:
    """cache_site (tests/unit/cachesite.py) with a 16 MiB store."""
    origin = ScriptedOrigin()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", origin.handle)
    async with TestServer(app) as server:
        upstream = str(server.make_url("")).rstrip("/")
        cfg = _config(upstream)
        services = LocalServices(lambda: cfg, tmp_path)
        front = web.Application()
        front.router.add_route("*", "/{tail:.*}", services.handle)
        try:
            async with TestClient(TestServer(front)) as client:
                site = RangeSite(origin, client, services)
                site.upstream = upstream
                yield site
        finally:
            await services.stop()


class Ranged:
    """An origin path that serves ``body`` as a real server does: Range honoured (one
    range), If-Range compared strongly with its ETag, 503 while ``down``; ``hold`` makes
    the next request wait for ``release`` before sending its body."""

    def __init__(self, body: bytes, etag: str = ETAG, cache_control: str = "max-age=3600") -> None:
        self.body, self.etag, self.cache_control = body, etag, cache_control
        self.down = False
        self.hold = False
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            return web.Response(status=503, text="down")
        headers = {"ETag": self.etag, "Cache-Control": self.cache_control,
                   "Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        if self.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        status, first, last = 200, 0, len(self.body) - 1
        spec = request.headers.get("Range", "")
        if_range = request.headers.get("If-Range")
        if spec.startswith("bytes=") and (if_range is None or if_range == self.etag):
            a, _, b = spec[6:].partition("-")
            first, last = (int(a), min(int(b), last) if b else last) if a else (len(self.body) - int(b), last)
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{len(self.body)}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = last - first + 1
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        if self.hold:
            self.hold = False
            self.holding.set()
            await self.release.wait()
        await resp.write(self.body[first:last + 1])
        await resp.write_eof()
        return resp


def ranged_gets(site: RangeSite, path: str) -> list[str | None]:
    """The Range of each GET the origin received for ``path`` (None: a whole GET)."""
    return [s.headers.get("range") for s in site.origin.requests_for(path) if s.method == "GET"]


async def get_range(site: RangeSite, path: str, spec: str, **headers: str) -> tuple[Any, bytes]:
    return await site.get(path, headers={"Range": spec, **headers})


def held(site: RangeSite, path: str) -> tuple[tuple[int, int], ...]:
    """The byte ranges the store holds for ``path`` as a part (() for none)."""
    parts = site.services.store.lookup_partial(site.key(path))
    return parts[0].partial.held if parts and parts[0].partial else ()


async def until_held(site: RangeSite, path: str, ranges: tuple[tuple[int, int], ...]) -> None:
    """A part is committed just after its answer went out: wait for it."""
    await _until(lambda: held(site, path) == ranges)


# -- parts of an object too large to store whole ----------------------------------------------


async def test_a_206_is_stored_and_the_same_range_is_served_locally(tmp_path: Path) -> None:
    async with small_cache_site(tmp_path) as site:
        site.origin.script("/big", Ranged(BIG))
        resp, body = await get_range(site, "/big", "bytes=1000-1999")
        assert resp.status == 206 and body == BIG[1000:2000]
        assert resp.headers["Content-Range"] == f"bytes 1000-1999/{len(BIG)}"
        assert resp.headers["Cache-Status"] == "desanet; fwd=miss; stored"
        # A whole GET first (too large: dropped), then the range itself.
        assert ranged_gets(site, "/big") == [None, "bytes=1000-1999"]
        for spec, first, last in (("bytes=1000-1999", 1000, 1999), ("bytes=1500-1600", 1500, 1600)):
            resp, body = await get_range(site, "/big", spec)
            assert resp.status == 206 and body == BIG[first:last + 1]
            assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{len(BIG)}"
            assert resp.headers["Cache-Status"] == "desanet; hit"
            assert resp.headers["ETag"] == ETAG and int(resp.headers["Content-Length"]) == last - first + 1
        assert len(ranged_gets(site, "/big")) == 2  # nothing more reached the origin


async def test_two_parts_are_combined_and_a_range_across_both_is_local(tmp_path: Path) -> None:
    async with small_cache_site(tmp_path) as site:
        site.origin.script("/big", Ranged(BIG))
        assert (await get_range(site, "/big", "bytes=0-99"))[1] == BIG[:100]
        await until_held(site, "/big", ((0, 99),))
        assert (await get_range(site, "/big", "bytes=100-199"))[1] == BIG[100:200]
        await until_held(site, "/big", ((0, 199),))
        # The second part was asked with the stored validator: a changed object comes whole.
        second = site.origin.requests_for("/big")[-1]
        assert second.headers["range"] == "bytes=100-199" and second.headers["if-range"] == ETAG
        seen = len(site.origin.seen)
        resp, body = await get_range(site, "/big", "bytes=50-150")
        assert resp.status == 206 and body == BIG[50:151]
        assert resp.headers["Cache-Status"] == "desanet; hit"
        # Outside what is held: asked upstream (only that range), then held too.
        resp, body = await get_range(site, "/big", "bytes=150-250")
        assert body == BIG[150:251] and resp.headers["Cache-Status"] == "desanet; fwd=miss; stored"
        assert len(site.origin.seen) == seen + 1
        await until_held(site, "/big", ((0, 250),))
        assert site.services.store.stats()["bytes"] == 251


async def test_parts_that_cover_the_object_become_a_complete_200(tmp_path: Path) -> None:
    async with small_cache_site(tmp_path) as site:
        # As an origin that sends parts of a small object (a conformance suite does).
        site.origin.script("/s", Answer(206, {"ETag": ETAG, "Cache-Control": "max-age=3600",
                                              "Content-Range": "bytes 0-3/10"}, SMALL[:4]),
                           Answer(206, {"ETag": ETAG, "Cache-Control": "max-age=3600",
                                        "Content-Range": "bytes 4-9/10"}, SMALL[4:]))
        resp, body = await get_range(site, "/s", "bytes=0-3")
        assert resp.status == 206 and body == SMALL[:4]
        resp, body = await get_range(site, "/s", "bytes=4-9")
        assert resp.status == 206 and body == SMALL[4:]
        assert len(site.origin.seen) == 2
        await _until(lambda: site.services.store.lookup(site.key("/s")) != [])
        resp, body = await site.get("/s")
        assert resp.status == 200 and body == SMALL and resp.headers["Content-Length"] == "10"
        assert resp.headers["Cache-Status"] == "desanet; hit" and "Content-Range" not in resp.headers
        resp, body = await get_range(site, "/s", "bytes=2-5")
        assert resp.status == 206 and body == SMALL[2:6]
        assert len(site.origin.seen) == 2
        key = site.key("/s")
        assert site.services.store.lookup_partial(key) == []
        [entry] = site.services.store.lookup(key)
        assert entry.meta.status == 200 and entry.size == 10


# -- what must never be combined or served -----------------------------------------------------


@pytest.mark.parametrize(("second_etag", "combined"), [
    (ETAG, True),  # positive control: same strong validator
    ('"v2"', False),  # another representation: replaces the stored part
    ('W/"v1"', False),  # weak: parts never combined (stored alone, replacing)
])
async def test_parts_combine_only_with_the_same_strong_validator(
        tmp_path: Path, second_etag: str, combined: bool) -> None:
    first_etag = second_etag if second_etag.startswith("W/") else ETAG
    other = bytes(reversed(BIG))  # another representation's bytes
    async with small_cache_site(tmp_path) as site:
        headers = {"Cache-Control": "max-age=3600"}
        site.origin.script("/p", Answer(206, {**headers, "ETag": first_etag,
                                              "Content-Range": f"bytes 0-99/{len(BIG)}"}, BIG[:100]),
                           Answer(206, {**headers, "ETag": second_etag,
                                        "Content-Range": f"bytes 100-199/{len(BIG)}"},
                                  (BIG if combined else other)[100:200]))
        await get_range(site, "/p", "bytes=0-99")
        await until_held(site, "/p", ((0, 99),))
        await get_range(site, "/p", "bytes=100-199")
        await until_held(site, "/p", ((0, 199),) if combined else ((100, 199),))
        seen = len(site.origin.seen)
        # The newest part is always served locally.
        resp, body = await get_range(site, "/p", "bytes=100-199")
        assert resp.headers["Cache-Status"] == "desanet; hit" and len(site.origin.seen) == seen
        # A range across both: only from one representation, never spliced.
        resp, body = await get_range(site, "/p", "bytes=50-150")
        if combined:
            assert resp.headers["Cache-Status"] == "desanet; hit" and body == BIG[50:151]
            assert len(site.origin.seen) == seen
        else:
            assert resp.headers["Cache-Status"] != "desanet; hit"
            assert len(site.origin.seen) == seen + 1


async def test_a_part_larger_than_the_object_limit_is_not_stored(tmp_path: Path) -> None:
    async with small_cache_site(tmp_path) as site:
        site.origin.script("/big", Ranged(BIG))
        for _ in range(2):
            resp, body = await get_range(site, "/big", "bytes=0-")
            assert resp.status == 206 and body == BIG and resp.headers["Cache-Status"] == "desanet; fwd=miss"
        assert site.services.store.stats()["bytes"] == 0
        assert ranged_gets(site, "/big")[-1] == "bytes=0-" and len(ranged_gets(site, "/big")) >= 3


async def test_an_unsatisfiable_range_of_a_stored_part_is_a_local_416(tmp_path: Path) -> None:
    async with small_cache_site(tmp_path) as site:
        site.origin.script("/big", Ranged(BIG))
        await get_range(site, "/big", "bytes=0-99")
        seen = len(site.origin.seen)
        resp, _ = await get_range(site, "/big", f"bytes={len(BIG)}-")
        assert resp.status == 416 and resp.headers["Content-Range"] == f"bytes */{len(BIG)}"
        assert len(site.origin.seen) == seen


# -- If-Range ------------------------------------------------------------------------------------


async def test_if_range_is_honoured_for_parts(tmp_path: Path) -> None:
    async with small_cache_site(tmp_path) as site:
        origin = Ranged(BIG)
        site.origin.script("/big", origin)
        await get_range(site, "/big", "bytes=0-99")
        seen = len(site.origin.seen)
        resp, body = await get_range(site, "/big", "bytes=10-19", **{"If-Range": ETAG})
        assert resp.status == 206 and body == BIG[10:20] and len(site.origin.seen) == seen
        resp, body = await get_range(site, "/big", "bytes=10-19", **{"If-None-Match": ETAG})
        assert resp.status == 304 and body == b"" and len(site.origin.seen) == seen
        # The villager holds another copy: the whole object is due, from the origin.
        resp, body = await get_range(site, "/big", "bytes=10-19", **{"If-Range": '"old"'})
        assert resp.status == 200 and body == BIG
        assert site.origin.seen[-1].headers["if-range"] == '"old"'


@pytest.mark.parametrize(("if_range", "status"), [
    (ETAG, 206),  # it names what the origin sent: the range, while the whole is stored
    ('"old"', 200),  # another copy: the whole object
    ('W/"v1"', 200),  # weak tags never satisfy If-Range
])
async def test_if_range_on_a_whole_fill(tmp_path: Path, if_range: str, status: int) -> None:
    async with small_cache_site(tmp_path) as site:
        body = bytes(range(256)) * 64
        site.origin.script("/f", Answer(200, {"ETag": ETAG, "Cache-Control": "max-age=3600"}, body))
        resp, got = await get_range(site, "/f", "bytes=100-199", **{"If-Range": if_range})
        assert resp.status == status
        assert got == (body[100:200] if status == 206 else body)
        resp, got = await site.get("/f")  # stored whole either way
        assert got == body and resp.headers["Cache-Status"] == "desanet; hit"


# -- freshness and errors ----------------------------------------------------------------------


@pytest.mark.parametrize(("cache_control", "served_stale"), [
    ("max-age=0", True),  # the service's offline_for (1h) lets a stale part stand in
    ("max-age=0, must-revalidate", False),  # never served stale
])
async def test_a_stale_part_is_revalidated_and_served_on_error(
        tmp_path: Path, cache_control: str, served_stale: bool) -> None:
    async with small_cache_site(tmp_path) as site:
        origin = Ranged(BIG, cache_control=cache_control)
        site.origin.script("/big", origin)
        await get_range(site, "/big", "bytes=0-99")
        seen = len(site.origin.seen)
        resp, body = await get_range(site, "/big", "bytes=0-99")  # stale: asked again ...
        assert body == BIG[:100] and len(site.origin.seen) == seen + 1
        # ... conditionally: the 304 refreshes the part, whose bytes are not sent again.
        asked = site.origin.seen[-1].headers
        assert asked["if-none-match"] == ETAG and asked["range"] == "bytes=0-99"
        assert resp.headers["Cache-Status"] == "desanet; hit; fwd=stale; fwd-status=304"
        origin.down = True
        resp, body = await get_range(site, "/big", "bytes=0-99")
        if served_stale:
            assert resp.status == 206 and body == BIG[:100]
            assert resp.headers["Cache-Status"] == "desanet; hit; detail=stale-if-error"
        else:
            assert resp.status >= 500 and body != BIG[:100]


# -- requests that arrive while the whole object is being fetched -------------------------------


async def test_range_and_head_wait_for_a_fill_in_flight(tmp_path: Path) -> None:
    async with small_cache_site(tmp_path) as site:
        body = bytes(range(256)) * 1024  # 256 KiB: stored whole
        origin = Ranged(body)
        origin.hold = True
        site.origin.script("/f", origin)
        fill = asyncio.create_task(site.get("/f"))
        await asyncio.wait_for(origin.holding.wait(), 5)
        ranged = asyncio.create_task(get_range(site, "/f", "bytes=1000-1999"))
        head = asyncio.create_task(site.request("HEAD", "/f"))
        await _until(lambda: site.services.proxy.metrics.collapsed >= 2)
        assert len(site.origin.seen) == 1  # they wait; nothing else reached the origin
        origin.release.set()
        resp, got = await fill
        assert resp.status == 200 and got == body
        resp, got = await ranged
        assert resp.status == 206 and got == body[1000:2000]
        resp, got = await head
        assert resp.status == 200 and resp.headers["Content-Length"] == str(len(body)) and got == b""
        assert [(s.method, s.headers.get("range")) for s in site.origin.seen] == [("GET", None)]


@pytest.mark.parametrize(("path", "origin"), [
    ("/nostore", Ranged(SMALL * 1000, cache_control="no-store")),
    ("/big", Ranged(BIG)),  # too large to store whole
])
async def test_a_fill_that_stores_nothing_whole_keeps_no_one_waiting(
        tmp_path: Path, path: str, origin: Ranged) -> None:
    async with small_cache_site(tmp_path) as site:
        origin.hold = True
        site.origin.script(path, origin)
        fill = asyncio.create_task(site.get(path))
        await asyncio.wait_for(origin.holding.wait(), 5)
        # Answered by the origin while the first download is still held (the deadline
        # only ends a test that would otherwise hang).
        resp, got = await asyncio.wait_for(get_range(site, path, "bytes=10-19"), 10)
        assert resp.status == 206 and got == origin.body[10:20]
        resp, _ = await asyncio.wait_for(site.request("HEAD", path), 10)
        assert resp.status == 200
        assert not fill.done()
        origin.release.set()
        resp, got = await fill
        assert resp.status == 200 and got == origin.body


async def _until(check: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- the pure part: gateway/cache/ranges.py ----------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("bytes 0-99/5000", (0, 99, 5000)),
    ("BYTES  4999-4999/5000", (4999, 4999, 5000)),
    ("bytes 0-99/*", None),  # the whole length unknown: cannot place the part
    ("bytes */5000", None),  # the 416 form
    ("bytes 100-99/5000", None),
    ("bytes 0-5000/5000", None),  # past the end
    ("items 0-9/10", None),
    (None, None),
])
def test_parse_content_range(value: str | None, expected: tuple[int, int, int] | None) -> None:
    assert parse_content_range(value) == expected


@pytest.mark.parametrize(("headers", "expected"), [
    ({"etag": '"a"'}, 'etag "a"'),
    ({"etag": 'W/"a"', "last-modified": "Mon, 01 Jan 2024 00:00:00 GMT",
      "date": "Tue, 02 Jan 2024 00:00:00 GMT"}, None),  # weak tag: no fallback to the date
    ({"etag": "a"}, None),  # not a quoted tag
    ({"last-modified": "Mon, 01 Jan 2024 00:00:00 GMT", "date": "Mon, 01 Jan 2024 00:01:00 GMT"},
     "last-modified 1704067200"),  # 60 s before Date: strong for a cache
    ({"last-modified": "Mon, 01 Jan 2024 00:00:00 GMT", "date": "Mon, 01 Jan 2024 00:00:59 GMT"},
     None),  # too close to Date: may have changed within its second
    ({"last-modified": "Mon, 01 Jan 2024 00:00:00 GMT"}, None),  # no Date
    ({}, None),
])
def test_strong_validator(headers: dict[str, str], expected: str | None) -> None:
    assert strong_validator(headers) == expected


@pytest.mark.parametrize(("held", "add", "expected"), [
    ((), (5, 9), ((5, 9),)),
    (((0, 4),), (5, 9), ((0, 9),)),  # adjacent: merged
    (((0, 4), (20, 29)), (3, 21), ((0, 29),)),
    (((10, 19),), (0, 4), ((0, 4), (10, 19))),
    (((0, 99),), (10, 20), ((0, 99),)),
])
def test_add_range(held: Held, add: tuple[int, int], expected: Held) -> None:
    assert add_range(held, *add) == expected


@pytest.mark.parametrize(("held", "span", "covered", "gaps"), [
    (((0, 99),), (10, 20), True, []),
    (((0, 49), (60, 99)), (40, 70), False, [(50, 59)]),
    (((10, 19),), (0, 29), False, [(0, 9), (20, 29)]),
    ((), (0, 9), False, [(0, 9)]),
])
def test_covers_and_missing(held: Held, span: tuple[int, int], covered: bool,
                            gaps: list[tuple[int, int]]) -> None:
    assert covers(held, *span) is covered
    assert missing(held, *span) == gaps


@pytest.mark.parametrize(("if_range", "headers", "expected"), [
    (None, {"etag": '"a"'}, True),
    ('"a"', {"etag": '"a"'}, True),
    ('"b"', {"etag": '"a"'}, False),
    ('W/"a"', {"etag": 'W/"a"'}, False),  # weak tags never satisfy If-Range
    ('"a"', {"etag": 'W/"a"'}, False),
    ("Mon, 01 Jan 2024 00:00:00 GMT", {"last-modified": "Mon, 01 Jan 2024 00:00:00 GMT",
                                       "date": "Mon, 01 Jan 2024 00:00:05 GMT"}, True),
    ("Mon, 01 Jan 2024 00:00:00 GMT", {"last-modified": "Mon, 01 Jan 2024 00:00:00 GMT",
                                       "date": "Mon, 01 Jan 2024 00:00:00 GMT"}, False),
    ("Sun, 31 Dec 2023 00:00:00 GMT", {"last-modified": "Mon, 01 Jan 2024 00:00:00 GMT",
                                       "date": "Tue, 02 Jan 2024 00:00:00 GMT"}, False),
])
def test_if_range_matches(if_range: str | None, headers: dict[str, str], expected: bool) -> None:
    req = {} if if_range is None else {"if-range": if_range}
    assert if_range_matches(req, headers) is expected


# -- the store: crash safety and accounting of partial entries --------------------------------


def test_store_an_index_from_before_partial_entries_opens(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 1 << 20) as store:
        writer = store.begin("old", StoredMeta(200, {"cache-control": "max-age=60"}, 1.0, 1.0, {}))
        writer.write(b"kept")
        writer.commit()
        store._db.execute("ALTER TABLE entries DROP COLUMN ranges")  # as written before
    with CacheStore(tmp_path, 1 << 20) as store:
        [entry] = store.lookup("old")
        assert store.read_small(entry) == b"kept" and entry.partial is None
        _part(store, 0, 9, os.urandom(100)).commit()
        assert store.lookup_partial("k") != []


def _meta(etag: str = ETAG) -> StoredMeta:
    return StoredMeta(206, {"etag": etag, "cache-control": "max-age=60"}, 1.0, 1.0, {})


def _part(store: CacheStore, first: int, last: int, data: bytes, etag: str = ETAG) -> Any:
    writer = store.begin_partial("k", _meta(etag), first, last, len(data))
    assert writer is not None
    writer.write(data[first:last + 1])
    return writer


def test_store_partial_entries_survive_reopen_and_count_held_bytes(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    with CacheStore(tmp_path, 1 << 20) as store:
        _part(store, 0, 999, data).commit()
        _part(store, 5000, 5999, data).commit()
        assert store.stats()["bytes"] == 2000
    with CacheStore(tmp_path, 1 << 20) as store:
        [e] = store.lookup_partial("k")
        assert e.partial is not None and e.partial.held == ((0, 999), (5000, 5999))
        assert store.lookup("k") == [] and store.stats()["bytes"] == 2000
        with open(e.path, "rb") as f:
            f.seek(5000)
            assert f.read(1000) == data[5000:6000]


def test_store_a_crash_before_the_index_update_claims_nothing(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    with CacheStore(tmp_path, 1 << 20) as store:
        _part(store, 0, 999, data).commit()
        writer = _part(store, 1000, 1999, data)  # written in place, never committed
        writer._file.flush()
        new = _part(store, 3000, 3999, data)  # a new part in tmp/, never committed
        new._file.flush()
        store.close()
    with CacheStore(tmp_path, 1 << 20) as store:
        [e] = store.lookup_partial("k")
        assert e.partial is not None and e.partial.held == ((0, 999),)
        assert list((tmp_path / "tmp").iterdir()) == []


def test_store_a_partial_body_of_the_wrong_length_is_dropped_at_open(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    with CacheStore(tmp_path, 1 << 20) as store:
        _part(store, 0, 999, data).commit()
        [e] = store.lookup_partial("k")
    os.truncate(e.path, 5000)  # an SD card that lost the end of the file
    with CacheStore(tmp_path, 1 << 20) as store:
        assert store.lookup_partial("k") == [] and store.stats()["bytes"] == 0


def test_store_another_validator_replaces_and_a_complete_part_becomes_a_200(tmp_path: Path) -> None:
    data = os.urandom(1000)
    with CacheStore(tmp_path, 1 << 20) as store:
        _part(store, 0, 499, data).commit()
        _part(store, 500, 999, data, etag='"v2"').commit()  # another representation
        [e] = store.lookup_partial("k")
        assert e.partial is not None and e.partial.held == ((500, 999),) and store.stats()["bytes"] == 500
        assert len(list((tmp_path / "bodies").iterdir())) == 1  # the old part's file is gone
        entry = _part(store, 0, 499, data, etag='"v2"').commit()
        assert entry is not None and entry.partial is None and entry.meta.status == 200
        assert store.lookup_partial("k") == [] and store.lookup("k") == [entry]
        assert entry.meta.headers["content-length"] == "1000" and store.stats()["bytes"] == 1000
        assert store.read_small(entry) == data


def test_store_parts_obey_the_object_limit_and_eviction(tmp_path: Path) -> None:
    data = os.urandom(50_000)
    with CacheStore(tmp_path, 80_000) as store:  # max object 10,000 bytes
        assert store.begin_partial("k", _meta(), 0, 10_000, len(data)) is None  # 10,001 bytes
        _part(store, 0, 9_999, data).commit()
        assert store.begin_partial("k", _meta(), 10_000, 10_000, len(data)) is None  # would pass it
        assert store.begin_partial("long", _meta(), 0, 99, 80_001) is None  # longer than the cache
        for i in range(10):
            w = store.begin_partial(f"other{i}", _meta(), 0, 9_999, len(data))
            assert w is not None
            w.write(data[:10_000])
            w.commit()
        assert store.stats()["bytes"] <= 80_000
        assert store.lookup_partial("k") == []  # the least recently used went first
