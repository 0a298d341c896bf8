"""Red-team review of Step 7 (issue #10): what one villager on the LAN can make the cache do
to another villager's answers. Each case beside its positive control."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from gateway.cache import forward
from gateway.cache.slots import ClientBusy, ClientGone, FetchSlots
from gateway.cache.upstream import MAX_INTERIM
from tests.unit.cachesite import Answer, cache_site
from tests.unit.test_cache_upstream import EARLY_HINTS, answer, raw_exchange, raw_site

VARIED = {"Cache-Control": "max-age=3600", "Vary": "Accept-Language"}


async def by_language(request: web.Request) -> web.Response:
    lang = request.headers.get("Accept-Language", "en")
    return web.Response(text=f"page in {lang}", headers=VARIED)


@pytest.mark.parametrize(("first", "hidden"), [
    # A villager names the Vary'd field in Connection: the origin never sees it, so its
    # answer (the default language) must not be stored as the "id" variant.
    ({"Accept-Language": "id", "Connection": "accept-language"}, True),
    ({"Accept-Language": "id"}, False),  # control: the field reached the origin
])
async def test_a_field_named_by_connection_selects_no_variant(
        tmp_path: Path, first: dict[str, str], hidden: bool) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script("/p", by_language)
        _, body_a = await site.get("/p", headers=first)
        _, body_b = await site.get("/p", headers={"Accept-Language": "id"})
        assert body_b == b"page in id"
        assert (body_a == b"page in en") is hidden
        assert len(site.origin.requests_for("/p")) == (2 if hidden else 1)


@pytest.mark.parametrize(("req_h", "kept"), [
    ({"connection": "accept-language", "accept-language": "id", "accept": "*/*"},
     {"connection": "accept-language", "accept": "*/*"}),
    ({"connection": "keep-alive, Cookie", "cookie": "a=1"}, {"connection": "keep-alive, Cookie"}),
    ({"connection": "keep-alive", "cookie": "a=1"}, {"connection": "keep-alive", "cookie": "a=1"}),
    ({"accept-language": "id"}, {"accept-language": "id"}),
])
def test_end_to_end_drops_only_the_fields_connection_names(
        req_h: dict[str, str], kept: dict[str, str]) -> None:
    assert forward.end_to_end(req_h) == kept


async def _until(check: Callable[[], bool], deadline: float = 5.0) -> None:
    async with asyncio.timeout(deadline):
        while not check():
            await asyncio.sleep(0.01)


async def test_a_refresh_leaves_another_fills_mark_and_wakes_its_own_waiters(
        tmp_path: Path) -> None:
    """A request waiting for a background refresh is answered even when another fill of the
    URL took the in-flight mark meanwhile; that fill's mark stays (its waiters are its own)."""
    async with cache_site(tmp_path) as site:
        proxy = site.services.proxy
        gate = asyncio.Event()

        async def origin(request: web.Request) -> web.Response:
            await gate.wait()
            return web.Response(text="x", headers={"Cache-Control": "max-age=60"})

        site.origin.script("/x", origin)
        service = site.services.services()["svc"]
        key = f"GET {service.upstream}/x"
        refresh = asyncio.create_task(proxy.refresh(service, service.upstream + "/x"))
        await _until(lambda: len(site.origin.requests_for("/x")) == 1)
        waiter = asyncio.create_task(site.get("/x"))
        await _until(lambda: proxy.metrics.collapsed == 1)
        other: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        proxy._inflight[key] = other  # another fill's turn (before the fix: a KeyError, a hang)
        gate.set()
        async with asyncio.timeout(5):
            assert await refresh == "stored"
            resp, body = await waiter
        assert resp.status == 200 and body == b"x"
        assert proxy._inflight.get(key) is other and not other.done()


