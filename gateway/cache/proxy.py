"""The caching reverse proxy in front of the government services.

Theory of operation
-------------------
``http://layanan.desa/<slug>/<path>`` maps to ``<upstream of slug>/<path>``.
For GET and HEAD the stored copy (if any) and the request go through
:func:`gateway.cache.rules.decide`:

* FRESH                    -> serve from disk.
* STALE_REVALIDATE_...     -> serve from disk now, refresh in the background.
* REVALIDATE / MISS        -> ask the upstream (conditionally when a copy is
                              stored). A 304 freshens the stored copy; a new
                              storable answer is streamed to the villager and
                              into the store at the same time. A refused or
                              timed-out connection or a 500/502/503/504 counts
                              as an error: the stored copy is then served when
                              the rules and the service's ``offline_for`` allow
                              it, and is never evicted by a failed revalidation.
                              Without a usable copy the villager gets the
                              origin's own error answer; only when no answer
                              arrived at all is there a page of ours (UpstreamDown).

Concurrent requests for the same URL wait for the first one (collapsing) and
then re-decide, normally finding a fresh copy: one upstream request, not N.
Bodies are streamed in 256 KiB pieces in both directions, never held whole,
except HTML pages up to 2 MiB that get an edit (gateway/cache/htmledit.py):

* a stored copy served because the upstream failed on this request, or while
  the service is known to be offline (its last request got no answer; a
  background HEAD then checks whether it is back), gets the offline banner;
* for a service with ``queue_posts`` every page gets a one-time token in its
  POST forms (gateway/cache/forms.py), on hits and on misses alike.

The store always keeps the upstream's bytes; edits are made per answer.

Answers that carry upstream bytes (misses, pass-through) are shaped in the
villager's own class (gateway/cache/shapemark.py), and a villager may have at
most ``max_misses_per_client`` of them in flight; more wait for a slot, up to
``max_waiting_per_client``, beyond that :class:`ClientBusy` (429). A range
request for something not stored fetches the whole object into the store once
and sends the villager its range from the stream (an object too large to store
is passed through with its range). 206 answers are kept as parts and ranges are
served from them (gateway/cache/rangeproxy.py); a HEAD or range request that
arrives during a fill of its URL waits for it, as other requests do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from gateway import timefmt
from gateway.cache import forms, forward, rangeproxy, rules
from gateway.cache.health import ServiceHealth
from gateway.cache.htmledit import Edit, edit_page, is_html
from gateway.cache.metrics import Metrics, serving
from gateway.cache.ranges import if_range_matches
from gateway.cache.refresh import refresh as refresh_url
from gateway.cache.respond import (
    edited_upstream_response,
    read_small_page,
    serve_entry,
    stream_upstream,
)
from gateway.cache.rules import Decision, Kind, StoredMeta, header_dict, parse_range
from gateway.cache.shapemark import mark_metered
from gateway.cache.slots import FetchSlots, disconnected
from gateway.cache.store import BodyWriter, CacheStore, Entry
from gateway.cache.upstream import InterimResponse, interim_to
from gateway.cache.upstream import connector as upstream_connector
from gateway.config.schema import GovService
from gateway.errors import StoreError, UpstreamDown

log = logging.getLogger("desanet.cache")


# What aiohttp raises when no answer arrived: the connection failed, timed out or was
# cut mid-body (for rules.is_error_for_stale, which imports no HTTP library).
UPSTREAM_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
)

STALE_POOL_FAILURE = 0.5  # seconds: a read timeout faster than this is a broken pooled connection


class CachingProxy:
    def __init__(
        self,
        store: CacheStore,
        health: Callable[[str], ServiceHealth],
        timeout: float,
        on_upstream_back: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self._health = health
        self.timeout = timeout
        self.on_upstream_back = on_upstream_back
        self.metrics = Metrics()
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._unsafe_session: aiohttp.ClientSession | None = None
        self.slots = FetchSlots()

    def fetches_in_flight(self) -> int:
        return self.slots.in_flight()

    def fetch_slot(self, request: web.Request) -> contextlib.AbstractAsyncContextManager[None]:
        """One of the villager's upstream-fetch slots for the block (gateway/cache/slots.py);
        a GET or HEAD whose villager hung up while it waited fetches nothing (ClientGone)."""
        gone = disconnected(request) if request.method in ("GET", "HEAD") else None
        return self.slots.hold(request.remote or "?", gone)

    # -- upstream ---------------------------------------------------------------

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=upstream_connector(),
                response_class=InterimResponse,  # 1xx answers reach the villager
                auto_decompress=False,  # stored bytes must match the stored Content-Encoding
                cookie_jar=aiohttp.DummyCookieJar(),  # never mix villagers' cookies
                timeout=aiohttp.ClientTimeout(total=None, connect=min(5.0, self.timeout),
                                              sock_read=self.timeout),
            )
        return self._session

    def unsafe_session(self) -> aiohttp.ClientSession:
        """Session for unsafe methods (form POSTs): a new connection every time.

        A pooled connection that went idle before the uplink dropped still looks
        open: the request disappears into its send buffer and only the read
        timeout ends the wait. The villager would wait ``timeout`` seconds for a
        receipt, and the form would be queued as "may have arrived" although
        nothing left the box. On a new connection a dead uplink shows as a
        connect error at once, and a connect error proves nothing was sent.
        (Squid, too, never sends a non-retriable request on a reused connection.)
        """
        if self._unsafe_session is None or self._unsafe_session.closed:
            self._unsafe_session = aiohttp.ClientSession(
                connector=upstream_connector(force_close=True),
                response_class=InterimResponse,  # 1xx answers reach the villager
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None, connect=min(5.0, self.timeout),
                                              sock_read=self.timeout),
            )
        return self._unsafe_session

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for session in (self._session, self._unsafe_session):
            if session is not None:
                await session.close()

    async def open_upstream(self, service: GovService, method: str, url: str,
                            headers: dict[str, str], data: bytes | None = None,
                            fresh_connection: bool = False,
                            interim: web.Request | None = None) -> aiohttp.ClientResponse:
        """Send one upstream request; raise UpstreamDown when no answer arrived (refused,
        timed out, DNS, cut). Any answer is returned, 5xx included: it is the origin's
        word, and it counts against this URL only, never against the service's health.

        ``fresh_connection`` avoids a pooled connection that may have died silently
        with the uplink (a probe must learn the truth within its connect timeout).
        ``interim``: the villager's request that 1xx answers are forwarded to.
        """
        health = self._health(service.slug)
        safe = method in ("GET", "HEAD") and not fresh_connection
        try:
            session = self.session() if safe else self.unsafe_session()
            started = time.monotonic()
            try:
                with interim_to(interim):
                    resp = await session.request(method, url, headers=headers, data=data,
                                                 allow_redirects=False)
            except aiohttp.ServerTimeoutError:
                if not safe or time.monotonic() - started > STALE_POOL_FAILURE:
                    raise
                # A read timeout at once is a pooled connection aiohttp already broke:
                # after a body read slower than it arrived (a villager's shaped download),
                # aiohttp re-arms the read timer on the connection it has returned to the
                # pool, and the timer fires there. Nothing reached the upstream: ask again
                # on a new connection (GET and HEAD only).
                with interim_to(interim):
                    resp = await self.unsafe_session().request(method, url, headers=headers,
                                                               allow_redirects=False)
            except aiohttp.ServerDisconnectedError:
                if not safe:
                    raise
                # The origin closed the pooled connection (its keep-alive timeout) as the
                # request went out on it, before any answer: a GET or HEAD is asked again
                # on a new connection (RFC 9110 §9.2.2), as a browser would.
                with interim_to(interim):
                    resp = await self.unsafe_session().request(method, url, headers=headers,
                                                               allow_redirects=False)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            health.record_error(time.time(), f"{type(exc).__name__}: {exc}")
            self.metrics.upstream_errors += 1
            raise UpstreamDown(f"{type(exc).__name__}: {exc}") from exc
        if resp.status in rules.ERROR_STATUSES:
            self.metrics.upstream_errors += 1
        if health.record_answer(time.time(), url, resp.status) and self.on_upstream_back is not None:
            self.on_upstream_back(service.slug)
        return resp

    @staticmethod
    def forward_headers(request_headers: dict[str, str], *, conditionals: bool = True,
                        ranges: bool = True) -> dict[str, str]:
        """The villager's end-to-end fields for the upstream (gateway/cache/forward.py)."""
        return forward.request_headers(request_headers, conditionals=conditionals, ranges=ranges)

    # -- GET / HEAD -----------------------------------------------------------------

    def _pick(self, key: str, req_h: dict[str, str]) -> Entry | None:
        return rules.pick_variant(self.store.lookup(key), req_h, lambda e: e.meta)

    def _edit(self, service: GovService, entry: Entry | None, offline: bool,
              timezone: str) -> Edit | None:
        """The banner (for a stored copy served while the upstream is unreachable) and the
        one-time form token (for a service that queues forms) an HTML page gets."""
        if entry is not None and not is_html(entry.meta.headers):
            return None  # the hit path of downloads and images stays as it was
        copy_time = entry.meta.response_time if offline and entry is not None else None
        token = forms.new_token() if service.queue_posts else None
        if copy_time is None and token is None:
            return None
        return Edit(copy_time=copy_time, timezone=timezone, token=token)

    async def get(self, request: web.Request, service: GovService, url: str,
                  rewrite: Callable[[str], str],
                  timezone: str = timefmt.DEFAULT_TIMEZONE) -> web.StreamResponse:
        """Answer a GET or HEAD for ``url``; ``timezone`` dates the offline banner."""
        with serving(service.slug):  # its hits and misses count for it too (cache/metrics.py)
            return await self._get(request, service, url, rewrite, timezone)

    async def _get(self, request: web.Request, service: GovService, url: str,
                   rewrite: Callable[[str], str], timezone: str) -> web.StreamResponse:
        self.metrics.requests += 1
        key = f"GET {url}"
        req_h = forward.end_to_end(header_dict(request.headers))
        for attempt in range(3):
            now = time.time()
            entry = self._pick(key, req_h)
            # The last contact with the upstream failed: a stored copy is all there is.
            offline = self._health(service.slug).state == "offline"
            decision = rules.decide(request.method, req_h, entry.meta if entry else None, now,
                                    offline_for=service.offline_for)
            if offline and decision.kind in _ANSWERED_WITHOUT_UPSTREAM:
                # So the banner goes as soon as the link is back. A request that goes upstream
                # anyway (a revalidation, a miss, a background refresh) tells that itself: a
                # HEAD beside it would cost the uplink a second request and race its answer.
                self._recheck(service, url)
            if decision.kind is Kind.GATEWAY_TIMEOUT:
                return web.Response(status=504, text="not in cache (only-if-cached)\n")
            if entry is not None and decision.kind is Kind.FRESH:
                served = await self._serve(request, entry, now, "hit", counter="hits", req_h=req_h,
                                           edit=self._edit(service, entry, offline, timezone),
                                           rewrite=rewrite)
                if served is not None:
                    return served
                continue
            if entry is not None and decision.kind is Kind.STALE_REVALIDATE_IN_BACKGROUND:
                self._refresh_in_background(service, url, key, req_h)
                served = await self._serve(request, entry, now, "hit; detail=stale-while-revalidate",
                                           counter="stale_while_revalidate", req_h=req_h,
                                           edit=self._edit(service, entry, offline, timezone),
                                           rewrite=rewrite)
                if served is not None:
                    return served
                continue
            if entry is None and attempt == 0 and key in self._inflight:
                # A fill of this URL is in flight: a HEAD or a range waits for it too and
                # is then answered from the stored copy (one upstream request, not two).
                self.metrics.collapsed += 1
                await asyncio.shield(self._inflight[key])
                continue
            if entry is None and rangeproxy.wants_part(request, req_h):
                part = await rangeproxy.from_partial(self, request, service, url, key, req_h, rewrite)
                if part is not None:
                    return part
            if entry is None and request.method == "HEAD":
                async with self.fetch_slot(request):
                    return await self._passthrough(request, service, url, req_h, rewrite)
            if entry is not None and request.method == "HEAD" and decision.kind is Kind.REVALIDATE:
                async with self.fetch_slot(request):
                    return await self._head_through(request, service, url, req_h, entry, decision,
                                                    rewrite, self._edit(service, entry, True, timezone))
            waiting = self._inflight.get(key)
            if waiting is not None and attempt == 0:
                self.metrics.collapsed += 1
                await asyncio.shield(waiting)
                continue
            async with self.fetch_slot(request):
                # A fill of this URL may have begun while this one waited for its slot.
                waiting = self._inflight.get(key)
                if waiting is None or attempt == 2:
                    return await self._lead(request, service, url, key, req_h, entry, decision,
                                            rewrite, timezone)
            self.metrics.collapsed += 1
            await asyncio.shield(waiting)  # then decide again: normally a fresh copy
        return web.Response(status=502, text="the cached copy kept failing; try again\n")

    async def _serve(self, request: web.Request, entry: Entry, now: float, detail: str,
                     counter: str, req_h: dict[str, str] | None = None,
                     edit: Edit | None = None, rewrite: Callable[[str], str] | None = None
                     ) -> web.StreamResponse | None:
        resp = await serve_entry(request, self.store, entry, now, detail, req_h, edit, rewrite)
        if resp is not None:
            self.metrics.count(counter)
            if request.method != "HEAD" and resp.status in (200, 206):
                self.metrics.bytes_from_cache += resp.content_length or 0
        return resp

    async def _lead(self, request: web.Request, service: GovService, url: str, key: str,
                    req_h: dict[str, str], entry: Entry | None, decision: Decision,
                    rewrite: Callable[[str], str], timezone: str) -> web.StreamResponse:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = done
        try:
            # A miss carries the villager's own preconditions (their answer, e.g. a 304, is
            # passed through, not stored); a revalidation carries the cache's validators.
            headers = self.forward_headers(req_h, conditionals=entry is None, ranges=False)
            if entry is not None:
                headers.update(rules.conditional_request_headers(entry.meta))
            request_time = time.time()
            try:
                upstream = await self.open_upstream(service, "GET", url, headers,
                                                    interim=request)
            except UpstreamDown as exc:
                return await self._on_error(request, entry, decision, exc,
                                            self._edit(service, entry, True, timezone), rewrite)
            if upstream.status in rules.ERROR_STATUSES and entry is not None:
                stale = await self._stale_on_error(request, entry, decision,
                                                   self._edit(service, entry, True, timezone),
                                                   rewrite)
                if stale is not None:
                    upstream.release()
                    return stale
            async with upstream:
                if upstream.status == 304 and entry is not None:
                    refreshed = await self._freshen(entry, upstream, request_time)
                    resp = await self._serve(request, refreshed, time.time(),
                                             "hit; fwd=stale; fwd-status=304", "revalidated", req_h,
                                             self._edit(service, refreshed, False, timezone),
                                             rewrite)
                    if resp is not None:
                        return resp
                    return web.Response(status=502, text="stored copy lost; try again\n")
                if not self._stores_whole(upstream, req_h):
                    # Nothing whole will be stored: requests waiting for this fill (a HEAD, a
                    # range, the same page) need not wait for its body; they go on themselves.
                    self._release_waiters(key, done)
                if upstream.status == 206:  # a part (the upstream chose to send one): kept as such
                    return await rangeproxy.stream_part(self, request, upstream, key, req_h,
                                                        request_time, rewrite)
                if "range" in req_h and self._too_large(upstream):
                    # Never stored: fetching all of it for one range would be waste.
                    upstream.release()
                    return await self._passthrough(request, service, url, req_h, rewrite)
                if entry is None and forward.answers_preconditions(req_h, upstream.status):
                    # The villager's own 304/412: about its conditions, never stored.
                    mark_metered(request)
                    self.metrics.passthrough += 1
                    resp, _ = await stream_upstream(request, upstream, None, "fwd=miss", rewrite)
                    return resp
                return await self._store_and_stream(request, upstream, key, req_h, request_time,
                                                    rewrite, self._edit(service, None, False, timezone),
                                                    replacing=entry.meta if entry else None)
        finally:
            self._release_waiters(key, done)

    def _release_waiters(self, key: str, done: asyncio.Future[None]) -> None:
        """End this fill's turn for ``key`` (once; a later fill's marker is left alone)."""
        if self._inflight.get(key) is done:
            del self._inflight[key]
        if not done.done():
            done.set_result(None)

    def _stores_whole(self, upstream: aiohttp.ClientResponse, req_h: dict[str, str]) -> bool:
        """Will this answer be stored as a complete copy (as far as its head tells)?"""
        return (upstream.status != 206 and not self._too_large(upstream)
                and rules.is_storable("GET", upstream.status, req_h, header_dict(upstream.headers)))

    async def commit(self, writer: BodyWriter) -> bool:
        """:meth:`_commit` for the unsafe-answer path (gateway/cache/unsafe.py)."""
        return await self._commit(writer)

    async def _commit(self, writer: BodyWriter) -> bool:
        """Publish a stored body; a full or failing disk only means it is not stored (the
        villager already has the answer), said in one line without a traceback."""
        try:
            await asyncio.to_thread(writer.commit)
        except (OSError, StoreError) as exc:
            log.warning("cache: %s not stored: %s", writer.key, exc)
            return False
        if writer.failed is not None:
            log.warning("cache: %s not stored: %s", writer.key, writer.failed)
            return False
        return True

    def _too_large(self, upstream: aiohttp.ClientResponse) -> bool:
        size = upstream.content_length
        return upstream.status == 200 and size is not None and size > self.store.max_object_bytes

    async def _freshen(self, entry: Entry, upstream: aiohttp.ClientResponse,
                       request_time: float) -> Entry:
        """Apply a 304 to the stored copy (RFC 9111 4.3.4); return the updated entry.

        A 304 whose ETag names another representation than the stored one must not
        update it (4.3.4): the copy is left as it was. It still answers this request
        (the origin said 304 to the stored copy's own validators), and the next one
        revalidates again."""
        headers_304 = header_dict(upstream.headers)
        if not rules.freshen_applies(entry.meta, headers_304):
            log.warning("cache: %s: a 304 with another ETag (%s) left the stored copy as it was",
                        entry.key, headers_304.get("etag"))
            return entry
        meta = rules.freshen_with_304(entry.meta, headers_304, request_time, time.time())
        await asyncio.to_thread(self.store.update_meta, entry.id, meta)
        return Entry(entry.id, entry.key, meta, entry.size, entry.path, entry.last_used)

    async def _store_and_stream(self, request: web.Request, upstream: aiohttp.ClientResponse,
                                key: str, req_h: dict[str, str], request_time: float,
                                rewrite: Callable[[str], str],
                                edit: Edit | None = None,
                                replacing: StoredMeta | None = None) -> web.StreamResponse:
        mark_metered(request)  # the upstream's bytes: shaped in the villager's class
        resp_h = header_dict(upstream.headers)
        window = _range_window(req_h, upstream)
        writer = None
        if rules.is_storable("GET", upstream.status, req_h, resp_h, replacing=replacing):
            meta = StoredMeta.capture(upstream.status, req_h, rules.storable_headers(resp_h),
                                      request_time, time.time())
            writer = self.store.begin(key, meta)
        self.metrics.count("misses")
        detail = "fwd=miss; stored" if writer else "fwd=miss"
        first = b""
        try:
            if (edit is not None and request.method == "GET" and upstream.status == 200
                    and is_html(resp_h) and window is None):
                # A small page is read whole so its forms can get the token.
                first, whole = await read_small_page(upstream)
                if whole:
                    self.metrics.bytes_from_upstream += len(first)
                    if writer is not None:
                        if upstream.content_length in (None, len(first)):
                            writer.write(first)
                            await self._commit(writer)
                        else:
                            writer.abort()
                        writer = None
                    edited = edit_page(first, resp_h, edit)
                    if edited is not None:
                        return edited_upstream_response(upstream, edited, detail, rewrite)
                    return await _send_read(request, upstream, first, detail, rewrite)
            resp, received = await stream_upstream(request, upstream, writer, detail, rewrite,
                                                   first, window)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        self.metrics.bytes_from_upstream += received
        if writer is not None:
            complete = upstream.content_length is None or received == upstream.content_length
            if complete:
                await self._commit(writer)
            else:
                writer.abort()
        return resp

    async def _on_error(self, request: web.Request, entry: Entry | None, decision: Decision,
                        exc: UpstreamDown, edit: Edit | None,
                        rewrite: Callable[[str], str] | None = None) -> web.StreamResponse:
        if entry is not None:
            resp = await self._stale_on_error(request, entry, decision, edit, rewrite)
            if resp is not None:
                return resp
        log.warning("upstream failed and no usable copy: %s", exc)
        raise exc

    async def _stale_on_error(self, request: web.Request, entry: Entry, decision: Decision,
                              edit: Edit | None, rewrite: Callable[[str], str] | None = None
                              ) -> web.StreamResponse | None:
        """The stored copy after an upstream error, when the rules allow it; else None."""
        now = time.time()
        if not rules.may_serve_stale(decision, now):
            return None
        return await self._serve(request, entry, now, "hit; detail=stale-if-error",
                                 counter="stale_served", edit=edit, rewrite=rewrite)

    async def _passthrough(self, request: web.Request, service: GovService, url: str,
                           req_h: dict[str, str], rewrite: Callable[[str], str]) -> web.StreamResponse:
        headers = self.forward_headers(req_h)
        for name in ("range", "if-range"):  # If-Range too: a part of another copy must not come back
            if name in req_h:
                headers[name] = req_h[name]
        mark_metered(request)
        request_time = time.time()
        upstream = await self.open_upstream(service, request.method, url, headers,
                                            interim=request)
        async with upstream:
            if request.method == "GET" and upstream.status == 206:  # kept as a partial entry
                return await rangeproxy.stream_part(self, request, upstream, f"GET {url}", req_h,
                                                    request_time, rewrite)
            self.metrics.passthrough += 1
            resp, received = await stream_upstream(request, upstream, None, "fwd=bypass", rewrite)
            self.metrics.bytes_from_upstream += received
            if request.method == "HEAD":
                await self._head_answered(f"GET {url}", req_h, upstream, request_time)
            return resp

    async def _head_through(self, request: web.Request, service: GovService, url: str,
                            req_h: dict[str, str], entry: Entry, decision: Decision,
                            rewrite: Callable[[str], str], edit: Edit | None) -> web.StreamResponse:
        """A HEAD for a stale stored copy goes upstream as a HEAD (no body crosses the
        uplink); its answer goes to the villager and updates the stored GET answer
        (RFC 9111 4.3.5). No answer, or a 5xx, serves the stored copy when the rules
        allow it, as for a GET."""
        headers = self.forward_headers(req_h, ranges=False)
        request_time = time.time()
        try:
            upstream = await self.open_upstream(service, "HEAD", url, headers, interim=request)
        except UpstreamDown as exc:
            return await self._on_error(request, entry, decision, exc, edit, rewrite)
        async with upstream:
            if upstream.status in rules.ERROR_STATUSES:
                stale = await self._stale_on_error(request, entry, decision, edit, rewrite)
                if stale is not None:
                    return stale
            mark_metered(request)
            self.metrics.passthrough += 1
            resp, _ = await stream_upstream(request, upstream, None, "fwd=stale", rewrite)
            await self._head_answered(f"GET {url}", req_h, upstream, request_time)
            return resp

    async def _head_answered(self, key: str, req_h: dict[str, str],
                             upstream: aiohttp.ClientResponse, request_time: float) -> None:
        """A 200 to a HEAD updates the stored GET answer it could have been served from,
        or marks it stale when it contradicts it (RFC 9111 4.3.5)."""
        entry = self._pick(key, req_h) if upstream.status == 200 else None
        if entry is None:
            return
        meta = rules.update_from_head(entry.meta, header_dict(upstream.headers), entry.size,
                                      request_time, time.time())
        try:
            await asyncio.to_thread(self.store.update_meta, entry.id, meta)
        except (OSError, StoreError) as exc:
            log.warning("cache: %s not updated from a HEAD answer: %s", key, exc)

    # -- background refresh and prefetch ------------------------------------------

    def _refresh_in_background(self, service: GovService, url: str, key: str,
                               req_h: dict[str, str]) -> None:
        if key in self._inflight:
            return
        task = asyncio.create_task(self.refresh(service, url, req_h))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _recheck(self, service: GovService, url: str) -> None:
        """Ask the upstream (HEAD, new connection) whether it is back, once at a time per
        service, in the background: fresh hits never wait for it."""
        name = f"recheck-{service.slug}"
        if any(task.get_name() == name for task in self._background):
            return

        async def recheck() -> None:
            with contextlib.suppress(UpstreamDown):
                request_time = time.time()
                resp = await self.open_upstream(service, "HEAD", url, {}, fresh_connection=True)
                resp.release()
                await self._head_answered(f"GET {url}", {}, resp, request_time)

        task = asyncio.create_task(recheck(), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def refresh_later(self, service: GovService, url: str) -> None:
        """Fetch ``url`` again in the background (a kept page that a form invalidated)."""
        self._refresh_in_background(service, url, f"GET {url}", {})

    async def refresh(self, service: GovService, url: str, req_h: dict[str, str] | None = None,
                      rate_bps: int | None = None, max_bytes: int | None = None) -> str:
        """Bring one URL's stored copy up to date without a villager waiting; see
        :func:`gateway.cache.refresh.refresh` for the outcomes."""
        return await refresh_url(self, service, url, req_h, rate_bps, max_bytes)


# Decisions answered from the store alone: only these start a background recheck of an
# offline service (stale-while-revalidate has its own background refresh).
_ANSWERED_WITHOUT_UPSTREAM = frozenset({Kind.FRESH, Kind.GATEWAY_TIMEOUT})


def _range_window(req_h: dict[str, str], upstream: aiohttp.ClientResponse
                  ) -> tuple[int, int] | str | None:
    """The part of a whole-object fill the villager asked for with ``Range``.

    (first, last), "unsatisfiable", or None for the whole answer: no range, an answer
    other than a 200 of known length, or an ``If-Range`` that does not name this
    answer's representation strongly (RFC 9110 §13.1.5: then the whole object is due).
    """
    if "range" not in req_h:
        return None
    if upstream.status != 200 or upstream.content_length is None:
        return None
    if not if_range_matches(req_h, header_dict(upstream.headers)):
        return None
    return parse_range(req_h["range"], upstream.content_length)


async def _send_read(request: web.Request, upstream: aiohttp.ClientResponse, body: bytes,
                     detail: str, rewrite: Callable[[str], str]) -> web.StreamResponse:
    """Send an upstream answer whose whole body was already read, unchanged."""
    resp, _ = await stream_upstream(request, upstream, None, detail, rewrite, body)
    return resp
