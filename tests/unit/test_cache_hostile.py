"""Hostile requests to the government-services site (issue #9), in one process: a small
aiohttp origin on localhost under a base path (``/base``) as the upstream, and
LocalServices.handle as the villagers' server. Each refused request has a legitimate
twin beside it that still works; "reached the upstream" is read from the origin's own
log of what it received."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from gateway.cache.proxy import CachingProxy
from gateway.cache.service import LocalServices, upstream_target
from gateway.cache.slots import ClientBusy
from gateway.config import Config, parse_config
from gateway.errors import StoreError

BIG = bytes(range(256)) * 4096  # 1 MiB


class Origin:
    """Records every request it receives (method and raw target)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.status = 200  # what /flaky answers
        self.release = asyncio.Event()
        self.holding = 0
        self.huge_sent = 0
        self.huge_done = asyncio.Event()

    def count(self, method: str, prefix: str) -> int:
        return sum(1 for m, target in self.seen if m == method and target.startswith(prefix))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.raw_path))
        path = request.path.removeprefix("/base")
        if path.startswith("/echo"):
            return web.Response(text=request.raw_path, headers={"Cache-Control": "no-store"})
        if path == "/big":
            assert "Range" not in request.headers, "a range miss must fetch the whole object"
            return web.Response(body=BIG, content_type="application/octet-stream",
                                headers={"Cache-Control": "max-age=3600"})
        if path == "/flaky":
            if self.status != 200:
                return web.Response(status=self.status, text=f"error {self.status}",
                                    headers={"Cache-Control": "max-age=3600"})
            return web.Response(text="good copy", headers={"Cache-Control": "max-age=0"})
        if path == "/huge":  # 1 GiB, streamed; counts what it managed to send
            resp = web.StreamResponse(headers={"Cache-Control": "max-age=3600"})
            resp.content_length = 1 << 30
            await resp.prepare(request)
            try:
                while self.huge_sent < 1 << 30:
                    await resp.write(BIG)
                    self.huge_sent += len(BIG)
            finally:
                self.huge_done.set()
            return resp
        if path.startswith("/hold"):
            self.holding += 1
            await self.release.wait()
            self.holding -= 1
            return web.Response(text="held", headers={"Cache-Control": "max-age=3600"})
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=201, text="ok")
        return web.Response(text=f"page {path}", headers={"Cache-Control": "max-age=3600"})


def make_cfg(upstream: str, **local: Any) -> Config:
    return parse_config({
        "site": {"name": "Hotspot", "village": "Desa"},
        "network": {"lan_interface": "br-lan", "wan_interface": "wan0",
                    "lan_address": "10.42.0.1/24"},
        "dhcp": {"range_start": "10.42.0.100", "range_end": "10.42.0.250"},
        "local_services": {
            "enabled": True, "request_timeout": "2s", **local,
            "services": [{"slug": "dukcapil", "title_id": "Dukcapil", "title_en": "Dukcapil",
                          "upstream": upstream, "queue_posts": True}],
        },
    })


class Site:
    def __init__(self, origin: Origin, client: TestClient[Any, Any],
                 services: LocalServices) -> None:
        self.origin, self.client, self.services = origin, client, services
        self.holder: dict[str, Config] = {}  # the config the services read, per request
        self.upstream = ""

    async def raw(self, method: str, target: str, **kw: Any) -> tuple[int, str, Any]:
        """Send ``target`` exactly as written (no client-side normalising)."""
        url = URL(str(self.client.make_url("")).rstrip("/") + target, encoded=True)
        async with self.client.session.request(method, url, **kw) as resp:
            return resp.status, await resp.text(), resp.headers


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    origin = Origin()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", origin.handle)
    async with TestServer(app) as server:
        holder = {"cfg": make_cfg(str(server.make_url("/base")), max_misses_per_client=2)}
        services = LocalServices(lambda: holder["cfg"], tmp_path)
        front = web.Application()
        front.router.add_route("*", "/{tail:.*}", services.handle)
        try:
            async with TestClient(TestServer(front)) as client:
                made = Site(origin, client, services)
                made.holder, made.upstream = holder, str(server.make_url("/base"))
                yield made
        finally:
            origin.release.set()
            await services.stop()