async def test_a_miss_that_waited_for_its_slot_joins_a_fill_begun_meanwhile(
        tmp_path: Path) -> None:
    """A villager's miss waits for one of its slots; meanwhile a fill of the same URL
    starts (here a background refresh). With its slot the miss waits for that fill and is
    answered from it: one upstream request, not two."""
    async with cache_site(tmp_path) as site:
        proxy = site.services.proxy
        gate = asyncio.Event()

        async def origin(request: web.Request) -> web.Response:
            await gate.wait()
            return web.Response(text="x", headers={"Cache-Control": "max-age=60"})

        site.origin.script("/x", origin)
        service = site.services.services()["svc"]
        slots = contextlib.AsyncExitStack()
        for _ in range(proxy.slots.limit):  # the villager's slots are all busy
            await slots.enter_async_context(proxy.slots.hold("127.0.0.1"))
        miss = asyncio.create_task(site.get("/x"))
        await _until(lambda: proxy.slots.waiting() == 1)
        refresh = asyncio.create_task(proxy.refresh(service, service.upstream + "/x"))
        await _until(lambda: len(site.origin.requests_for("/x")) == 1)
        await slots.aclose()
        await _until(lambda: proxy.metrics.collapsed == 1 or len(site.origin.seen) == 2)
        gate.set()
        async with asyncio.timeout(5):
            resp, body = await miss
            assert await refresh == "stored"
        assert resp.status == 200 and body == b"x"
        assert len(site.origin.requests_for("/x")) == 1


# (how the second request is answered, its method, the stored answer's Location) -> the
# Location the villager gets: the origin's own URLs always come back into layanan.desa, as
# on the first (miss) answer; another site's URL is left as it is.
@pytest.mark.parametrize(("second", "method", "location", "expected"), [
    ("hit", "GET", "{up}/b", "/svc/b"),
    ("hit", "HEAD", "{up}/b", "/svc/b"),
    ("hit", "GET", "/b", "/b"),  # relative: the villager's browser resolves it under /svc/
    ("hit", "GET", "http://other.example/b", "http://other.example/b"),
    ("revalidated", "GET", "{up}/b", "/svc/b"),
    ("stale-if-error", "GET", "{up}/b", "/svc/b"),
])
async def test_a_stored_redirect_points_into_layanan_desa(
        tmp_path: Path, second: str, method: str, location: str, expected: str) -> None:
    async with cache_site(tmp_path) as site:
        up = site.services.services()["svc"].upstream
        cc = {"hit": "max-age=60", "revalidated": "max-age=0",
              "stale-if-error": "max-age=0, stale-if-error=60"}[second]
        stored = Answer(301, {"Location": location.format(up=up), "Cache-Control": cc,
                              "ETag": '"r1"'}, b"moved")
        then = {"hit": stored, "revalidated": Answer(304, {"ETag": '"r1"'}, b""),
                "stale-if-error": Answer(503, {}, b"down")}[second]
        site.origin.script("/a", stored, then)
        first, _ = await site.get("/a")
        assert first.headers["Location"] == expected
        resp, _ = await site.request(method, "/a")
        assert resp.status == 301
        assert second in resp.headers["Cache-Status"] or (
            second == "revalidated" and "fwd-status=304" in resp.headers["Cache-Status"])
        assert resp.headers["Location"] == expected


@pytest.mark.parametrize("cc", ["no-store", "max-age=60"])
async def test_response_fields_the_origin_names_in_connection_stay_on_its_hop(
        tmp_path: Path, cc: str) -> None:
    """RFC 9110 §7.6.1: a proxy drops the fields the upstream's Connection names, passed
    through (no-store) as well as stored; the other fields pass (control)."""
    async with cache_site(tmp_path) as site:
        site.origin.script("/a", Answer(200, {"Connection": "X-Hop", "X-Hop": "secret",
                                              "X-Kept": "1", "Cache-Control": cc}))
        for _ in range(2):
            resp, _ = await site.get("/a")
            assert "X-Hop" not in resp.headers and resp.headers["X-Kept"] == "1"


async def personal(request: web.Request) -> web.Response:
    who = request.cookies.get("sid", "nobody")
    return web.Response(text=f"hello {who}", headers=_PERSONAL_HEADERS[request.path])

_PERSONAL_HEADERS = {
    "/me": {"Cache-Control": "max-age=300"},
    "/heuristic": {"Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"},
    "/public": {"Cache-Control": "public, max-age=300"},
    "/shared": {"Cache-Control": "s-maxage=300"},
    "/varied": {"Cache-Control": "max-age=300", "Vary": "Cookie"},
}


