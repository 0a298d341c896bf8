"""Range requests answered from, and 206 answers stored into, partial entries.

Theory of operation
-------------------
The proxy (gateway/cache/proxy.py) fetches a whole object for a range request
when nothing is stored and the object fits the store; it calls in here for the
rest (RFC 9111 §3.3, §3.4; RFC 9110 §14):

* ``from_partial``: a GET with a single byte ``Range``, no complete copy stored,
  and a partial entry for the URL.  If the stored ranges hold the whole range
  (and a client ``If-Range`` names the stored representation), the rules decide
  as for any stored answer: fresh (or within stale-while-revalidate) -> a 206 from
  disk.  Otherwise the range is asked upstream with ``If-Range`` set to the
  stored strong validator, so a changed object comes back whole (200) instead of
  as a part of another representation; the 206 that comes back is combined
  into the entry.  When the stored ranges hold the range but it is stale, the
  request also carries the stored validators (If-None-Match / If-Modified-Since):
  a 304 refreshes the part's headers and the range is served from disk.  If the
  upstream fails, a stored range is served stale when the rules allow
  (``may_serve_stale``), as for complete copies.
* ``stream_part``: any 206 the upstream sends for a GET (a range of an object
  too large to store whole, or the ranged request above) is streamed to the
  villager and kept with ``CacheStore.begin_partial`` when a 200 with the same
  headers could be stored.  Parts that share a strong validator are combined;
  a part with another validator (or none) replaces the stored one, so bytes of
  two representations are never served together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.cache import rules
from gateway.cache.ranges import covers, if_range_matches, parse_content_range, strong_validator
from gateway.cache.respond import (
    CLIENT_GONE,
    cache_status,
    send_file_range,
    stored_headers_for_client,
    stream_upstream,
)
from gateway.cache.rules import Kind, StoredMeta, header_dict, parse_range
from gateway.cache.shapemark import mark_metered
from gateway.cache.store import Entry
from gateway.config.schema import GovService
from gateway.errors import StoreError, UpstreamDown

if TYPE_CHECKING:
    from gateway.cache.proxy import CachingProxy

log = logging.getLogger("desanet.cache")
# What a 304 to the villager carries (RFC 9110 §15.4.5), as for complete copies.
_NOT_MODIFIED_FIELDS = ("cache-control", "content-location", "date", "etag", "expires", "vary",
                        "last-modified")


def wants_part(request: web.Request, req_h: dict[str, str]) -> bool:
    return request.method == "GET" and "range" in req_h


async def from_partial(proxy: CachingProxy, request: web.Request, service: GovService, url: str,
                       key: str, req_h: dict[str, str], rewrite: Callable[[str], str]
                       ) -> web.StreamResponse | None:
    """Answer a range request with the help of a stored partial entry; None when there
    is none that applies (the caller goes on as without one)."""
    part = rules.pick_variant(proxy.store.lookup_partial(key), req_h, lambda e: e.meta)
    if part is None or part.partial is None:
        return None
    wanted = parse_range(req_h["range"], part.partial.length)
    if wanted is None:
        return None  # not one byte range: the whole object, as without a part
    now = time.time()
    decision = rules.decide("GET", req_h, part.meta, now, offline_for=service.offline_for)
    matches = if_range_matches(req_h, part.meta.headers)
    held = matches and (wanted == "unsatisfiable" or covers(part.partial.held, *wanted))
    if held and decision.kind in (Kind.FRESH, Kind.STALE_REVALIDATE_IN_BACKGROUND):
        # A part is not refreshed in the background: the next range past its
        # stale-while-revalidate window asks the upstream itself.
        served = await serve_part(proxy, request, part, wanted, now, "hit", "hits", req_h)
        if served is not None:
            return served
        held = False  # its file was unusable (now dropped): the bytes must come again
    if decision.kind is Kind.GATEWAY_TIMEOUT or "only-if-cached" in rules.parse_cache_control(
            req_h.get("cache-control")):
        return web.Response(status=504, text="not in cache (only-if-cached)\n")
    if not matches:
        return None  # the villager's If-Range names another copy: the whole object is due
    headers = proxy.forward_headers(req_h)
    headers["range"] = req_h["range"]
    headers["if-range"] = req_h.get("if-range") or _if_range_for(part.meta) or ""
    if not headers["if-range"]:
        del headers["if-range"]
    if held:
        # Every byte asked for is stored, only stale: a 304 (RFC 9110 §13.2.2 evaluates
        # If-None-Match before Range) refreshes the part without sending the bytes again.
        headers.update(rules.conditional_request_headers(part.meta))
    async with proxy.fetch_slot(request):
        return await _ask_upstream(proxy, request, service, url, key, req_h, rewrite, headers,
                                   part, wanted, decision, held)


async def _ask_upstream(proxy: CachingProxy, request: web.Request, service: GovService, url: str,
                        key: str, req_h: dict[str, str], rewrite: Callable[[str], str],
                        headers: dict[str, str], part: Entry, wanted: tuple[int, int] | str,
                        decision: rules.Decision, held: bool) -> web.StreamResponse:
    request_time = time.time()

    async def stale_on_error() -> web.StreamResponse | None:
        now = time.time()
        if held and decision.kind is Kind.REVALIDATE and rules.may_serve_stale(decision, now):
            return await serve_part(proxy, request, part, wanted, now,
                                    "hit; detail=stale-if-error", "stale_served", req_h)
        return None

    try:
        upstream = await proxy.open_upstream(service, "GET", url, headers, interim=request)
    except UpstreamDown:
        served = await stale_on_error()
        if served is not None:
            return served
        raise
    if upstream.status in rules.ERROR_STATUSES:  # an error answer: the part may stand in too
        served = await stale_on_error()
        if served is not None:
            upstream.release()
            return served
    async with upstream:
        if upstream.status == 304 and held:
            resp_h = header_dict(upstream.headers)
            if rules.freshen_applies(part.meta, resp_h):
                meta = rules.freshen_with_304(part.meta, resp_h, request_time, time.time())
                await asyncio.to_thread(proxy.store.update_meta, part.id, meta)
                fresh = Entry(part.id, part.key, meta, part.size, part.path, part.last_used,
                              part.partial)
                served = await serve_part(proxy, request, fresh, wanted, time.time(),
                                          "hit; fwd=stale; fwd-status=304", "revalidated", req_h)
                if served is not None:
                    return served
            return web.Response(status=502, text="stored part lost; try again\n")
        if upstream.status == 206:
            return await stream_part(proxy, request, upstream, key, req_h, request_time, rewrite)
        if upstream.status == 200:  # the object changed (If-Range failed) or has no ranges
            return await proxy._store_and_stream(request, upstream, key, req_h, request_time, rewrite)
        mark_metered(request)
        proxy.metrics.passthrough += 1
        resp, received = await stream_upstream(request, upstream, None, "fwd=miss", rewrite)
        proxy.metrics.bytes_from_upstream += received
        return resp


def _if_range_for(meta: StoredMeta) -> str | None:
    """The stored strong validator in the form If-Range takes (None: no strong one)."""
    validator = strong_validator(meta.headers)
    if validator is None:
        return None
    return meta.headers["etag"].strip() if validator.startswith("etag ") else meta.headers["last-modified"]


async def serve_part(proxy: CachingProxy, request: web.Request, part: Entry,
                     wanted: tuple[int, int] | str, now: float, detail: str, counter: str,
                     req_h: dict[str, str]) -> web.StreamResponse | None:
    """A 206 (or 416) from a partial entry's held bytes; None when its file is unusable."""
    assert part.partial is not None
    meta = part.meta
    if rules.not_modified_for_request(req_h, meta):  # the villager's own copy is current
        headers = CIMultiDict((k, v) for k, v in meta.headers.items() if k in _NOT_MODIFIED_FIELDS)
        headers["Age"] = rules.age_header(meta, now)
        headers["Cache-Status"] = cache_status(detail)
        return web.Response(status=304, headers=headers)
    headers = stored_headers_for_client(meta, now)
    headers["Cache-Status"] = cache_status(detail)
    headers["Accept-Ranges"] = "bytes"
    if not isinstance(wanted, tuple):
        headers["Content-Range"] = f"bytes */{part.partial.length}"
        proxy.metrics.count(counter)
        return web.Response(status=416, headers=headers)
    body = proxy.store.open_partial(part)
    if body is None:
        return None
    first, last = wanted
    with body:
        proxy.store.touch(part.id, now)
        headers["Content-Range"] = f"bytes {first}-{last}/{part.partial.length}"
        resp = web.StreamResponse(status=206, headers=headers)
        resp.content_length = last - first + 1
        with contextlib.suppress(*CLIENT_GONE):
            await resp.prepare(request)
            await send_file_range(resp, body, first, last)
    proxy.metrics.count(counter)
    proxy.metrics.bytes_from_cache += last - first + 1
    return resp