# -- methods ------------------------------------------------------------------------------


# Issue #10: every method reaches the upstream (PUT, DELETE, PATCH, OPTIONS, WebDAV and
# other extensions: the origin decides) except TRACE, which would echo the villager's
# cookies back, and CONNECT, which would make the gateway a tunnel.
ALLOWED = "GET, HEAD, OPTIONS, POST, PUT, DELETE, PATCH"


@pytest.mark.parametrize("method", ["TRACE", "CONNECT"])
async def test_trace_and_connect_never_reach_the_upstream(site: Site, method: str) -> None:
    status, text, headers = await site.raw(method, "/dukcapil/page")
    if method == "TRACE":
        assert status == 405 and headers["Allow"] == ALLOWED
        assert "tidak dilayani" in text  # Bahasa Indonesia first
    else:  # aiohttp's router takes a CONNECT target as an authority and answers 404 itself
        assert status in (404, 405)
    assert site.origin.count(method, "/base") == 0
    # positive control: the same page by GET, and a POST, do reach it
    assert (await site.raw("GET", "/dukcapil/page"))[0] == 200
    assert (await site.raw("POST", "/dukcapil/form", data={"a": "1"}))[0] == 201
    assert site.origin.count("GET", "/base/page") == 1
    assert site.origin.count("POST", "/base/form") == 1


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND", "MKCOL",
                                    "M-SEARCH"])
async def test_other_methods_pass_through(site: Site, method: str) -> None:
    status, text, _ = await site.raw(method, "/dukcapil/thing", data=b"x")
    assert (status, text) == (201, "ok")
    assert site.origin.count(method, "/base/thing") == 1


@pytest.mark.parametrize("method", ["TRACE"])
async def test_trace_while_offline_is_405_not_500(site: Site, method: str) -> None:
    site.services.uplink_lost()  # every service offline
    status, text, _ = await site.raw(method, "/dukcapil/")
    assert status == 405 and "<html" in text.lower()
    status, _, headers = await site.raw(method, "/")  # the catalog itself
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert (await site.raw("GET", "/"))[0] == 200  # positive control


# -- paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [
    "/dukcapil/../secret", "/dukcapil/%2e%2e/secret", "/dukcapil/%2E%2e/%2e%2e/secret",
    "/dukcapil/a/..%2f..%2fsecret", "/dukcapil/%252e%252e/secret", "/dukcapil/a/..%5csecret",
    "/dukcapil/./secret", "/dukcapil/echo/..",
])
async def test_dot_segments_never_leave_the_base(site: Site, target: str) -> None:
    status, _, _ = await site.raw("GET", target)
    assert status in (400, 404)  # 404: the server itself folded the dots out of the slug
    assert all(t.startswith("/base/") for _, t in site.origin.seen), site.origin.seen
    assert not any("secret" in t for _, t in site.origin.seen)


async def test_encoded_query_and_fragment_stay_in_the_path(site: Site) -> None:
    status, text, _ = await site.raw("GET", "/dukcapil/echo/a%3Fadmin=1%23x?q=a%26b")
    assert status == 200
    assert text == "/base/echo/a%3Fadmin=1%23x?q=a%26b", text  # what the origin received
    # positive control: a plain path and query pass unchanged
    assert (await site.raw("GET", "/dukcapil/echo/plain?a=b"))[1] == "/base/echo/plain?a=b"


