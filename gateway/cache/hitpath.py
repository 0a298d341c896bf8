"""Prepared answers for fresh cache hits: the fast path in front of the caching proxy.

Theory of operation
-------------------
Most requests to layanan.desa are plain GETs for small objects that are stored and
fresh. For those the full path (``CachingProxy.get``) parses the request, looks the
key up in the store, runs the RFC 9111 decision and builds the client's headers every
time, although the answer is the same bytes each time but for ``Age``. ``HitPath``
keeps that answer, per request target, once the full path has served it as a hit:

* key: the raw request target (path and query as the villager sent them), the same
  for every method; only GET is answered from it.
* value (``Prepared``): the configuration object and service it was built under, the
  stored status, the client headers exactly as ``respond.serve_entry`` builds them
  (``stored_headers_for_client``, ``Cache-Status: desanet; hit``, ``Accept-Ranges``),
  the small body (the store's in-memory copy) and the absolute time until which the
  stored response is fresh for a request without conditions.

A request is answered here only when nothing could make the full path answer it
differently: a GET, none of the request fields the decision or the answer depend on
(``Range``, any ``If-*``, ``Cache-Control``, ``Pragma``, ``Authorization``), the
configuration unchanged, the service not marked offline (the full path then adds the
banner and asks the upstream whether it is back), and before ``fresh_until``.
Entries are prepared only when the full path's own answer needs no per-request
work: a stored 200 with no ``Vary`` (so every request selects it), a body small enough
for the store's memory, and no per-answer edit (an HTML page of a service that queues
forms gets a one-time token on every answer). Anything else falls through to the full
path, unchanged.

``Age`` (RFC 9111 §5.1) is the only part that changes: the header set is rebuilt when
the whole-second age changes, at most once a second per object. The hit is counted in
the proxy's metrics as the full path counts it, and the store's LRU time of the entry is
updated at most once a second (``TOUCH_EVERY``).

Coherence: the store calls ``forget`` (``CacheStore.on_change``) after every change to
a key's entries (insert, replacement, 304 update, delete, eviction, close), possibly
from a worker thread. A prepared answer is built from one ``lookup``; if the store's
change counter moved while it was built, or moves before it is published, it is
dropped, so a change can never be overtaken by an older answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from gateway.cache import rules
from gateway.cache.health import ServiceHealth
from gateway.cache.htmledit import is_html
from gateway.cache.metrics import Metrics
from gateway.cache.respond import cache_status, stored_headers_for_client
from gateway.cache.rules import Kind, StoredMeta
from gateway.cache.store import CacheStore
from gateway.config.schema import Config, GovService

# Request fields that can change a stored answer (conditions, ranges, the client's own
# cache directives, credentials): a request with any of them takes the full path.
_DISQUALIFYING = ("range", "if-none-match", "if-modified-since", "if-match",
                  "if-unmodified-since", "if-range", "cache-control", "pragma", "authorization")
HIT = cache_status("hit")
MAX_PREPARED = 4096  # prepared answers kept (oldest dropped first)
MAX_PREPARED_BYTES = 16 * 1024 * 1024  # their bodies, in all (they share the store's bytes)
# A prepared answer is re-derived from the full path at least this often, so the fast
# path can never run far ahead of the rules even for a long max-age.
MAX_PREPARED_FOR = 60.0
# The store's LRU time of a busy object is updated at most this often (seconds): recency
# to the second is all eviction needs, and the touch takes the store's lock.
TOUCH_EVERY = 1.0


@dataclass(slots=True)
class Prepared:
    config: Config
    service: GovService
    key: str  # the store's key
    entry_id: int
    meta: StoredMeta
    body: bytes
    fresh_until: float
    initial_age: float
    age: int  # the whole-second age ``headers`` carry
    headers: CIMultiDict[str]
    touched: float = 0.0  # when the store last heard of a hit on it


class HitPath:
    def __init__(self, store: CacheStore, health: Mapping[str, ServiceHealth],
                 metrics: Metrics) -> None:
        """``health``: the service health table (read, never changed); ``metrics``: the
        proxy's, counted here as the full path counts a hit."""
        self.store = store
        self._health = health
        self._metrics = metrics
        self._prepared: dict[str, Prepared] = {}  # request target -> answer
        self._targets: dict[str, set[str]] = {}  # store key -> its request targets
        self._bytes = 0
        # Changes come from the event loop (learn, expiry) and from the store's worker
        # threads (forget); the answer path itself only reads one dict entry.
        self._lock = threading.Lock()
        self.enabled = True
        self.served = 0  # answers given here (tests and profiles)
        store.on_change(self.forget)

    def __len__(self) -> int:
        return len(self._prepared)

    @property
    def bytes(self) -> int:
        """Body bytes the prepared answers hold (shared with the store's body memory)."""
        return self._bytes

    # -- the fast path ---------------------------------------------------------------------

    def answer(self, request: web.Request, config: Config) -> web.Response | None:
        """The prepared answer for ``request``, or None: take the full path."""
        prep = self._prepared.get(request.raw_path)
        if prep is None or request.method != "GET" or prep.config is not config:
            return None
        headers = request.headers
        for name in _DISQUALIFYING:
            if name in headers:
                return None
        health = self._health.get(prep.service.slug)
        if health is not None and health.state == "offline":
            return None
        now = time.time()
        if now >= prep.fresh_until:
            self._drop(request.raw_path)
            return None
        age = int(prep.initial_age + max(0.0, now - prep.meta.response_time))
        if age != prep.age:
            prep.headers = _client_headers(prep.meta, now)
            prep.age = age
        if now - prep.touched >= TOUCH_EVERY:
            self.store.touch(prep.entry_id, now)
            prep.touched = now
        metrics = self._metrics
        metrics.requests += 1
        metrics.count("hits", prep.service.slug)
        metrics.bytes_from_cache += len(prep.body)
        self.served += 1
        return web.Response(status=prep.meta.status, headers=prep.headers, body=prep.body)

    # -- keeping it -----------------------------------------------------------------------

    def learn(self, request: web.Request, config: Config, service: GovService, key: str,
              resp: web.StreamResponse) -> None:
        """After the full path answered ``request`` (for the store's ``key``) with ``resp``:
        prepare its answer if the next identical request may be answered here."""
        if (not self.enabled or request.method != "GET" or resp.status != 200
                or resp.headers.get("Cache-Status") != HIT
                or any(name in request.headers for name in _DISQUALIFYING)):
            return
        health = self._health.get(service.slug)
        if health is not None and health.state == "offline":
            return  # it would not be used until the service is back
        changes = self.store.changes
        entries = self.store.lookup(key)
        if len(entries) != 1:
            return
        entry = entries[0]
        meta = entry.meta
        if (meta.status != 200 or meta.vary or "vary" in meta.headers
                or entry.size > self.store.small_body_limit
                or (service.queue_posts and is_html(meta.headers))):
            return
        now = time.time()
        fresh_until = _fresh_until(meta, now, service)
        if fresh_until is None:
            return
        body = self.store.read_small(entry)
        if body is None:
            return
        initial_age = rules.current_age(meta, meta.response_time)
        prep = Prepared(config, service, key, entry.id, meta, body, fresh_until, initial_age,
                        int(initial_age + max(0.0, now - meta.response_time)),
                        _client_headers(meta, now))
        if self.store.changes != changes:
            return  # the entry changed while this was built: the next hit learns again
        target = request.raw_path
        with self._lock:
            self._drop_locked(target)  # an older answer (another configuration)
            self._make_room(len(body))
            self._prepared[target] = prep
            self._targets.setdefault(key, set()).add(target)
            self._bytes += len(body)
        if self.store.changes != changes:
            # A change landed while this was published; its forget may have run before.
            self._drop(target)

    def forget(self, key: str | None) -> None:
        """The store changed ``key``'s entries (None: all of them): drop their answers.
        Runs with the store's lock held, possibly on a worker thread."""
        if key is None:
            self.clear()
            return
        with self._lock:
            for target in list(self._targets.get(key, ())):
                self._drop_locked(target)

    def clear(self) -> None:
        with self._lock:
            self._prepared = {}
            self._targets = {}
            self._bytes = 0

    def _drop(self, target: str) -> None:
        with self._lock:
            self._drop_locked(target)

    def _drop_locked(self, target: str) -> None:
        prep = self._prepared.pop(target, None)
        if prep is None:
            return
        self._bytes -= len(prep.body)
        targets = self._targets.get(prep.key)
        if targets is not None:
            targets.discard(target)
            if not targets:
                del self._targets[prep.key]

    def _make_room(self, size: int) -> None:
        while self._prepared and (len(self._prepared) >= MAX_PREPARED
                                  or self._bytes + size > MAX_PREPARED_BYTES):
            self._drop_locked(next(iter(self._prepared)))


def _client_headers(meta: StoredMeta, now: float) -> CIMultiDict[str]:
    """The headers ``respond.serve_entry`` sends with a whole stored 200 on a fresh hit."""
    headers = stored_headers_for_client(meta, now)
    headers["Cache-Status"] = HIT
    headers["Accept-Ranges"] = "bytes"
    return headers


def _fresh_until(meta: StoredMeta, now: float, service: GovService) -> float | None:
    """Until when a request without conditions gets this stored response as a fresh hit
    (None: not fresh now). The decision itself is asked at both ends of the window, so
    the fast path never answers what the rules would not."""
    lifetime = rules.freshness_lifetime(meta.headers, status=meta.status,
                                        response_time=meta.response_time) or 0.0
    until = min(meta.response_time + lifetime - rules.current_age(meta, meta.response_time),
                now + MAX_PREPARED_FOR)
    offline_for = float(service.offline_for)
    for at in (now, until - 0.001):
        if at < now:
            return None
        decision = rules.decide("GET", {}, meta, at, offline_for=offline_for)
        if decision.kind is not Kind.FRESH or decision.stale:
            return None
    return until
