"""The local government-services site (``http://layanan.desa/``).

Ties together the catalog pages, the caching proxy, the store-and-forward
outbox and the nightly prefetch. The daemon owns one instance and hands its
``handle`` to the portal app for the catalog's host name.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp
from aiohttp import web

from gateway import timefmt
from gateway.cache import forms, forward, pages, unsafe
from gateway.cache.delivery import Deliverer
from gateway.cache.health import ServiceHealth
from gateway.cache.hitpath import HitPath
from gateway.cache.outbox import Outbox, QueueFull, Submission, SubmissionTooLarge, normalize_ref
from gateway.cache.prefetch import Prefetcher
from gateway.cache.proxy import CachingProxy, UpstreamDown
from gateway.cache.rules import header_dict
from gateway.cache.shapemark import mark_metered
from gateway.cache.slots import ClientBusy, ClientGone
from gateway.cache.store import CacheStore
from gateway.cache.submit import REFUSALS, BodyRefused, limits_of, read_form
from gateway.config.schema import Config, GovService
from gateway.config.units import parse_time_of_day

log = logging.getLogger("desanet.services")

PROBE_INTERVAL = 30.0  # seconds between upstream health checks when nothing else asked
SAFE_METHODS = ("GET", "HEAD")
# Every method reaches a service's upstream but these two, answered here with 405: TRACE
# echoes the request back (with the villager's cookies, to any script on the page), and
# CONNECT would make the gateway a tunnel. GET and HEAD go through the cache; the form
# methods through _submit (kept for later when the service queues forms); the rest
# (OPTIONS, WebDAV, M-SEARCH, other extensions) are passed through (gateway/cache/unsafe.py;
# an answer to an unsafe one invalidates what it changes, RFC 9111 §4.4).
REFUSED_METHODS = frozenset({"TRACE", "CONNECT"})
FORM_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
# What a 405 names as allowed (RFC 9110 §15.5.6): the well-known ones; extensions pass too.
ALLOWED_METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH")
# Characters kept as they are when a villager's raw path is passed on: the path's own
# delimiters and existing %-escapes (so an encoded "?" or "#" stays part of the path).
_PATH_SAFE = forward.PATH_SAFE


class LocalServices:
    def __init__(self, config: Callable[[], Config], state_dir: Path,
                 settings: Config | None = None) -> None:
        """Blocks (opens the cache and outbox databases). ``settings`` gives the sizes
        and timeouts to start with (default: ``config()``); pages read ``config()``."""
        self._config = config
        cfg = (settings or config()).local_services
        self.store = CacheStore(state_dir / "cache", cfg.cache_size)
        self.outbox = Outbox(state_dir / "outbox.db")
        self.health: dict[str, ServiceHealth] = {}
        self.proxy = CachingProxy(self.store, self._health_of, float(cfg.request_timeout),
                                  on_upstream_back=self._upstream_back)
        self.deliverer = Deliverer(self.outbox, self._upstream_for,
                                   timeout=float(cfg.request_timeout))
        self.prefetcher = Prefetcher(self.store, self.proxy)
        self.hits = HitPath(self.store, self.health, self.proxy.metrics)
        self._prefetched_for: Config | None = None  # the configuration the last prefetch saw
        # Per-request lookups, rebuilt when the configuration object changes (reload).
        self._services_of: tuple[Config | None, dict[str, GovService]] = (None, {})
        self._rewriters: dict[str, tuple[GovService, Callable[[str], str]]] = {}
        self.prefetch_runs = 0
        self.last_prefetch: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._next_prefetch: float | None = None

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the delivery worker; probes and prefetch are run by the reconcile loop's
        timers (:meth:`probe`, :meth:`scheduled_prefetch`)."""
        self._tasks.append(asyncio.create_task(self.deliverer.run(), name="outbox-delivery"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.proxy.close()
        await asyncio.to_thread(self.store.close)
        self.outbox.close()

    # -- lookups -------------------------------------------------------------------------

    def services(self) -> dict[str, GovService]:
        cfg = self._config()
        cached_cfg, by_slug = self._services_of
        if cached_cfg is not cfg:
            by_slug = {s.slug: s for s in cfg.local_services.services}
            self._services_of = (cfg, by_slug)
        return dict(by_slug)

    def _service(self, slug: str) -> GovService | None:
        cfg = self._config()
        if self._services_of[0] is not cfg:
            self.services()
        return self._services_of[1].get(slug)

    def _rewriter(self, service: GovService) -> Callable[[str], str]:
        cached = self._rewriters.get(service.slug)
        if cached is None or cached[0] is not service:
            cached = (service, _location_rewriter(service))
            self._rewriters[service.slug] = cached
        return cached[1]

    def _health_of(self, slug: str) -> ServiceHealth:
        return self.health.setdefault(slug, ServiceHealth(slug))

    def _upstream_for(self, slug: str) -> str | None:
        service = self.services().get(slug)
        return service.upstream if service else None

    def _upstream_back(self, slug: str) -> None:
        log.info("service %s is reachable again; delivering its queued forms", slug)
        self.deliverer.kick(slug)

    # -- HTTP --------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Every request for the catalog's host name, inside one error boundary.

        The portal app hands these requests over before its own error pages, so a
        failure here (the store's StoreError, a full disk) is caught here: a clear page
        in the villager's language, and the traceback logged once.
        """
        fast = self.hits.answer(request, self._config())  # a fresh hit prepared earlier
        if fast is not None:
            return fast
        try:
            return await self._route(request)
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionError):
            raise  # the villager went away: nothing to show, nothing to log
        except Exception:
            log.exception("layanan request %s %s failed", request.method, request.path)
            if _answer_started(request):
                raise  # part of an answer is out: the connection can only be closed
            cfg = self._config()
            lang = pages.pick_lang(request, cfg)
            return pages.message(cfg, lang, 500, "title_error", pages.t_for(lang)("server_error"))

    async def _route(self, request: web.Request) -> web.StreamResponse:
        cfg = self._config()
        self.proxy.slots.limit = cfg.local_services.max_misses_per_client
        self.proxy.slots.waiting_limit = cfg.local_services.max_waiting_per_client
        path = request.path
        if path == "/" or path == "/kiriman" or path.startswith("/kiriman/"):
            if request.method not in SAFE_METHODS:
                return self._not_allowed(cfg, request, SAFE_METHODS)
            if path == "/":
                return self.catalog(cfg, pages.pick_lang(request, cfg), request)
            return self.submission(cfg, pages.pick_lang(request, cfg), request)
        if request.method in REFUSED_METHODS:
            return self._not_allowed(cfg, request, ALLOWED_METHODS)
        slug, _, _ = path.lstrip("/").partition("/")
        service = self._service(slug)
        if service is None:
            lang = pages.pick_lang(request, cfg)
            return pages.message(cfg, lang, 404, "title_not_found",
                                 pages.t_for(lang)("not_found_service"))
        if "/" not in path.lstrip("/"):
            raise web.HTTPFound(f"/{slug}/")
        target = upstream_target(request.rel_url.raw_path, request.rel_url.raw_query_string)
        if target is None:
            lang = pages.pick_lang(request, cfg)
            return pages.message(cfg, lang, 400, "title_error", pages.t_for(lang)("bad_path"))
        rest, query = target
        url = service.upstream + "/" + rest + (f"?{query}" if query else "")
        rewrite = self._rewriter(service)
        try:
            if request.method in SAFE_METHODS:
                resp = await self.proxy.get(request, service, url, rewrite, cfg.site.timezone)
                self.hits.learn(request, cfg, service, f"GET {url}", resp)
                return resp
            if request.method not in FORM_METHODS:
                return await self._pass(request, cfg, service, url, rewrite)
            return await self._submit(request, cfg, pages.pick_lang(request, cfg), service, url,
                                      rest, query, rewrite)
        except UpstreamDown:
            return self._unavailable(cfg, pages.pick_lang(request, cfg), service, "unavailable_body")
        except ClientGone:
            return web.Response(status=499)  # nobody reads it: the villager hung up waiting
        except ClientBusy as exc:
            log.info("%s: %s", service.slug, exc)
            lang = pages.pick_lang(request, cfg)
            resp = pages.message(cfg, lang, 429, "busy_title", pages.t_for(lang)("busy_body"))
            resp.headers["Retry-After"] = "10"
            return resp

    @staticmethod
    def _not_allowed(cfg: Config, request: web.Request, allowed: tuple[str, ...]) -> web.Response:
        lang = pages.pick_lang(request, cfg)
        resp = pages.message(cfg, lang, 405, "title_error",
                             pages.t_for(lang)("method_not_allowed", method=request.method[:16]))
        resp.headers["Allow"] = ", ".join(allowed)
        return resp

    def _unavailable(self, cfg: Config, lang: str, service: GovService, key: str) -> web.Response:
        title = service.title_id if lang == "id" else service.title_en
        resp = pages.message(cfg, lang, 504, "unavailable_title",
                             pages.t_for(lang)(key, service=title))
        resp.headers["Cache-Status"] = "desanet; fwd=miss; detail=upstream-unreachable"
        return resp

    def catalog(self, cfg: Config, lang: str, request: web.Request) -> web.Response:
        t = pages.t_for(lang)
        views = []
        for service in cfg.local_services.services:
            health = self._health_of(service.slug)
            newest = self.store.newest_response(f"GET {service.upstream}/")
            if health.state == "online":
                text, online = t("state_online"), True
            elif newest is not None:
                text, online = t("state_offline", when=pages.local_time(cfg, lang, newest)), False
            elif health.state == "offline":
                text, online = t("state_offline_none"), False
            else:
                text, online = t("state_unknown"), False
            views.append(pages.ServiceView(service, text, online))
        return pages.page(cfg, lang, "catalog.html", "catalog_title", services=views,
                          set_lang=request.query.get("lang"))

    def submission(self, cfg: Config, lang: str, request: web.Request) -> web.Response:
        t = pages.t_for(lang)
        raw = request.query.get("ref") or request.path.removeprefix("/kiriman").strip("/")
        ref = normalize_ref(raw) if raw else None
        sub = self.outbox.get(ref) if ref else None
        if sub is None:
            return pages.message(cfg, lang, 404, "title_not_found", t("sub_not_found"))
        state_text = t(f"sub_state_{sub.state}", status=sub.response_status)
        created = pages.local_time(cfg, lang, sub.created)
        delivered = pages.local_time(cfg, lang, sub.delivered_at) if sub.delivered_at else ""
        if request.query.get("baru"):  # where a form's POST redirects to: the receipt
            service = self._service(sub.service)
            title = sub.service if service is None else (
                service.title_id if lang == "id" else service.title_en)
            return pages.page(cfg, lang, "receipt.html", "receipt_title", ref=sub.ref,
                              service_title=title, state_text=state_text, created=created,
                              path=f"/kiriman?ref={quote(sub.ref)}&baru=1")
        return pages.page(cfg, lang, "submission.html", "sub_title", ref=sub.ref,
                          path=f"/kiriman?ref={quote(sub.ref)}",
                          state_text=state_text, created=created, delivered=delivered)

    @staticmethod
    def _to_receipt(sub: Submission) -> web.Response:
        """Post/Redirect/Get: the answer to a saved form is a redirect to its receipt, a GET
        that is safe to refresh; the form itself is never sent again by a refresh."""
        location = f"/kiriman?ref={quote(sub.ref)}&baru=1"
        return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"},
                            text=f'<!doctype html><a href="{location}">{sub.ref}</a>\n',
                            content_type="text/html")

    async def _pass(self, request: web.Request, cfg: Config, service: GovService, url: str,
                    rewrite: Callable[[str], str]) -> web.StreamResponse:
        """OPTIONS and extension methods: sent on as they came, never queued (they are no
        form a villager filled in), the origin's answer passed back."""
        limits = limits_of(cfg.local_services)
        read = await read_form(request, limits.max_body)
        if isinstance(read, BodyRefused):
            lang = pages.pick_lang(request, cfg)
            return pages.message(cfg, lang, read.status, "title_error",
                                 pages.t_for(lang)(read.message_key,
                                                   limit=f"{limits.max_body / 1048576:g}"))
        req_h = forward.end_to_end(header_dict(request.headers))
        request_time = time.time()
        async with self.proxy.fetch_slot(request):
            mark_metered(request)  # the upstream's answer: shaped in the villager's class
            upstream = await self.proxy.open_upstream(
                service, request.method, url, self.proxy.forward_headers(req_h),
                read or None, interim=request)
            async with upstream:
                return await unsafe.pass_answer(self.proxy, request, service, url, req_h,
                                                upstream, request_time, rewrite)

    async def _submit(self, request: web.Request, cfg: Config, lang: str, service: GovService,
                      url: str, rest: str, query: str,
                      rewrite: Callable[[str], str]) -> web.StreamResponse:
        t = pages.t_for(lang)
        limits = limits_of(cfg.local_services)
        read = await read_form(request, limits.max_body)
        if isinstance(read, BodyRefused):
            limit_mb = f"{limits.max_body / 1048576:g}"
            return pages.message(cfg, lang, read.status, "title_error",
                                 t(read.message_key, limit=limit_mb))
        req_h = forward.end_to_end(header_dict(request.headers))
        headers = self.proxy.forward_headers(req_h)
        path_qs = "/" + rest + (f"?{query}" if query else "")
        # The one-time token the gateway put into the form (gateway/cache/forms.py): taken
        # out of the body, it fixes the key, so a refresh or a double tap is stored once.
        token, body = forms.take_token(read, req_h.get("content-type"))
        if token is not None:
            key = forms.idempotency_key(service.slug, request.method, path_qs, token)
            known = await asyncio.to_thread(self.outbox.find_key, key)
            if known is not None:
                return self._to_receipt(known)
        else:
            key = str(uuid.uuid4())
        headers["idempotency-key"] = key
        uncertain = False
        # A service known unreachable (its last connection failed) that queues forms: queue
        # at once rather than make the villager wait for a connect timeout.
        if self._health_of(service.slug).state != "offline" or not service.queue_posts:
            request_time = time.time()
            try:
                async with self.proxy.fetch_slot(request):
                    mark_metered(request)  # the upstream's answer: shaped in the villager's class
                    upstream = await self.proxy.open_upstream(service, request.method, url,
                                                              headers, body, interim=request)
            except UpstreamDown as exc:
                # No answer: queue it with the same idempotency key. Unless the
                # connection was never made (refused, unreachable, DNS, connect
                # timeout; the request always goes on a new connection), the
                # upstream may already have it: say so.
                uncertain = not isinstance(
                    exc.__cause__, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
            else:
                async with upstream:
                    # The origin's answer goes to the villager, 5xx included, except a 503
                    # for a service that queues forms: a 503 says "not processed" (RFC 9110
                    # §15.6.4, as delivery.RETRY_STATUSES), so the form is kept and
                    # delivered later instead of lost.
                    if upstream.status != 503 or not service.queue_posts:
                        return await unsafe.pass_answer(self.proxy, request, service, url,
                                                        req_h, upstream, request_time, rewrite)
        if not service.queue_posts:
            return self._unavailable(cfg, lang, service, "queue_off_body")
        try:
            sub = await asyncio.to_thread(
                self.outbox.enqueue, service.slug, request.method, path_qs,
                list(request.headers.items()), body, time.time(), key, uncertain=uncertain,
                client=request.remote, limits=limits)
        except SubmissionTooLarge:
            return pages.message(cfg, lang, 413, "title_error",
                                 t("too_large_form", limit=f"{limits.max_body / 1048576:g}"))
        except QueueFull as exc:
            log.warning("form for %s refused: %s", service.slug, exc)
            status, message_key = REFUSALS.get(exc.reason, (503, "queue_full_body"))
            return pages.message(cfg, lang, status, "queue_refused_title", t(message_key))
        log.info("queued %s %s for %s as %s", request.method, path_qs, service.slug, sub.ref)
        return self._to_receipt(sub)

    # -- prefetch ----------------------------------------------------------------------------

    async def prefetch(self, only_missing: bool = False) -> dict[str, Any]:
        """Warm every service's listed pages and forms within the configured rate cap, and
        keep them (see gateway/cache/prefetch.py for the rule)."""
        config = self._config()
        started = time.time()
        run = await self.prefetcher.run(config.local_services, only_missing)
        self._prefetched_for = config
        self.prefetch_runs += 1
        self.last_prefetch = {"started": started, **run}
        return self.last_prefetch

    async def probe(self) -> None:
        """One HEAD per service upstream, so the catalog's state and the delivery of
        queued forms follow the uplink even when no villager is browsing."""
        for service in self.services().values():
            if self._health_of(service.slug).state == "online" and self._recently_ok(service):
                continue
            with contextlib.suppress(UpstreamDown):
                resp = await self.proxy.open_upstream(service, "HEAD", service.upstream + "/", {},
                                                      fresh_connection=True)
                resp.release()

    def _recently_ok(self, service: GovService) -> bool:
        last = self._health_of(service.slug).last_ok
        return last is not None and time.time() - last < PROBE_INTERVAL

    async def scheduled_prefetch(self) -> None:
        """The reconcile loop calls this every minute: the first call after start warms
        what is missing (a fresh install), later ones run the nightly prefetch when due."""
        now = time.time()
        cfg = self._config()
        hour, minute = parse_time_of_day(cfg.local_services.prefetch_at)
        if self._next_prefetch is not None and now >= self._next_prefetch:
            self._next_prefetch = now + _seconds_until(hour, minute, cfg.site.timezone)
            await self.prefetch()
        elif (self._next_prefetch is None or self._prefetched_for is not cfg
                or "error" in self.last_prefetch.get("results", {}).values()):
            # First start, a reload that may list new pages, or a run the uplink cut short
            # (a box that booted offline): fetch what is missing now.
            if self._next_prefetch is None:
                self._next_prefetch = now + _seconds_until(hour, minute, cfg.site.timezone)
            await self.prefetch(only_missing=True)

    def uplink_lost(self) -> None:
        """The gateway's uplink went down: every service is offline from now on, so the
        catalog says so at once (a probe or a villager's request brings it back)."""
        now = time.time()
        for slug in self.services():
            self._health_of(slug).mark_offline(now, "uplink down")

    def health_states(self) -> dict[str, str]:
        return {slug: self._health_of(slug).state for slug in self.services()}

    # -- metrics ---------------------------------------------------------------------------------

    def status_json(self) -> dict[str, Any]:
        return {
            "enabled": self._config().local_services.enabled,
            "hostname": self._config().local_services.hostname,
            "cache": {**self.proxy.metrics.as_json(), **self.store.stats()},
            "services": {slug: {**self._health_of(slug).as_json(),
                                "cache": self.proxy.metrics.service_json(slug)}
                         for slug in self.services()},
            "outbox": self.outbox.counts(),
            "prefetch": {"runs": self.prefetch_runs, **self.last_prefetch},
        }


def _seconds_until(hour: int, minute: int, timezone: str) -> float:
    """Seconds until the next ``hour:minute`` on the site's clock (``site.timezone``)."""
    now = dt.datetime.now(timefmt.zone(timezone))
    target = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if target <= now:
        target += dt.timedelta(days=1)
    return (target - now).total_seconds()


def _location_rewriter(service: GovService) -> Callable[[str], str]:
    """Redirects into the upstream stay on layanan.desa/<slug>/."""
    base = urlsplit(service.upstream)

    def rewrite(location: str) -> str:
        parts = urlsplit(location)
        if parts.netloc == base.netloc and parts.scheme == base.scheme:
            path = parts.path
            if base.path and path.startswith(base.path):
                path = path[len(base.path):]
            query = f"?{parts.query}" if parts.query else ""
            return f"/{service.slug}/{path.lstrip('/')}{query}"
        return location

    return rewrite


def upstream_target(raw_path: str, raw_query: str) -> tuple[str, str] | None:
    """(path under the service's base, query) from a villager's raw (still %-encoded)
    request path ``/<slug>/<rest>`` and query.

    Works on the raw (still %-encoded) form, so an encoded "?" or "#" (%3F, %23) stays
    part of the path and never becomes a query or a fragment upstream. None (a 400)
    when any segment is "." or "..", also %-encoded (once or twice) or hidden behind an
    encoded slash or backslash: such a path could leave the service's base URL.
    """
    rest = raw_path.lstrip("/").partition("/")[2]
    decoded = unquote(unquote(rest)).replace("\\", "/")
    if any(part in (".", "..") for part in decoded.split("/")):
        return None
    return quote(rest, safe=_PATH_SAFE), quote(raw_query, safe=_PATH_SAFE + "?")


def _answer_started(request: web.Request) -> bool:
    """True once bytes of an answer went out on this request's connection."""
    writer = getattr(request, "writer", None)
    return bool(getattr(writer, "output_size", 0))