@pytest.mark.parametrize(("path", "query", "expected"), [
    ("/dukcapil/a/b", "", ("a/b", "")),
    ("/dukcapil/x%3Fy", "k=v", ("x%3Fy", "k=v")),
    ("/dukcapil/dir/file.tar.gz", "", ("dir/file.tar.gz", "")),
    ("/dukcapil/sp ace", "", ("sp%20ace", "")),
    ("/dukcapil/..", "", None),
    ("/dukcapil/a/%2e", "", None),
    ("/dukcapil/%25%32%65%25%32%65/x", "", None),
])
def test_upstream_target(path: str, query: str, expected: tuple[str, str] | None) -> None:
    assert upstream_target(path, query) == expected


# -- error answers and the stored copy ---------------------------------------------------


async def test_error_answers_never_replace_a_good_copy(site: Site) -> None:
    assert (await site.raw("GET", "/dukcapil/flaky"))[1] == "good copy"
    site.origin.status = 507  # an error not counted as "unreachable": passed on, not stored
    status, text, _ = await site.raw("GET", "/dukcapil/flaky")
    assert (status, text) == (507, "error 507")
    site.origin.status = 503  # now unreachable: the stored copy stands in, still the good one
    status, text, headers = await site.raw("GET", "/dukcapil/flaky")
    assert (status, text) == (200, "good copy")
    assert "stale-if-error" in headers["Cache-Status"]


# -- errors inside the site are pages ---------------------------------------------------------


