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
from tests.unit.cachesite import cache_site

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


@pytest.mark.parametrize("refresh_first", [True, False])
async def test_a_fill_started_while_a_miss_waited_for_its_slot_never_strands_its_waiters(
        tmp_path: Path, refresh_first: bool) -> None:
    """A villager's miss waits for one of its slots; meanwhile a background refresh of the
    same URL starts and a second request waits for that refresh. The first miss then gets
    its slot and fetches too. Whichever fill ends first, the second request is answered
    (the refresh must not drop the miss's in-flight mark and then fail to wake its own
    waiters) and no in-flight mark is left behind."""
    async with cache_site(tmp_path) as site:
        proxy = site.services.proxy
        refresh_gate, miss_gate = asyncio.Event(), asyncio.Event()
        calls = 0

        async def origin(request: web.Request) -> web.Response:
            nonlocal calls
            calls += 1
            await (refresh_gate if calls == 1 else miss_gate).wait()
            return web.Response(text="x", headers={"Cache-Control": "max-age=60"})

        site.origin.script("/x", origin)
        service = site.services.services()["svc"]
        slots = contextlib.AsyncExitStack()
        for _ in range(proxy.slots.limit):  # the villager's slots are all busy
            await slots.enter_async_context(proxy.slots.hold("127.0.0.1"))
        miss = asyncio.create_task(site.get("/x"))
        await _until(lambda: proxy.slots.waiting() == 1)
        refresh = asyncio.create_task(proxy.refresh(service, service.upstream + "/x"))
        await _until(lambda: calls == 1)
        waiter = asyncio.create_task(site.get("/x"))
        await _until(lambda: proxy.metrics.collapsed == 1)
        await slots.aclose()
        await _until(lambda: calls == 2)  # the miss fetches on its own
        first, second = (refresh_gate, miss_gate) if refresh_first else (miss_gate, refresh_gate)
        first.set()
        await _until(lambda: refresh.done() if refresh_first else miss.done())
        second.set()
        async with asyncio.timeout(5):
            (resp, body), _, outcome = await asyncio.gather(waiter, miss, refresh)
        assert resp.status == 200 and body == b"x"
        assert outcome in ("stored", "fresh")
        await _until(lambda: not proxy._inflight)  # the miss's handler ends after its answer