async def stream_part(proxy: CachingProxy, request: web.Request, upstream: aiohttp.ClientResponse,
                      key: str, req_h: dict[str, str], request_time: float,
                      rewrite: Callable[[str], str], detail: str = "fwd=miss") -> web.StreamResponse:
    """Stream an upstream 206 to the villager, keeping its bytes when they may be stored."""
    mark_metered(request)
    resp_h = header_dict(upstream.headers)
    content_range = parse_content_range(resp_h.get("content-range"))
    writer = None
    # A part may be stored when the same answer as a whole 200 could be.
    if content_range is not None and rules.is_storable("GET", 200, req_h, resp_h):
        first, last, length = content_range
        if upstream.content_length in (None, last - first + 1):
            meta = StoredMeta.capture(206, req_h, rules.storable_headers(resp_h),
                                      request_time, time.time())
            try:
                writer = proxy.store.begin_partial(key, meta, first, last, length)
            except StoreError as exc:
                log.warning("cache: %s part not stored: %s", key, exc)
    proxy.metrics.count("misses")
    try:
        resp, received = await stream_upstream(request, upstream, _as_writer(writer),
                                               f"{detail}; stored" if writer else detail, rewrite)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    proxy.metrics.bytes_from_upstream += received
    if writer is not None:
        try:
            await asyncio.to_thread(writer.commit)
        except (OSError, StoreError) as exc:
            log.warning("cache: %s part not stored: %s", key, exc)
    return resp


def _as_writer(writer: Any) -> Any:
    """stream_upstream tees into anything with ``write`` and ``storing``."""
    return writer
