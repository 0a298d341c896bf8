"""Bringing one stored URL up to date with nobody waiting: background refresh
(stale-while-revalidate, a kept form page a POST invalidated) and the nightly
prefetch, which caps its download rate so it never crowds out villagers."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import aiohttp

from gateway.cache import rules
from gateway.cache.rules import StoredMeta, header_dict
from gateway.config.schema import GovService
from gateway.errors import UpstreamDown

if TYPE_CHECKING:
    from gateway.cache.metrics import Metrics
    from gateway.cache.proxy import CachingProxy


async def refresh(proxy: CachingProxy, service: GovService, url: str,
                  req_h: dict[str, str] | None = None, rate_bps: int | None = None,
                  max_bytes: int | None = None) -> str:
    """Bring one URL's stored copy up to date without a villager waiting.

    Returns "fresh", "not-modified", "stored", "not-storable", "too-large" or "error".
    ``rate_bps`` caps the download speed (prefetch must not crowd out villagers);
    a body over ``max_bytes`` is dropped ("too-large").
    """
    key = f"GET {url}"
    req_h = req_h or {}
    if key in proxy._inflight:
        await asyncio.shield(proxy._inflight[key])
        return "fresh"
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    proxy._inflight[key] = done
    try:
        entry = proxy._pick(key, req_h)
        # Nobody waits for this answer: the villager's own preconditions stay here.
        headers = proxy.forward_headers(req_h, conditionals=False, ranges=False)
        if entry is not None:
            headers.update(rules.conditional_request_headers(entry.meta))
        request_time = time.time()
        try:
            upstream = await proxy.open_upstream(service, "GET", url, headers)
        except UpstreamDown:
            return "error"
        async with upstream:
            if upstream.status in rules.ERROR_STATUSES:
                return "error"
            if upstream.status == 304 and entry is not None:
                await proxy._freshen(entry, upstream, request_time)
                return "not-modified"
            resp_h = header_dict(upstream.headers)
            if not rules.is_storable("GET", upstream.status, req_h, resp_h,
                                     replacing=entry.meta if entry else None):
                return "not-storable"
            meta = StoredMeta.capture(upstream.status, req_h, rules.storable_headers(resp_h),
                                      request_time, time.time())
            if max_bytes is not None and (upstream.content_length or 0) > max_bytes:
                return "too-large"
            writer = proxy.store.begin(key, meta)
            try:
                await read_into(upstream, writer, rate_bps, proxy.metrics, max_bytes)
            except _TooLarge:
                writer.abort()
                return "too-large"
            except (aiohttp.ClientError, OSError, TimeoutError):
                writer.abort()
                return "error"
            except BaseException:
                writer.abort()
                raise
            return "stored" if await proxy._commit(writer) else "error"
    finally:
        # Another fill may have taken the mark meanwhile (a miss that waited for a slot):
        # its mark is left to it, and this fill's waiters are woken in any case.
        proxy._release_waiters(key, done)


class _TooLarge(Exception):
    pass


async def read_into(upstream: aiohttp.ClientResponse, writer: Any, rate_bps: int | None,
                     metrics: Metrics, max_bytes: int | None = None) -> None:
    started = time.monotonic()
    received = 0
    async for chunk in upstream.content.iter_chunked(64 * 1024):
        writer.write(chunk)
        received += len(chunk)
        if max_bytes is not None and received > max_bytes:
            raise _TooLarge
        metrics.bytes_from_upstream += len(chunk)
        if rate_bps:
            # Sleep until the average rate is back under the cap.
            ahead = received * 8 / rate_bps - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
    if upstream.content_length is not None and received != upstream.content_length:
        raise aiohttp.ClientPayloadError("upstream body shorter than its Content-Length")
