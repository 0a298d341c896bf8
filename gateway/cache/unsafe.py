"""The origin's answer to a request other than GET/HEAD (a form, OPTIONS, an extension
method such as M-SEARCH), passed through.

Whatever the origin answered (a 5xx too) goes to the villager as it came; on the way
the store learns from it:

* a non-error answer invalidates the target URI and the same-service URIs in its
  ``Location`` and ``Content-Location`` (RFC 9111 §4.4, gateway/cache/forward.py);
  a kept (prefetched) page among them is fetched again in the background;
* a POST answer with ``Content-Location`` equal to the target URI and explicit
  freshness is stored as that URI's GET answer (RFC 9110 §9.3.3, RFC 9111 §4).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
from aiohttp import web

from gateway.cache import forward, rules
from gateway.cache.proxy import CachingProxy
from gateway.cache.respond import stream_upstream
from gateway.cache.rules import StoredMeta, header_dict
from gateway.config.schema import GovService


async def pass_answer(proxy: CachingProxy, request: web.Request, service: GovService, url: str,
                      req_h: dict[str, str], upstream: aiohttp.ClientResponse,
                      request_time: float, rewrite: Callable[[str], str]) -> web.StreamResponse:
    """Stream ``upstream`` (the answer to ``request``, sent to ``url``) to the villager."""
    resp_h = header_dict(upstream.headers)
    if rules.invalidates(request.method, upstream.status):
        keys = forward.invalidated_keys(service.upstream, url, resp_h)
        pins = await asyncio.to_thread(proxy.store.pins)
        for dropped in keys:
            await asyncio.to_thread(proxy.store.delete_key, dropped)
            if dropped in pins:
                proxy.refresh_later(service, dropped.removeprefix("GET "))  # a kept form page
    writer = None
    key: str | None = None
    if request.method == "POST":
        key = forward.post_answer_key(service.upstream, url, upstream.status, resp_h)
    if key is not None and rules.is_storable("GET", upstream.status, req_h, resp_h):
        meta = StoredMeta.capture(upstream.status, req_h, rules.storable_headers(resp_h),
                                  request_time, time.time())
        writer = proxy.store.begin(key, meta)
    detail = "fwd=bypass; stored" if writer is not None else "fwd=bypass"
    try:
        resp, received = await stream_upstream(request, upstream, writer, detail, rewrite)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    proxy.metrics.passthrough += 1
    proxy.metrics.bytes_from_upstream += received
    if writer is not None:
        if upstream.content_length in (None, received):
            await proxy.commit(writer)
        else:
            writer.abort()
    return resp
