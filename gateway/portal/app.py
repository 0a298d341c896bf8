"""The captive portal HTTP app (aiohttp).

Theory of operation: the same app listens on two ports, the portal port on
the gateway's LAN address and the redirect port that nftables sends
unauthorized clients' port-80 traffic to. It therefore decides by the Host
header, not by the port:

* Host is neither ``cfg.portal.hostname`` nor the LAN IP: the request was
  meant for somewhere on the internet (often an OS connectivity probe such
  as ``connectivitycheck.gstatic.com/generate_204``). Answer ``302`` to the
  portal with ``?url=<original URL>`` so the OS pops up its login window.
* Host is the portal: serve the login / status pages, the form posts and
  the RFC 8908 captive-portal API.

Who the client is comes from ``backend.identify(request.remote)``; the
backend owns sessions, vouchers and the firewall. The app owns the voucher
rate limiters and the form tokens. Two limits are checked before the backend
sees a code: the client's (every attempt counts, good or bad: simpler, and it
bounds backend work too) and the village's, which counts wrong codes only
(``portal.voucher_failures_per_minute``): every check takes a place in it and
a right code gives the place back. So an attacker rotating MACs gets no more
guesses than the village budget, while a bus of villagers typing right codes
never trips it. While wrong codes have spent it, every check waits (429 with
Retry-After) until the oldest one is a minute old: no code is looked at then,
or the guessing would simply go on; the wait ends by itself at most a minute
after the guessing stops, and terms logins and staff (``desanet clients auth``)
are not affected.

Login and logout forms carry a token bound to the client (:mod:`csrf`): a
post without a valid one, whatever its Origin says, gets the form again (403).
The RFC 8908 API takes no posts and needs none.

Pages use no JavaScript, inline their CSS, and every value is escaped by
Jinja2 autoescaping. All responses carry ``Cache-Control: no-store`` and a
strict Content-Security-Policy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from aiohttp import hdrs, web

from gateway.config.schema import Config
from gateway.errors import VoucherError
from gateway.portal.backend import ClientView, PortalBackend, PortalDenied
from gateway.portal.csrf import FIELD as TOKEN_FIELD
from gateway.portal.csrf import FormTokens
from gateway.portal.guard import body_deadline
from gateway.portal.i18n import (
    LANGUAGE_NAMES,
    denied_message_key,
    format_remaining,
    pick_language,
    supported,
    translator,
    voucher_message_key,
)
from gateway.portal.passthrough import RELAYED, BodyTooLarge, Passthrough
from gateway.portal.plan_view import plan_lines, plan_view
from gateway.portal.ratelimit import RateLimiter
from gateway.portal.templating import render
from gateway.portal.urls import (
    MAX_URL,
    _continue_url,
    _home,
    _query_voucher,
    _url_label,
    host_without_port,
    redirect,
    safe_url,
)
from gateway.portal.vouchers import normalize_code

log = logging.getLogger("desanet.portal")

MAX_BODY = 16 * 1024
LANG_COOKIE = "lang"
# Seconds between reloads of the "menyambungkan" page (see logged_in_foreign_page).
RECONNECT_RETRY = 5
VILLAGE = "village"  # the village-wide voucher budget's key
LOGGED_OUT = "keluar"  # ?keluar=1: the login page after a logout says "Anda sudah keluar"
LANG_COOKIE_AGE = 365 * 24 * 3600
CAPTIVE_JSON = "application/captive+json"
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; img-src data:"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LocalHosts = Mapping[str, Handler] | Callable[[], Mapping[str, Handler]]


def _form_text(form: Mapping[str, object], name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def sent_by_browser(request: web.Request) -> bool:
    """Whether a post carries what every current browser adds to a form post (Origin,
    Referer or Sec-Fetch-*). A login without a form token is accepted only without
    them: a villager's own tool (``curl -d action=terms``, as the docs show) has no
    page to take a token from, and a cross-site form in a browser always says so.
    Logout always needs the token (ending someone's session is the harm to stop)."""
    headers = request.headers
    return any(h in headers for h in (hdrs.ORIGIN, hdrs.REFERER, "Sec-Fetch-Site", "Sec-Fetch-Mode"))


class BadForm(Exception):
    """A form body that cannot be parsed (a multipart body without boundary or field name)."""


async def read_form(request: web.Request) -> Mapping[str, object]:
    """The posted form; BadForm for a body aiohttp cannot parse (a 400, never a 500)."""
    try:
        return await request.post()
    except ValueError as exc:  # aiohttp's multipart parser: missing boundary, name, ...
        raise BadForm(str(exc)) from exc


class Portal:
    """Request handlers; one instance per app, reachable as ``app[PORTAL_KEY]``."""

    def __init__(self, config: Config | Callable[[], Config], backend: PortalBackend,
                 limiter: RateLimiter, village: RateLimiter | None = None,
                 tokens: FormTokens | None = None) -> None:
        # The config is read on every request, so a reload that changes only
        # texts or modes needs no restart of the listeners (open connections stay).
        self._config = config if callable(config) else (lambda: config)
        self.backend = backend
        self.limiter = limiter
        # wrong voucher codes across every client (see the module docstring)
        if village is None:  # (a RateLimiter has a len(): no "or" here)
            village = RateLimiter(limit=self.cfg.portal.voucher_failures_per_minute,
                                  window=60.0, max_keys=1)
        self.village = village
        self.tokens = FormTokens() if tokens is None else tokens
        self._hosts: tuple[Config | None, frozenset[str]] = (None, frozenset())
        self.local_hosts: LocalHosts = {}
        # uplink: is the village uplink known to be down? (the daemon's UplinkService)
        self.uplink_down: Callable[[], bool] = lambda: False
        # stale: relays a logged-in client's request that its stale DNS answer sent here
        self.passthrough: Passthrough | None = None

    @property
    def cfg(self) -> Config:
        return self._config()

    @property
    def hosts(self) -> frozenset[str]:
        cfg = self._config()
        if self._hosts[0] is not cfg:
            self._hosts = (cfg, frozenset({cfg.portal.hostname.lower(), cfg.lan_ip}))
        return self._hosts[1]

    def local_handler(self, host: str) -> Handler | None:
        hosts = self.local_hosts() if callable(self.local_hosts) else self.local_hosts
        return hosts.get(host)

    # -- helpers -----------------------------------------------------------

    def is_portal_host(self, request: web.Request) -> bool:
        host = request.headers.get(hdrs.HOST)
        return host is not None and host_without_port(host) in self.hosts

    def language(self, request: web.Request, explicit: str | None = None) -> str:
        return pick_language(
            explicit or request.query.get("lang"),
            request.cookies.get(LANG_COOKIE),
            request.headers.get(hdrs.ACCEPT_LANGUAGE),
            self.cfg.site.language,
        )

    def cross_origin(self, request: web.Request) -> bool:
        """True when a form post visibly comes from another site.

        ``Origin: null`` is accepted: browsers send it for same-origin posts
        from pages with ``Referrer-Policy: no-referrer``, which ours have.
        ``Sec-Fetch-Site`` covers modern browsers in that case.
        """
        fetch_site = request.headers.get("Sec-Fetch-Site", "").lower()
        if fetch_site in ("cross-site", "same-site"):
            return True
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or origin.strip().lower() == "null":
            return False
        try:
            host = urlsplit(origin.strip()).hostname
        except ValueError:
            return True
        return host is None or host.rstrip(".") not in self.hosts

    def refuse_cross_origin(self, request: web.Request) -> web.Response:
        log.warning("refused cross-origin post to %s: ip=%s origin=%r sec-fetch-site=%r",
                    request.path, request.remote, request.headers.get(hdrs.ORIGIN),
                    request.headers.get("Sec-Fetch-Site"))
        lang = self.language(request)
        return self.message(lang, 403, "title_denied", translator(lang)("cross_origin"))

    def page(
        self,
        template: str,
        lang: str,
        *,
        title_key: str,
        status: int = 200,
        url: str | None = None,
        **context: object,
    ) -> web.Response:
        other = "en" if lang == "id" else "id"
        t = translator(lang)
        html = render(
            template,
            lang=lang,
            t=t,
            title=t(title_key),
            site_name=self.cfg.site.name,
            village=self.cfg.site.village,
            contact=self.cfg.site.contact,
            other_lang=other,
            other_lang_name=LANGUAGE_NAMES[other],
            other_lang_href=_home(url, lang=other),
            url=url,
            **{"uplink_down": self.uplink_down(), **self._services_link(), **context},
        )
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    def message(
        self, lang: str, status: int, title_key: str, text: str, url: str | None = None
    ) -> web.Response:
        return self.page(
            "message.html", lang, title_key=title_key, status=status, url=url,
            message=text, home_href=_home(url),
        )

    def login_page(
        self,
        lang: str,
        url: str | None,
        *,
        status: int = 200,
        error: str | None = None,
        voucher: str = "",
        logged_out: bool = False,
        client: ClientView | None = None,
    ) -> web.Response:
        mode = self.cfg.portal.mode
        terms = self.cfg.portal.terms_en if lang == "en" else self.cfg.portal.terms_id
        # quota: the kernel ended this phone's session as its voucher's data ran out
        cut = client is not None and client.session is None and client.voucher is not None \
            and client.voucher.quota_state == "cut"
        title = "title_quota_cut" if cut else "title_logged_out" if logged_out else "title_login"
        notice = "quota_cut" if cut else "logged_out" if logged_out else None
        return self.page(
            "login.html", lang, title_key=title,
            status=status, url=url, error=error, terms=terms, voucher=voucher[:24],
            notice=translator(lang)(notice) if notice else None,
            allow_terms=mode in ("terms", "both"), allow_voucher=mode in ("voucher", "both"),
            local_services_url=self.local_services_url(), csrf=self.token(client),
            trial_minutes=self.cfg.portal.trial_minutes,  # office: the terms button's trial
        )

    def local_services_url(self) -> str | None:
        """The offline services' start page, linked from the portal when they are on.

        Served by this same app (see ``local_hosts``), so on the portal's HTTP port.
        """
        cfg = self.cfg
        if not cfg.local_services.enabled:
            return None
        port = "" if cfg.portal.http_port == 80 else f":{cfg.portal.http_port}"
        return f"http://{cfg.local_services.hostname}{port}/"

    async def client(self, request: web.Request) -> ClientView:
        return await self.backend.identify(request.remote or "")

    def token(self, client: ClientView | None) -> str:
        """The form token for ``client``'s pages ("" when unknown: such a post is refused)."""
        return "" if client is None else self.tokens.issue(client.ip, client.mac)

    def token_valid(self, form: Mapping[str, object], client: ClientView) -> bool:
        return self.tokens.valid(_form_text(form, TOKEN_FIELD), client.ip, client.mac)

    def refuse_token(self, request: web.Request, client: ClientView, lang: str,
                     url: str | None) -> web.Response:
        """403 with the form again (a fresh token): an old page after a restart, or a
        post another site made the villager's browser send."""
        log.warning("refused %s without a valid form token: ip=%s mac=%s origin=%r",
                    request.path, client.ip, client.mac, request.headers.get(hdrs.ORIGIN))
        error = translator(lang)("form_expired")
        if self.has_session(client):
            return self.status_page(lang, url, client, status=403, error=error)
        return self.login_page(lang, url, status=403, error=error, client=client)

    def status_page(self, lang: str, url: str | None, client: ClientView, *,
                    status: int = 200, error: str | None = None) -> web.Response:
        assert client.session is not None
        remaining = client.session.remaining(self.backend.now())
        view = plan_view(self.cfg, client.session, client.voucher, self.backend.now())
        cut = view is not None and view.quota_state == "cut"
        return self.page(
            "status.html", lang, title_key="title_quota_cut" if cut else "title_status",
            status=status, url=safe_url(url),
            continue_url=None if cut else _continue_url(url),
            continue_label=_url_label(_continue_url(url)),
            remaining=format_remaining(remaining, lang), error=error, cut=cut,
            plan_lines=plan_lines(view, lang), contact_line=self.cfg.site.contact,
            local_services_url=self.local_services_url(), csrf=self.token(client),
        )

    def has_session(self, client: ClientView) -> bool:
        return client.session is not None and client.session.remaining(self.backend.now()) > 0

    # -- uplink down ---------------------------------------------------------

    def _services_link(self) -> dict[str, str | None]:
        ls = self.cfg.local_services
        return {"services_url": f"http://{ls.hostname}/" if ls.enabled else None,
                "services_host": ls.hostname}

    async def logged_in_foreign_page(self, request: web.Request, host: str
                                     ) -> web.StreamResponse | None:
        """What an authorized client gets when its request for an outside site reached us;
        None when the client is not logged in (it goes to the portal as always).

        While the uplink is down (DNS sends outside names to us then): "Internet desa sedang
        terputus". Otherwise the browser still holds the answer our pre-login resolver gave
        for that name (Chrome keeps it up to a minute whatever the TTL): the gateway fetches
        the page from the real site (:mod:`passthrough`); what it may not relay gets a page
        that says so and reloads the same address until the browser asks DNS again.
        """
        client = await self.client(request)
        trusted = client.mac is not None and client.mac in self.cfg.access.trusted_macs
        if not (trusted or self.has_session(client)):
            return None
        original = safe_url(f"http://{host}{request.raw_path}")
        down = self.uplink_down()
        if not down and self.passthrough is not None:
            try:
                relayed = await self.passthrough.relay(request, host)
            except BodyTooLarge:
                lang = self.language(request)
                return self.message(lang, 413, "title_error", translator(lang)("too_large"))
            if relayed is not None:
                return relayed
        response = self.page(
            "offline.html" if down else "reconnect.html", "id",
            title_key="offline_title" if down else "reconnect_title", url=None, uplink_down=False,
            blocks=[(lang, translator(lang)) for lang in ("id", "en")], host=host_without_port(host),
            retry_url=original, portal_url=self.cfg.portal_url, portal_host=self.cfg.portal.hostname,
        )
        if not down and original:
            response.headers["Refresh"] = f"{RECONNECT_RETRY}; url={original}"
        response.force_close()  # the next request may go to the real site again
        return response

    # -- handlers ----------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        query_lang = supported(request.query.get("lang"))
        lang = self.language(request)
        client = await self.client(request)
        if client.session is not None and self.has_session(client):
            response = self.status_page(lang, request.query.get("url"), client)
        else:
            # sheet: a voucher card's QR code opens /?voucher=CODE; a valid code is filled in.
            response = self.login_page(lang, safe_url(request.query.get("url")),
                                       logged_out=request.query.get(LOGGED_OUT) == "1",
                                       voucher=_query_voucher(request.query.get("voucher")),
                                       client=client)
        if query_lang:
            response.set_cookie(
                LANG_COOKIE, query_lang, max_age=LANG_COOKIE_AGE, path="/",
                httponly=True, samesite="Lax",
            )
        return response

    async def login_get(self, request: web.Request) -> web.Response:
        return redirect(303, _home(safe_url(request.query.get("url"))))

    async def login(self, request: web.Request) -> web.Response:
        if self.cross_origin(request):
            return self.refuse_cross_origin(request)
        form = await read_form(request)
        lang = self.language(request, supported(_form_text(form, "lang")))
        url = safe_url(_form_text(form, "url"))
        action = _form_text(form, "action")
        t = translator(lang)
        client = await self.client(request)
        # A wrong token is always refused; none at all only from a browser (see sent_by_browser).
        if not self.token_valid(form, client) and (
                _form_text(form, TOKEN_FIELD) or sent_by_browser(request)):
            return self.refuse_token(request, client, lang, url)
        if self.has_session(client):
            return redirect(303, _home(url))
        mode = self.cfg.portal.mode
        try:
            if action == "terms":
                if mode == "voucher":
                    raise PortalDenied("mode")
                await self.backend.login_terms(client)
            elif action == "voucher":
                if mode == "terms":
                    raise PortalDenied("mode")
                failed = await self._voucher(client, _form_text(form, "voucher"), lang, url)
                if failed is not None:
                    return failed
            else:
                return self.message(lang, 400, "title_error", t("bad_request"), url)
        except PortalDenied as exc:
            log.warning("login refused: reason=%s action=%s ip=%s mac=%s",
                        exc.reason, action, client.ip, client.mac)
            return self.message(lang, 403, "title_denied", t(denied_message_key(exc.reason)), url)
        log.info("login: action=%s ip=%s mac=%s", action, client.ip, client.mac)
        return redirect(303, _home(url))

    async def _voucher(
        self, client: ClientView, raw: str, lang: str, url: str | None
    ) -> web.Response | None:
        """Redeem a voucher; None on success, else the error page to send."""
        t = translator(lang)
        key = client.mac or client.ip
        now = self.limiter.now()
        if not self.limiter.allow(key, now):
            retry = max(1, self.limiter.retry_after(key))
            log.warning("voucher rate limit hit: ip=%s mac=%s retry_after=%ds",
                        client.ip, client.mac, retry)
            return self._limited(lang, url, raw, client, t("rate_limited", seconds=retry), retry)
        try:
            code = normalize_code(raw)  # a malformed code is no guess: no village place
        except VoucherError as exc:
            return self._wrong(lang, url, raw, client, exc.reason)
        taken = self.village.now()
        if not self.village.allow(VILLAGE, taken):
            self.limiter.refund(key, now)  # no code was looked at: not this client's attempt
            retry = max(1, self.village.retry_after(VILLAGE))
            log.warning("village voucher limit hit (%d wrong codes a minute): ip=%s mac=%s "
                        "retry_after=%ds", self.village.limit, client.ip, client.mac, retry)
            return self._limited(lang, url, raw, client,
                                 t("rate_limited_village", seconds=retry), retry)
        try:
            await self.backend.login_voucher(client, code)
        except VoucherError as exc:
            return self._wrong(lang, url, raw, client, exc.reason, exc.devices)
        except BaseException:
            # not a wrong code (the store or the kernel failed): no guess was answered
            self.village.refund(VILLAGE, taken)
            raise
        self.village.refund(VILLAGE, taken)  # a right code costs the village nothing
        return None

    def _wrong(self, lang: str, url: str | None, raw: str, client: ClientView,
               reason: str, devices: int = 0) -> web.Response:
        log.warning("voucher login failed: reason=%s ip=%s mac=%s", reason, client.ip, client.mac)
        t = translator(lang)
        text = t("voucher_in_use_n", n=devices) if reason == "in_use" and devices > 1 \
            else t(voucher_message_key(reason))
        return self.login_page(lang, url, status=403, voucher=raw, client=client, error=text)

    def _limited(self, lang: str, url: str | None, raw: str, client: ClientView, error: str,
                 retry: int) -> web.Response:
        response = self.login_page(lang, url, status=429, error=error, voucher=raw, client=client)
        response.headers[hdrs.RETRY_AFTER] = str(retry)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        if self.cross_origin(request):
            return self.refuse_cross_origin(request)
        form = await read_form(request)
        client = await self.client(request)
        if not self.token_valid(form, client):
            lang = self.language(request, supported(_form_text(form, "lang")))
            return self.refuse_token(request, client, lang, None)
        if client.session is not None:
            await self.backend.logout(client)
            log.info("logout: ip=%s mac=%s", client.ip, client.mac)
        # Post/Redirect/Get to a page that says so: a refresh shows it again, logs out nothing.
        return redirect(303, _home(None, **{LOGGED_OUT: "1"}))

    async def captive_api(self, request: web.Request) -> web.Response:
        """RFC 8908 captive portal API."""
        client = await self.client(request)
        # RFC 8908: the user portal "MUST be accessed over TLS"; https when a certificate is set.
        portal_url = self.cfg.portal_https_url or self.cfg.portal_url
        body: dict[str, object] = {"captive": True, "user-portal-url": portal_url}
        if client.mac is not None and client.mac in self.cfg.access.trusted_macs:
            # The firewall lets trusted MACs through without a session; saying
            # "captive" would make the phone pop up a sign-in it does not need.
            body["captive"] = False
        elif client.session is not None and self.has_session(client):
            view = plan_view(self.cfg, client.session, client.voucher, self.backend.now())
            # plans: a voucher cut off for its quota is captive again (its page says why)
            body["captive"] = view is not None and view.quota_state == "cut"
            body["seconds-remaining"] = client.session.remaining(self.backend.now()) \
                if view is None else view.seconds_remaining
            if view is not None and view.data_left is not None:
                body["bytes-remaining"] = view.data_left
        body["can-extend-session"] = False
        response = web.Response(body=json.dumps(body).encode(), content_type=CAPTIVE_JSON)
        response.headers[hdrs.CACHE_CONTROL] = "private, no-store"
        return response

    # -- middlewares and signals -------------------------------------------

    @web.middleware
    async def redirect_foreign(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.is_portal_host(request):
            return await handler(request)
        local = self.local_handler(host_without_port(request.headers.get(hdrs.HOST, "")))
        if local is not None:
            # A local service on the gateway (e.g. the government-services
            # catalog): its own pages, headers and caching rules.
            request[LOCAL_REQUEST] = True
            return await local(request)
        target = self.cfg.portal_url
        host = request.headers.get(hdrs.HOST)
        if host:
            page = await self.logged_in_foreign_page(request, host)
            if page is not None:
                return page
        if host:
            original = f"http://{host}{request.raw_path}"
            if len(original) <= MAX_URL:
                target += "?" + urlencode({"url": original})
        response = redirect(302, target)
        # The connection was meant for another host and reached us only because the
        # client is not logged in yet: a browser that kept it alive would send its
        # next request (after the login) here again and land on the portal.
        response.force_close()
        return response

    @web.middleware
    async def error_pages(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPNotFound:
            lang = self.language(request)
            return self.message(lang, 404, "title_not_found", translator(lang)("not_found"))
        except web.HTTPRequestEntityTooLarge:
            lang = self.language(request)
            return self.message(lang, 413, "title_error", translator(lang)("too_large"))
        except BadForm as exc:
            log.warning("unreadable form in %s %s from %s: %s", request.method, request.path,
                        request.remote, exc)
            lang = self.language(request)
            return self.message(lang, 400, "title_error", translator(lang)("bad_request"))
        except (web.HTTPException, ConnectionError):
            raise  # a client that went away (or a body cut for stalling) is no failure of ours
        except Exception:
            # A backend failure (store, firewall): say so kindly, keep the traceback.
            log.exception("portal request %s %s failed", request.method, request.path)
            lang = self.language(request)
            return self.message(lang, 500, "title_error", translator(lang)("server_error"))

    @staticmethod
    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        if request.get(LOCAL_REQUEST) or request.get(RELAYED):
            return
        response.headers.setdefault(hdrs.CACHE_CONTROL, "no-store")
        response.headers.update(SECURITY_HEADERS)


PORTAL_KEY = web.AppKey("desanet_portal", Portal)
# request key: the request was for one of the gateway's own names
LOCAL_REQUEST: Any = (web.RequestKey("desanet_local_host", bool) if hasattr(web, "RequestKey")
                      else "desanet_local_host")  # aiohttp < 3.13: a plain key


def create_portal_app(
    cfg: Config | Callable[[], Config],
    backend: PortalBackend,
    *,
    limiter: RateLimiter | None = None,
    village: RateLimiter | None = None,
    tokens: FormTokens | None = None,
    local_hosts: Mapping[str, Handler] | Callable[[], Mapping[str, Handler]] | None = None,
    uplink_down: Callable[[], bool] | None = None,
    passthrough: Passthrough | None = None,
) -> web.Application:
    """The portal app; serve it on both the portal port and the redirect port.

    ``cfg`` may be a callable returning the running config (read per request).
    ``local_hosts`` maps other host names served by the gateway itself (the
    local services catalog) to the handler that answers all their requests;
    a callable is asked per request (the catalog may be switched on by a reload).
    ``passthrough`` relays a logged-in client's request for an outside site that a
    stale pre-login DNS answer sent here (without it: the "menyambungkan" page).
    """
    current = cfg() if callable(cfg) else cfg
    if limiter is None:
        limiter = RateLimiter(limit=current.portal.voucher_attempts_per_minute, window=60.0)
    portal = Portal(cfg, backend, limiter, village, tokens)
    if callable(local_hosts):
        portal.local_hosts = local_hosts
    else:
        portal.local_hosts = {k.lower(): v for k, v in (local_hosts or {}).items()}
    if uplink_down is not None:
        portal.uplink_down = uplink_down
    app = web.Application(
        client_max_size=MAX_BODY,
        middlewares=[body_deadline, portal.redirect_foreign, portal.error_pages]
    )
    app[PORTAL_KEY] = portal
    app.router.add_get("/", portal.index)
    app.router.add_get("/login", portal.login_get)
    app.router.add_post("/login", portal.login)
    app.router.add_post("/logout", portal.logout)
    app.router.add_get("/api/captive", portal.captive_api)
    app.on_response_prepare.append(portal.add_headers)
    if passthrough is not None:
        portal.passthrough = passthrough

        async def close_relay(_: web.Application) -> None:
            await passthrough.close()
        app.on_cleanup.append(close_relay)
    return app