# (path, whether another villager may get the answer made for villager A's cookie)
@pytest.mark.parametrize(("path", "shared"), [
    ("/me", False),  # max-age is for A's browser; the answer may be A's own page
    ("/heuristic", False),
    ("/public", True),  # the origin says any villager may have it
    ("/shared", True),
    ("/varied", False),  # stored per cookie: B (no cookie) gets their own answer
])
async def test_an_answer_to_a_villagers_cookie_reaches_others_only_when_marked_shared(
        tmp_path: Path, path: str, shared: bool) -> None:
    async with cache_site(tmp_path) as site:
        site.origin.script(path, personal)
        _, mine = await site.get(path, headers={"Cookie": "sid=A"})
        _, theirs = await site.get(path)
        assert mine == b"hello A"
        assert theirs == (b"hello A" if shared else b"hello nobody")


async def test_a_villager_who_hung_up_while_waiting_for_a_slot_costs_no_download(
        tmp_path: Path) -> None:
    """The gateway's HTTP server does not cancel a handler when its client goes (aiohttp's
    default), so a miss that waited for a slot must itself notice that nobody waits for it
    any more: its turn passes on and nothing is fetched for it. The live request queued
    behind it is answered (control)."""
    async with cache_site(tmp_path) as site:
        runner = site.client.server.runner
        assert runner is not None and runner.server is not None
        runner.server.handler_cancellation = False  # as the daemon's runner (the test one cancels)
        proxy = site.services.proxy
        site.origin.script("/gone", Answer(200, {"Cache-Control": "max-age=60"}, b"gone"))
        site.origin.script("/live", Answer(200, {"Cache-Control": "max-age=60"}, b"live"))
        slots = contextlib.AsyncExitStack()
        for _ in range(proxy.slots.limit):
            await slots.enter_async_context(proxy.slots.hold("127.0.0.1"))
        _, writer = await asyncio.open_connection("127.0.0.1", site.client.port)
        writer.write(b"GET /svc/gone HTTP/1.1\r\nHost: layanan.desa\r\n\r\n")
        await writer.drain()
        await _until(lambda: proxy.slots.waiting() == 1)
        writer.close()
        await writer.wait_closed()
        live = asyncio.create_task(site.get("/live"))
        await _until(lambda: proxy.slots.waiting() == 2)
        await slots.aclose()
        async with asyncio.timeout(5):
            resp, body = await live
        assert resp.status == 200 and body == b"live"
        assert site.origin.requests_for("/gone") == []
        await _until(lambda: proxy.slots.waiting() == 0 and proxy.fetches_in_flight() == 0)


async def test_waiters_whose_villager_left_make_room_in_a_full_queue() -> None:
    """At the waiting limit, waiters whose villager is gone are dropped (ClientGone) before
    a new request is refused; a live waiter is kept (control) and refusal still comes when
    all are live."""
    slots = FetchSlots(limit=1, waiting_limit=2)
    left = {"a": False, "b": False}
    async with slots.hold("phone"):
        a = asyncio.create_task(_wait_turn(slots, lambda: left["a"]))
        b = asyncio.create_task(_wait_turn(slots, lambda: left["b"]))
        await _until(lambda: slots.waiting() == 2)
        with pytest.raises(ClientBusy):  # both live: the limit holds
            await _wait_turn(slots, lambda: False)
        left["a"] = True
        c = asyncio.create_task(_wait_turn(slots, lambda: False))
        await _until(lambda: a.done() and slots.waiting() == 2)
        assert isinstance(a.exception(), ClientGone)
    async with asyncio.timeout(5):
        assert await b == "served" and await c == "served"
    assert slots.in_flight() == 0 and slots.waiting() == 0


async def _wait_turn(slots: FetchSlots, gone: Callable[[], bool]) -> str:
    async with slots.hold("phone", gone):
        return "served"


@pytest.mark.parametrize(("hints", "forwarded"), [(2, 2), (MAX_INTERIM, MAX_INTERIM),
                                                  (500, MAX_INTERIM)])
async def test_a_flood_of_interim_answers_is_not_all_passed_on(
        tmp_path: Path, hints: int, forwarded: int) -> None:
    """1xx answers are forwarded (control), but an origin that sends hundreds cannot make
    the gateway queue all of them for a villager's phone: the first few pass, the final
    answer still arrives."""
    async with raw_site(tmp_path) as (origin, client, _):
        origin.answers["/a"] = [EARLY_HINTS * hints, answer(b"hello")]
        got = await raw_exchange(client, b"GET /svc/a HTTP/1.1\r\nHost: layanan.desa\r\n"
                                         b"Connection: close\r\n\r\n")
        assert got.count(b"HTTP/1.1 103 ") == forwarded
        assert got.endswith(b"\r\n\r\nhello")