async def test_a_store_error_in_the_catalog_is_a_clear_page_logged_once(
        site: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(key: str) -> float | None:
        raise StoreError("database disk image is malformed")

    assert (await site.raw("GET", "/"))[0] == 200  # positive control first
    monkeypatch.setattr(site.services.store, "newest_response", broken)
    caplog.set_level(logging.ERROR)
    status, text, headers = await site.raw("GET", "/", headers={"Accept-Language": "id"})
    assert status == 500 and headers["Content-Type"].startswith("text/html")
    assert "gangguan" in text and "Traceback" not in text
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1 and "StoreError" in (failures[0].exc_text or "")


async def test_a_full_disk_while_queueing_is_a_clear_page(
        site: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    site.services.uplink_lost()  # forms are queued straight away
    monkeypatch.setattr(site.services.outbox, "enqueue", full)
    caplog.set_level(logging.ERROR)
    status, text, _ = await site.raw("POST", "/dukcapil/form", data={"nama": "Ani"})
    assert status == 500 and "gangguan" in text
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    monkeypatch.undo()
    status, _, headers = await site.raw("POST", "/dukcapil/form", data={"nama": "Ani"},
                                        allow_redirects=False)
    assert status == 303 and headers["Location"].startswith("/kiriman?ref=")  # positive control


# -- range requests for what is not stored ---------------------------------------------------


async def test_a_range_miss_stores_the_whole_object_once(site: Site) -> None:
    url = site.client.make_url("/dukcapil/big")
    async with site.client.session.get(url, headers={"Range": "bytes=1000-1999"}) as resp:
        body = await resp.read()
        assert resp.status == 206 and resp.headers["Content-Range"] == f"bytes 1000-1999/{len(BIG)}"
        assert body == BIG[1000:2000]
    # The fill may still be committing: the next request waits for it (collapsing).
    async with site.client.session.get(url, headers={"Range": "bytes=0-"}) as resp:
        assert resp.status == 206 and await resp.read() == BIG
        assert resp.headers["Cache-Status"] == "desanet; hit"
    async with site.client.session.get(url) as resp:
        assert resp.status == 200 and await resp.read() == BIG
    async with site.client.session.get(url, headers={"Range": f"bytes={len(BIG)}-"}) as resp:
        assert resp.status == 416
    assert site.origin.count("GET", "/base/big") == 1


async def test_a_range_bytes_0_miss_is_a_206_of_everything(site: Site) -> None:
    async with site.client.session.get(site.client.make_url("/dukcapil/big"),
                                       headers={"Range": "bytes=0-"}) as resp:
        assert resp.status == 206 and await resp.read() == BIG
        assert resp.headers["Cache-Status"] == "desanet; fwd=miss; stored"
    assert site.origin.count("GET", "/base/big") == 1


async def _wait_for(check: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- misses in flight per client ---------------------------------------------------------------


async def test_a_client_with_too_many_misses_in_flight_gets_429(site: Site) -> None:
    """Two in flight (max_misses_per_client=2 here), one waiting (max_waiting_per_client=1):
    the next one is a 429 and never reaches the origin."""
    site.holder["cfg"] = make_cfg(site.upstream, max_misses_per_client=2, max_waiting_per_client=1)
    assert (await site.raw("GET", "/dukcapil/stored"))[0] == 200  # for the hit below
    held = [asyncio.create_task(site.raw("GET", f"/dukcapil/hold{i}")) for i in range(2)]
    await _wait_for(lambda: site.origin.holding == 2)
    waiting = asyncio.create_task(site.raw("GET", "/dukcapil/hold-third"))
    await _wait_for(lambda: site.services.proxy.slots.waiting() == 1)
    assert site.origin.count("GET", "/base/hold-third") == 0  # it waits, not yet sent
    status, text, headers = await site.raw("GET", "/dukcapil/hold-fourth")
    assert status == 429 and headers["Retry-After"] and "Tunggu" in text
    assert site.origin.count("GET", "/base/hold-fourth") == 0
    status, _, _ = await site.raw("POST", "/dukcapil/form", data={"a": "1"})
    assert status == 429  # a form to the upstream is a fetch too
    # positive controls: a stored page is still served; once the misses end, the waiting
    # one goes on, and more may start
    assert (await site.raw("GET", "/dukcapil/stored"))[0] == 200
    site.origin.release.set()
    assert [r[0] for r in await asyncio.gather(*held, waiting)] == [200, 200, 200]
    await _wait_for(lambda: site.services.proxy.fetches_in_flight() == 0)  # stored, slots free
    assert (await site.raw("GET", "/dukcapil/hold-fourth"))[0] == 200


async def test_misses_beyond_the_slots_wait_their_turn_in_order(site: Site) -> None:
    """A phone's page with more uncached images than slots: no 429, every image arrives,
    and they reach the origin in the order they were asked for."""
    held = [asyncio.create_task(site.raw("GET", f"/dukcapil/hold{i}")) for i in range(2)]
    await _wait_for(lambda: site.origin.holding == 2)
    later = []
    for i in range(6):
        later.append(asyncio.create_task(site.raw("GET", f"/dukcapil/img{i}")))
        await _wait_for(lambda i=i: site.services.proxy.slots.waiting() == i + 1)
    site.origin.release.set()
    assert [r[0] for r in await asyncio.gather(*held, *later)] == [200] * 8
    images = [target for _, target in site.origin.seen if target.startswith("/base/img")]
    assert images == [f"/base/img{i}" for i in range(6)]
    await _wait_for(lambda: site.services.proxy.fetches_in_flight() == 0)  # stored, slots free
    assert site.services.proxy.slots.waiting() == 0


class _Open:
    @staticmethod
    def is_closing() -> bool:
        return False


class _Phone:
    remote = "10.42.0.9"
    method = "GET"
    transport = _Open()  # still connected (cancelled by the test, as aiohttp's test server does)


async def test_a_waiter_that_goes_away_gives_up_its_place() -> None:
    proxy = CachingProxy(None, None, 1.0)  # type: ignore[arg-type]  # only the slots are used
    proxy.slots.limit, proxy.slots.waiting_limit = 1, 2
    phone: Any = _Phone()
    order: list[str] = []

    async def fetch(name: str, gate: asyncio.Event) -> None:
        async with proxy.fetch_slot(phone):
            order.append(name)
            await gate.wait()

    gate = asyncio.Event()
    first = asyncio.create_task(fetch("first", gate))
    await _wait_for(lambda: order == ["first"])
    gone = asyncio.create_task(fetch("gone", gate))
    kept = asyncio.create_task(fetch("kept", gate))
    await _wait_for(lambda: proxy.slots.waiting() == 2)
    with pytest.raises(ClientBusy):  # two waiting: the third is refused
        async with proxy.fetch_slot(phone):
            pass
    gone.cancel()
    await _wait_for(lambda: proxy.slots.waiting() == 1)
    gate.set()
    await asyncio.gather(first, kept)
    assert gone.cancelled() and order == ["first", "kept"]
    assert proxy.fetches_in_flight() == 0 and proxy.slots.waiting() == 0


# -- a pooled connection broken by a slow reader -------------------------------------------------


async def test_an_immediate_read_timeout_is_retried_on_a_new_connection(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp can re-arm its read timer on a connection it already pooled (after a body
    read slower than it arrived); the next request on it fails at once. That must not
    become a 504 nor mark the service offline."""
    pooled = site.services.proxy.session()
    real = pooled.request
    calls = []

    async def broken_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise aiohttp.SocketTimeoutError("Timeout on reading data from socket")
        return await real(*args, **kwargs)

    monkeypatch.setattr(pooled, "request", broken_once)
    status, text, _ = await site.raw("GET", "/dukcapil/after-slow")
    assert (status, text) == (200, "page /after-slow")
    assert site.services.health_states()["dukcapil"] == "online"
    assert site.origin.count("GET", "/base/after-slow") == 1


async def test_a_full_disk_while_caching_still_serves_the_answer(
        site: Site, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    class FullDisk:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            pass

    store = site.services.store
    real_begin = store.begin

    def begin_on_full_disk(key: str, meta: Any) -> Any:
        writer = real_begin(key, meta)
        writer._file.close()  # type: ignore[union-attr]
        writer._file = FullDisk()  # type: ignore[assignment]
        return writer

    monkeypatch.setattr(store, "begin", begin_on_full_disk)
    caplog.set_level(logging.WARNING)
    url = site.client.make_url("/dukcapil/big")
    async with site.client.session.get(url) as resp:
        assert resp.status == 200 and await resp.read() == BIG
    # the handler gives up the body after the villager has it all
    await _wait_for(lambda: any("not stored" in r.getMessage() for r in caplog.records))
    assert [r.levelname for r in caplog.records if "not stored" in r.getMessage()] == ["WARNING"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    monkeypatch.undo()  # positive control: with room on the disk it is stored
    async with site.client.session.get(url) as resp:
        assert resp.status == 200 and await resp.read() == BIG
        assert resp.headers["Cache-Status"] == "desanet; fwd=miss; stored"
    assert site.origin.count("GET", "/base/big") == 2


async def test_nobody_reading_and_nothing_to_store_stops_the_download(site: Site) -> None:
    """An object too large to store, and the villager hung up: the gateway stops
    downloading it (before, it read the whole object from the uplink for nobody)."""
    site.services.store.max_object_bytes = 1 << 20
    front = web.Application()
    front.router.add_route("*", "/{tail:.*}", site.services.handle)
    runner = web.AppRunner(front)  # as the daemon's: handlers run on after a hang-up
    await runner.setup()
    try:
        tcp = web.TCPSite(runner, "127.0.0.1", 0)
        await tcp.start()
        port = runner.addresses[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /dukcapil/huge HTTP/1.1\r\nHost: layanan.desa\r\n\r\n")
        await writer.drain()
        head = await reader.read(4096)
        assert head.startswith(b"HTTP/1.1 200")  # positive control: the download had started
        writer.transport.abort()
        await asyncio.wait_for(site.origin.huge_done.wait(), 60)
    finally:
        await runner.cleanup()
    assert site.origin.huge_sent < 256 << 20, f"{site.origin.huge_sent >> 20} MiB for nobody"
