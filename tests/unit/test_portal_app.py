"""The portal HTTP app against a fake backend (sessions in a dict)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import ClientResponse, FormData
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import Config, parse_config
from gateway.errors import VoucherError
from gateway.model import Session
from gateway.portal.app import create_portal_app, host_without_port, safe_url
from gateway.portal.backend import ClientView, PortalDenied
from gateway.portal.csrf import FormTokens
from gateway.portal.ratelimit import RateLimiter

MAC = "02:00:00:00:00:01"
NOW = 1_700_000_000
HOSTILE = "<script>alert(1)</script>"
PORTAL = {"Host": "portal.desa"}


def make_cfg(**portal: Any) -> Config:
    site = portal.pop("site", {"name": "Hotspot Desa Sukamaju", "village": "Desa Sukamaju"})
    return parse_config(
        {
            "site": site,
            "network": {"lan_interface": "br-lan", "wan_interface": "wan0",
                        "lan_address": "10.42.0.1/24"},
            "dhcp": {"range_start": "10.42.0.100", "range_end": "10.42.0.250"},
            "portal": portal,
        }
    )


class FakeBackend:
    """Keeps sessions in a dict keyed by MAC; vouchers map code -> failure reason or None."""

    def __init__(self) -> None:
        self.t = NOW
        self.macs: dict[str, str | None] = {"127.0.0.1": MAC}
        self.sessions: dict[str, Session] = {}
        self.vouchers: dict[str, str | None] = {
            "ABCDE-FGHJK": None, "REVKD-22222": "revoked", "EXPRD-22222": "expired",
            "NUSE2-22222": "in_use",
        }
        self.deny: str | None = None
        self.calls: list[tuple[str, str]] = []

    def now(self) -> int:
        return self.t

    async def identify(self, ip: str) -> ClientView:
        mac = self.macs.get(ip)
        session = self.sessions.get(mac) if mac else None
        return ClientView(ip=ip, mac=mac, session=session)

    def _open(self, client: ClientView, source: str, code: str | None = None) -> Session:
        if self.deny:
            raise PortalDenied(self.deny)
        if client.mac is None:
            raise PortalDenied("no_mac")
        session = Session(mac=client.mac, ip=client.ip, started=self.t, expires=self.t + 4 * 3600,
                          idle_timeout=1800, source=cast(Any, source), voucher=code)
        self.sessions[client.mac] = session
        return session

    async def login_terms(self, client: ClientView) -> Session:
        self.calls.append(("terms", client.ip))
        return self._open(client, "terms")

    async def login_voucher(self, client: ClientView, code: str) -> Session:
        self.calls.append(("voucher", code))
        if code not in self.vouchers:
            raise VoucherError("unknown")
        reason = self.vouchers[code]
        if reason:
            raise VoucherError(reason)
        return self._open(client, "voucher", code)

    async def logout(self, client: ClientView) -> None:
        self.calls.append(("logout", client.ip))
        if client.mac:
            self.sessions.pop(client.mac, None)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@asynccontextmanager
async def portal(
    cfg: Config | None = None,
    backend: FakeBackend | None = None,
    limiter: RateLimiter | None = None,
    village: RateLimiter | None = None,
    tokens: FormTokens | None = None,
) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_portal_app(cfg or make_cfg(), backend or FakeBackend(), limiter=limiter,
                            village=village, tokens=tokens)
    async with TestClient(TestServer(app)) as client:
        yield client


async def get(client: TestClient[Any, Any], path: str, **kw: Any) -> ClientResponse:
    headers = {**PORTAL, **kw.pop("headers", {})}
    return await client.get(path, headers=headers, allow_redirects=False, **kw)


TOKEN = re.compile(r'name="csrf" value="([0-9a-f]*)"')


async def form_token(client: TestClient[Any, Any]) -> str:
    """The form token of this client's portal page, as a browser would post it."""
    page = await get(client, "/")
    found = TOKEN.search(await page.text())
    assert found, "the portal page has no form token"
    return found.group(1)


async def post(client: TestClient[Any, Any], path: str, data: Any, **kw: Any) -> ClientResponse:
    """A form post; to /login and /logout with this client's form token unless data has one."""
    headers = {**PORTAL, **kw.pop("headers", {})}
    if path in ("/login", "/logout") and isinstance(data, dict) and "csrf" not in data:
        data = {**data, "csrf": await form_token(client)}
    return await client.post(path, data=data, headers=headers, allow_redirects=False, **kw)


def assert_portal_headers(resp: ClientResponse) -> None:
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["Content-Security-Policy"] == (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; img-src data:"
    )


# -- redirects ---------------------------------------------------------------

@pytest.mark.parametrize(
    "probe",
    [
        "http://connectivitycheck.gstatic.com/generate_204",
        "http://captive.apple.com/hotspot-detect.html",
        "http://www.msftconnecttest.com/connecttest.txt",
        "http://detectportal.firefox.com/canonical.html",
        "http://example.com/a/b?x=1&y=%20z",
    ],
)
async def test_foreign_hosts_redirect_to_portal(probe: str) -> None:
    parts = urlsplit(probe)
    async with portal() as client:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        resp = await get(client, path, headers={"Host": parts.netloc})
        assert resp.status == 302
        location = resp.headers["Location"]
        assert location.startswith("http://portal.desa/?url=")
        assert parse_qs(urlsplit(location).query)["url"] == [probe]
        assert_portal_headers(resp)


async def test_a_redirect_of_a_foreign_host_closes_its_connection() -> None:
    """A browser must not reuse the redirected connection after the login (it would land
    on the portal again); the portal's own answers keep theirs."""
    async with portal() as client:
        resp = await get(client, "/", headers={"Host": "example.com"})
        assert resp.status == 302 and resp.headers.get("Connection", "").lower() == "close"
        own = await get(client, "/", headers={"Host": "portal.desa"})  # positive control
        assert own.status == 200 and own.headers.get("Connection", "").lower() != "close"


async def test_redirect_uses_portal_port_and_covers_posts() -> None:
    async with portal(make_cfg(http_port=8080, redirect_port=2050)) as client:
        resp = await post(client, "/x", {"a": "b"}, headers={"Host": "evil.example:2050"})
        assert resp.status == 302
        assert resp.headers["Location"] == (
            "http://portal.desa:8080/?url=http%3A%2F%2Fevil.example%3A2050%2Fx"
        )


@pytest.mark.parametrize("host", ["portal.desa", "PORTAL.DESA:2050", "portal.desa.", "10.42.0.1",
                                  "10.42.0.1:80"])
async def test_portal_host_is_served(host: str) -> None:
    async with portal() as client:
        resp = await get(client, "/", headers={"Host": host})
        assert resp.status == 200


def test_host_without_port() -> None:
    assert host_without_port("Portal.Desa:80") == "portal.desa"
    assert host_without_port("[fe80::1]:2050") == "fe80::1"
    assert host_without_port("10.42.0.1") == "10.42.0.1"


# -- pages -------------------------------------------------------------------

@pytest.mark.parametrize(("lang", "words"), [("id", "Setuju dan sambungkan"),
                                             ("en", "Accept and connect")])
async def test_login_page_escapes_everything(lang: str, words: str) -> None:
    cfg = make_cfg(site={"name": HOSTILE, "village": "Desa <b>X</b>", "contact": "<i>c</i>"},
                   terms_id="Syarat \"'& <img src=x>", terms_en="Terms \"'& <img src=x>")
    async with portal(cfg) as client:
        resp = await get(client, f"/?lang={lang}&url=http://example.com/%22%3E%3Cscript%3E")
        body = await resp.text()
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
        assert_portal_headers(resp)
        assert f'<html lang="{lang}">' in body
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in body
        assert "<script" not in body
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
        assert "Desa &lt;b&gt;X&lt;/b&gt;" in body
        assert "&lt;i&gt;c&lt;/i&gt;" in body
        assert "&#34;&#39;&amp; &lt;img src=x&gt;" in body
        assert "<img" not in body
        assert words in body
        assert 'name="voucher"' in body
        assert ("English" if lang == "id" else "Bahasa Indonesia") in body
        assert len(await resp.read()) < 30 * 1024
        assert 'value="http://example.com/&#34;&gt;&lt;script&gt;"' in body


async def test_language_cookie_and_accept_language() -> None:
    async with portal() as client:
        resp = await get(client, "/", headers={"Accept-Language": "en-US,en;q=0.9"})
        assert '<html lang="en">' in await resp.text()
        resp = await get(client, "/?lang=id", headers={"Accept-Language": "en-US"})
        assert resp.cookies["lang"].value == "id"
        assert '<html lang="id">' in await resp.text()
        # The cookie now wins over Accept-Language.
        resp = await get(client, "/", headers={"Accept-Language": "en-US"})
        body = await resp.text()
        assert '<html lang="id">' in body
        assert 'href="/?lang=en"' in body
    async with portal(make_cfg(site={"name": "S", "village": "V", "language": "en"})) as client:
        assert '<html lang="en">' in await (await get(client, "/")).text()


async def test_not_found_page_is_translated() -> None:
    async with portal() as client:
        resp = await get(client, "/nope")
        assert resp.status == 404
        assert "Halaman tidak ditemukan" in await resp.text()
        assert_portal_headers(resp)
        resp = await get(client, "/nope?lang=en")
        assert "Page not found" in await resp.text()


# -- RFC 8908 ----------------------------------------------------------------

async def test_captive_api_before_and_after_login() -> None:
    backend = FakeBackend()
    async with portal(backend=backend) as client:
        resp = await get(client, "/api/captive")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/captive+json"
        assert resp.headers["Cache-Control"] == "private, no-store"
        assert json.loads(await resp.read()) == {
            "captive": True, "user-portal-url": "http://portal.desa/", "can-extend-session": False,
        }
        await post(client, "/login", {"action": "terms"})
        backend.t += 600
        data = json.loads(await (await get(client, "/api/captive")).read())
        assert data == {"captive": False, "user-portal-url": "http://portal.desa/",
                        "seconds-remaining": 4 * 3600 - 600, "can-extend-session": False}


async def test_captive_api_trusted_mac_is_not_captive() -> None:
    base = make_cfg()
    cfg = base.model_copy(update={"access": base.access.model_copy(update={"trusted_macs": [MAC]})})
    async with portal(cfg=cfg) as client:
        data = json.loads(await (await get(client, "/api/captive")).read())
        assert data == {"captive": False, "user-portal-url": "http://portal.desa/",
                        "can-extend-session": False}


# -- login / logout ----------------------------------------------------------

async def test_terms_login_status_and_logout() -> None:
    backend = FakeBackend()
    async with portal(backend=backend) as client:
        resp = await post(client, "/login",
                          {"action": "terms", "url": "http://example.com/page", "lang": "id"})
        assert resp.status == 303
        assert resp.headers["Location"] == "/?url=http%3A%2F%2Fexample.com%2Fpage"
        assert backend.calls == [("terms", "127.0.0.1")]
        backend.t += 61
        resp = await get(client, resp.headers["Location"])
        body = await resp.text()
        assert "Anda sudah terhubung ke internet." in body
        assert "Sisa waktu: 3 jam 58 menit" in body
        assert 'href="http://example.com/page"' in body
        assert 'action="/logout"' in body
        assert_portal_headers(resp)
        # A second login post just goes back to the status page.
        resp = await post(client, "/login", {"action": "terms"})
        assert resp.status == 303 and len(backend.calls) == 1
        resp = await post(client, "/logout", {"lang": "id"})
        assert resp.status == 303 and resp.headers["Location"] == "/?keluar=1"
        assert backend.sessions == {}
        assert "Setuju dan sambungkan" in await (await get(client, "/")).text()


async def test_status_page_in_english_hides_probe_continue_link() -> None:
    backend = FakeBackend()
    async with portal(backend=backend) as client:
        await post(client, "/login", {"action": "terms"})
        resp = await get(client, "/?lang=en&url=http://connectivitycheck.gstatic.com/generate_204")
        body = await resp.text()
        assert "You are connected to the internet." in body
        assert "Time remaining: 4 hours" in body
        assert "Continue to" not in body


async def test_voucher_login_normalizes_code() -> None:
    backend = FakeBackend()
    async with portal(backend=backend) as client:
        resp = await post(client, "/login", {"action": "voucher", "voucher": " abcde fghjk "})
        assert resp.status == 303
        assert backend.calls == [("voucher", "ABCDE-FGHJK")]
        assert backend.sessions[MAC].voucher == "ABCDE-FGHJK"


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("ZZZZZ-ZZZZZ", "Kode voucher tidak dikenal"),
        ("REVKD-22222", "sudah dibatalkan"),
        ("EXPRD-22222", "sudah habis"),
        ("NUSE2-22222", "sedang dipakai"),
        ("OOOOO-11111", "tidak sesuai format"),
    ],
)
async def test_wrong_voucher_is_403_and_logged(
    code: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FakeBackend()
    async with portal(backend=backend) as client:
        with caplog.at_level(logging.WARNING, logger="desanet.portal"):
            resp = await post(client, "/login", {"action": "voucher", "voucher": code})
        body = await resp.text()
        assert resp.status == 403
        assert message in body
        assert f'value="{code}"' in body  # what was typed stays in the field
        assert backend.sessions == {}
        record = caplog.records[-1]
        assert record.levelno == logging.WARNING
        assert "127.0.0.1" in record.getMessage() and MAC in record.getMessage()


async def test_sixth_voucher_attempt_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend()
    clock = Clock()
    limiter = RateLimiter(limit=5, window=60, clock=clock)
    async with portal(backend=backend, limiter=limiter) as client:
        for _ in range(5):
            resp = await post(client, "/login", {"action": "voucher", "voucher": "ZZZZZ-ZZZZZ"})
            assert resp.status == 403
        clock.t = 20
        with caplog.at_level(logging.WARNING, logger="desanet.portal"):
            resp = await post(client, "/login",
                              {"action": "voucher", "voucher": "ABCDE-FGHJK", "lang": "en"})
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "40"
        assert "Too many voucher attempts. Wait 40 seconds" in await resp.text()
        assert_portal_headers(resp)
        assert len(backend.calls) == 5  # the backend never saw the sixth code
        assert "rate limit" in caplog.records[-1].getMessage()
        assert MAC in caplog.records[-1].getMessage()
        # Another device is not affected.
        backend.macs["127.0.0.1"] = "02:00:00:00:00:02"
        resp = await post(client, "/login", {"action": "voucher", "voucher": "ZZZZZ-ZZZZZ"})
        assert resp.status == 403
        # After the window the first device may try again.
        backend.macs["127.0.0.1"] = MAC
        clock.t = 60
        resp = await post(client, "/login", {"action": "voucher", "voucher": "ABCDE-FGHJK"})
        assert resp.status == 303


async def test_default_limit_comes_from_config() -> None:
    backend = FakeBackend()
    async with portal(make_cfg(voucher_attempts_per_minute=2), backend) as client:
        statuses = [
            (await post(client, "/login", {"action": "voucher", "voucher": "x"})).status
            for _ in range(3)
        ]
        assert statuses == [403, 403, 429]


async def test_rate_limit_key_is_ip_without_mac() -> None:
    backend = FakeBackend()
    backend.macs = {}
    limiter = RateLimiter(limit=1, window=60, clock=Clock())
    async with portal(backend=backend, limiter=limiter) as client:
        await post(client, "/login", {"action": "voucher", "voucher": "x"})
        await post(client, "/login", {"action": "voucher", "voucher": "x"})
        assert limiter.retry_after("127.0.0.1") == 60


@pytest.mark.parametrize(
    ("reason", "message"),
    [("full", "Hotspot sedang penuh"), ("blocked", "Perangkat ini diblokir"),
     ("no_mac", "tidak dikenali"), ("weird", "Anda tidak dapat masuk saat ini")],
)
async def test_portal_denied(reason: str, message: str, caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend()
    backend.deny = reason
    async with portal(backend=backend) as client:
        with caplog.at_level(logging.WARNING, logger="desanet.portal"):
            resp = await post(client, "/login", {"action": "terms"})
        assert resp.status == 403
        assert message in await resp.text()
        assert reason in caplog.records[-1].getMessage()


async def test_voucher_mode_hides_and_refuses_terms() -> None:
    backend = FakeBackend()
    async with portal(make_cfg(mode="voucher"), backend) as client:
        body = await (await get(client, "/")).text()
        assert 'value="terms"' not in body
        assert "Setuju dan sambungkan" not in body
        assert 'name="voucher"' in body
        resp = await post(client, "/login", {"action": "terms"})
        assert resp.status == 403
        assert "Cara masuk ini tidak tersedia" in await resp.text()
        assert backend.calls == []


async def test_terms_mode_hides_and_refuses_vouchers() -> None:
    backend = FakeBackend()
    async with portal(make_cfg(mode="terms"), backend) as client:
        body = await (await get(client, "/")).text()
        assert 'name="voucher"' not in body
        assert 'value="terms"' in body
        resp = await post(client, "/login", {"action": "voucher", "voucher": "ABCDE-FGHJK"})
        assert resp.status == 403
        assert backend.calls == []


async def test_bad_action_and_get_login() -> None:
    async with portal() as client:
        resp = await post(client, "/login", {"action": "hack"})
        assert resp.status == 400
        resp = await get(client, "/login")
        assert resp.status == 303 and resp.headers["Location"] == "/"


# -- hardening ---------------------------------------------------------------

@pytest.mark.parametrize(
    "bad",
    ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,<b>x</b>", "//evil.example/",
     "http:\\\\evil.example", "http://", "ftp://example.com/", "http://exa mple.com/",
     "/relative", "http://example.com/\r\nSet-Cookie:x=1"],
)
async def test_no_open_redirect(bad: str) -> None:
    assert safe_url(bad) is None
    backend = FakeBackend()
    async with portal(backend=backend) as client:
        resp = await post(client, "/login", {"action": "terms", "url": bad})
        assert resp.status == 303
        assert resp.headers["Location"] == "/"
        body = await (await get(client, "/", params={"url": bad})).text()
        assert "Lanjut ke" not in body
        assert "javascript:" not in body.lower()


def test_safe_url_accepts_http_and_https() -> None:
    assert safe_url("http://example.com/x?y=1") == "http://example.com/x?y=1"
    assert safe_url("HTTPS://example.com") == "HTTPS://example.com"
    assert safe_url("http://example.com/" + "a" * 3000) is None


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "http://portal.desa.evil.example"}, 403),
        ({"Origin": "garbage"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Origin": "http://portal.desa"}, 303),
        ({"Origin": "http://10.42.0.1:2050"}, 303),
        ({"Origin": "null", "Sec-Fetch-Site": "same-origin"}, 303),
        ({}, 303),
    ],
)
async def test_cross_origin_posts_are_refused(headers: dict[str, str], status: int) -> None:
    backend = FakeBackend()
    async with portal(backend=backend) as client:
        resp = await post(client, "/login", {"action": "terms"}, headers=headers)
        assert resp.status == status
        assert bool(backend.calls) == (status == 303)
        resp = await post(client, "/logout", {}, headers=headers)
        assert resp.status == status
        assert ("logout", "127.0.0.1") in backend.calls or status == 403


async def test_request_body_is_limited() -> None:
    backend = FakeBackend()
    async with portal(backend=backend) as client:
        resp = await post(client, "/login", {"action": "voucher", "voucher": "A" * 20_000})
        assert resp.status == 413
        assert backend.calls == []
        assert_portal_headers(resp)


async def test_pages_contain_no_script_and_stay_small() -> None:
    backend = FakeBackend()
    cfg = make_cfg(terms_id="x" * 4000, terms_en="y" * 4000,
                   site={"name": "n" * 80, "village": "v" * 80, "contact": "c" * 200})
    async with portal(cfg, backend) as client:
        pages = [await get(client, "/"), await get(client, "/?lang=en"), await get(client, "/404")]
        await post(client, "/login", {"action": "terms"})
        pages.append(await get(client, "/?url=http://example.com/" + "p" * 1500))
        for resp in pages:
            raw = await resp.read()
            assert len(raw) < 30 * 1024
            assert b"<script" not in raw.lower()
            assert b"<style>" in raw and b"<link" not in raw


async def test_backend_failure_gives_translated_500(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakeBackend):
        async def identify(self, ip: str) -> ClientView:
            raise RuntimeError("database is locked")

    async with portal(backend=Broken()) as client:
        with caplog.at_level(logging.ERROR, logger="desanet.portal"):
            resp = await get(client, "/?lang=en")
        assert resp.status == 500
        body = await resp.text()
        assert "the portal has a problem" in body
        assert "database is locked" not in body
        assert_portal_headers(resp)
        assert "failed" in caplog.records[-1].getMessage()


async def test_method_not_allowed_passes_through() -> None:
    async with portal() as client:
        resp = await client.put("/login", headers=PORTAL)
        assert resp.status == 405
        assert_portal_headers(resp)


# -- words and pages (Step 5) ------------------------------------------------

def local_cfg(enabled: bool, **portal: Any) -> Config:
    base = make_cfg(**portal)
    return base.model_copy(update={
        "local_services": base.local_services.model_copy(update={"enabled": enabled})})


def card_order(body: str) -> list[str]:
    """Which login cards the page shows, top to bottom."""
    found = [(body.find(marker), name) for marker, name in
             (('value="terms"', "terms"), ('class="terms"', "terms"), ('id="kode"', "voucher"))
             if marker in body]
    order: list[str] = []
    for _, name in sorted(found):
        if name not in order:
            order.append(name)
    return order


@pytest.mark.parametrize("mode", ["voucher", "both"])
@pytest.mark.parametrize(("lang", "phrase", "wrong"), [
    ("id", "Anda menyetujui ketentuan penggunaan hotspot ini.", "di atas"),
    ("en", "you accept this hotspot's terms of use.", "terms above"),
])
async def test_voucher_terms_sentence_is_true_wherever_the_cards_are(
        mode: str, lang: str, phrase: str, wrong: str) -> None:
    """After a wrong code the voucher card moves above the terms: the sentence under it
    must not say the terms are "above" in either layout."""
    async with portal(make_cfg(mode=mode)) as client:
        fresh = await (await get(client, f"/?lang={lang}")).text()
        resp = await post(client, "/login", {"action": "voucher", "voucher": "ZZZZZ-ZZZZZ",
                                             "lang": lang})
        failed = await resp.text()
    assert resp.status == 403
    # positive control: the two layouts really differ in order
    assert card_order(fresh) == ["terms", "voucher"]
    assert card_order(failed) == ["voucher", "terms"]
    for body in (fresh, failed):
        assert phrase in body.replace("&#39;", "'")
        assert wrong not in body


async def test_terms_mode_has_no_voucher_sentence() -> None:
    async with portal(make_cfg(mode="terms")) as client:
        body = await (await get(client, "/")).text()
    assert "Anda menyetujui" not in body and "kantor desa" not in body


@pytest.mark.parametrize(("lang", "code", "office", "seller"), [
    ("id", "REVKD-22222", "minta voucher baru di kantor desa", "penjual"),
    ("en", "REVKD-22222", "ask the village office for a new one", "seller"),
    ("id", "EXPRD-22222", "Minta voucher baru di kantor desa", "penjual"),
    ("en", "EXPRD-22222", "Ask the village office for a new one", "seller"),
])
async def test_vouchers_come_from_the_village_office(
        lang: str, code: str, office: str, seller: str) -> None:
    async with portal() as client:
        page = await (await get(client, f"/?lang={lang}")).text()
        resp = await post(client, "/login", {"action": "voucher", "voucher": code, "lang": lang})
        body = await resp.text()
    assert resp.status == 403
    assert office in body and seller not in body.lower()
    where = {"id": "Voucher bisa diminta di kantor desa.",
             "en": "Vouchers are handed out at the village office."}[lang]
    assert where in page


def test_no_voucher_seller_anywhere_in_the_catalog() -> None:
    from gateway.portal.i18n import CATALOG

    for lang, table in CATALOG.items():
        for key, text in table.items():
            assert "penjual" not in text.lower() and "seller" not in text.lower(), (lang, key)


@pytest.mark.parametrize(("lang", "title", "text"), [
    ("id", "Anda sudah keluar", "Anda sudah keluar. Perangkat ini tidak lagi tersambung"),
    ("en", "You have logged out", "You have logged out. This device is no longer connected"),
])
async def test_logout_redirects_to_a_page_that_says_so(lang: str, title: str, text: str) -> None:
    backend = FakeBackend()
    async with portal(backend=backend) as client:
        await post(client, "/login", {"action": "terms"})
        resp = await post(client, "/logout", {"lang": lang})
        assert resp.status == 303
        page = await get(client, resp.headers["Location"] + f"&lang={lang}")
        body = (await page.text()).replace("&#39;", "'")
        assert page.status == 200 and backend.sessions == {}
        assert f"<title>{title} · " in body
        assert f'<p class="notice" role="status">{text}' in body
        assert 'value="terms"' in body  # it is the login page: connect again from here
        # A refresh of that page logs out nothing more and still says so.
        again = await get(client, resp.headers["Location"])
        assert "notice" in await again.text() and backend.calls.count(("logout", "127.0.0.1")) == 1
        # positive control: the plain start page says nothing about logging out
        plain = await (await get(client, f"/?lang={lang}")).text()
        assert 'class="notice"' not in plain and title not in plain
        # Logged in again, ?keluar=1 shows the status page, not a stale "logged out".
        await post(client, "/login", {"action": "terms"})
        status = await (await get(client, resp.headers["Location"])).text()
        assert 'action="/logout"' in status and 'class="notice"' not in status


@pytest.mark.parametrize("mode", ["voucher", "both"])
async def test_voucher_field_keeps_focus_after_a_wrong_code(mode: str) -> None:
    async with portal(make_cfg(mode=mode)) as client:
        fresh = await (await get(client, "/")).text()
        resp = await post(client, "/login", {"action": "voucher", "voucher": "ZZZZZ-ZZZZZ"})
        body = await resp.text()
    field = re.search(r'<input type="text" id="voucher"[^>]*>', body)
    assert field is not None
    tag = field.group(0)
    assert " autofocus" in tag and 'aria-invalid="true"' in tag
    assert 'aria-describedby="voucher-error voucher-hint"' in tag
    assert '<p class="error" id="voucher-error" role="alert">Kode voucher tidak dikenal' in body
    # positive control: a fresh page does not steal focus (the terms button may be wanted)
    fresh_tag = re.search(r'<input type="text" id="voucher"[^>]*>', fresh)
    assert fresh_tag is not None and "autofocus" not in fresh_tag.group(0)
    assert 'aria-describedby="voucher-hint"' in fresh_tag.group(0)


async def test_rate_limited_voucher_error_is_tied_to_the_field_too() -> None:
    limiter = RateLimiter(limit=1, window=60, clock=Clock())
    async with portal(limiter=limiter) as client:
        await post(client, "/login", {"action": "voucher", "voucher": "ZZZZZ-ZZZZZ"})
        resp = await post(client, "/login", {"action": "voucher", "voucher": "ZZZZZ-ZZZZZ"})
        body = await resp.text()
    assert resp.status == 429
    assert re.search(r'id="voucher"[^>]* aria-invalid="true" autofocus', body)


@pytest.mark.parametrize("mode", ["terms", "voucher", "both"])
@pytest.mark.parametrize(("lang", "label"), [("id", "Layanan pemerintah desa"),
                                             ("en", "Village government services")])
async def test_login_and_status_pages_link_the_offline_services(
        mode: str, lang: str, label: str) -> None:
    backend = FakeBackend()
    link = f'<a class="local-link" href="http://layanan.desa/">{label}</a>'
    async with portal(local_cfg(True, mode=mode), backend) as client:
        login = await (await get(client, f"/?lang={lang}")).text()
        backend._open(ClientView(ip="127.0.0.1", mac=MAC, session=None), "terms")
        status = await (await get(client, f"/?lang={lang}")).text()
    assert link in login
    assert 'action="/logout"' in status and link in status


async def test_no_offline_services_link_when_they_are_off() -> None:
    backend = FakeBackend()
    async with portal(local_cfg(False), backend) as client:
        login = await (await get(client, "/")).text()
        backend._open(ClientView(ip="127.0.0.1", mac=MAC, session=None), "terms")
        status = await (await get(client, "/")).text()
    for body in (login, status):
        assert "http://layanan.desa" not in body and 'class="local-link"' not in body
    assert 'action="/logout"' in status  # positive control: that was the status page


async def test_offline_services_link_names_the_configured_host_and_port() -> None:
    base = local_cfg(True, http_port=8080, redirect_port=2050)
    cfg = base.model_copy(update={"local_services": base.local_services.model_copy(
        update={"hostname": "layanan.sukamaju"})})
    async with portal(cfg) as client:
        body = await (await get(client, "/", headers={"Host": "portal.desa:8080"})).text()
    assert 'href="http://layanan.sukamaju:8080/"' in body


# -- portalsec (Step 6): form tokens, unreadable forms, the village voucher budget -------------

@pytest.mark.parametrize("headers", [{}, {"Origin": "null"}, {"Origin": "http://portal.desa"}])
async def test_a_logout_without_the_form_token_is_refused_with_the_form_again(
        headers: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    """Another site can make a browser post without Origin or with Origin: null: only the
    token, which that site cannot read, tells the villager's own form apart."""
    backend = FakeBackend()
    async with portal(backend=backend) as client:
        assert (await post(client, "/login", {"action": "terms"})).status == 303
        for token in ("", "0" * 32, "zz"):
            with caplog.at_level(logging.WARNING, logger="desanet.portal"):
                resp = await post(client, "/logout", {"csrf": token}, headers=headers)
            body = await resp.text()
            assert resp.status == 403, token
            assert "Formulir ini sudah kedaluwarsa" in body
            assert 'action="/logout"' in body and TOKEN.search(body)  # the form again
            assert_portal_headers(resp)
        assert ("logout", "127.0.0.1") not in backend.calls and MAC in backend.sessions
        assert "without a valid form token" in caplog.records[-1].getMessage()
        # positive control: the token of the villager's own status page logs out
        resp = await post(client, "/logout", {}, headers=headers)
        assert resp.status == 303 and MAC not in backend.sessions


BROWSER_POSTS = [{"Origin": "null"}, {"Origin": "http://evil.example"},
                 {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"},
                 {"Referer": "http://evil.example/"}]


@pytest.mark.parametrize("headers", BROWSER_POSTS)
async def test_a_browser_login_without_the_form_token_is_refused_with_the_login_form(
        headers: dict[str, str]) -> None:
    backend = FakeBackend()
    async with portal(backend=backend) as client:
        resp = await post(client, "/login", {"action": "terms", "csrf": "", "lang": "en"},
                          headers=headers)
        body = await resp.text()
        assert resp.status == 403 and backend.calls == []
        if headers == {"Origin": "null"}:
            # (a visibly cross-site post is refused before the token is looked at)
            assert "This form has expired" in body
            assert 'action="/login"' in body and TOKEN.search(body)
        resp = await post(client, "/login", {"action": "voucher", "voucher": "ABCDE-FGHJK",
                                             "csrf": "f" * 32}, headers=headers)
        assert resp.status == 403 and backend.calls == []


async def test_a_tool_without_browser_headers_may_log_in_without_a_token_but_not_out() -> None:
    """``curl -d action=terms http://portal.desa/login`` (the docs, the lab) still logs in;
    a logout always needs the token of the villager's own page."""
    backend = FakeBackend()
    async with portal(backend=backend) as client:
        resp = await post(client, "/login", {"action": "terms", "csrf": ""})
        assert resp.status == 303 and MAC in backend.sessions
        resp = await post(client, "/logout", {"csrf": ""})
        assert resp.status == 403 and MAC in backend.sessions


async def test_a_token_is_bound_to_the_client_and_to_the_daemon_run() -> None:
    clock = Clock()
    tokens = FormTokens(b"k" * 32, window=100, clock=clock)
    token = tokens.issue("10.42.0.5", MAC)
    assert tokens.valid(token, "10.42.0.5", MAC)
    assert not tokens.valid(token, "10.42.0.6", MAC)  # another address
    assert not tokens.valid(token, "10.42.0.5", "02:00:00:00:00:02")  # another MAC
    assert not FormTokens(b"x" * 32, window=100, clock=clock).valid(token, "10.42.0.5", MAC)
    clock.t = 150  # the next window still takes it ...
    assert tokens.valid(token, "10.42.0.5", MAC)
    clock.t = 200  # ... the one after does not
    assert not tokens.valid(token, "10.42.0.5", MAC)


async def test_a_token_of_another_client_is_refused() -> None:
    backend = FakeBackend()
    tokens = FormTokens()
    async with portal(backend=backend, tokens=tokens) as client:
        stolen = tokens.issue("10.42.0.77", "02:00:00:00:00:77")
        resp = await post(client, "/login", {"action": "terms", "csrf": stolen})
        assert resp.status == 403 and backend.calls == []


MULTIPART_GARBAGE = [
    ("multipart/form-data", b"--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--\r\n"),
    ("multipart/form-data; boundary=x",
     b"--x\r\nContent-Disposition: form-data\r\n\r\nterms\r\n--x--\r\n"),
    ("multipart/form-data; boundary=x", b"garbage"),
]


@pytest.mark.parametrize(("content_type", "body"), MULTIPART_GARBAGE)
@pytest.mark.parametrize("path", ["/login", "/logout"])
async def test_an_unreadable_multipart_form_is_a_400_page(
        path: str, content_type: str, body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend()
    async with portal(backend=backend) as client:
        with caplog.at_level(logging.WARNING):
            resp = await post(client, path, body, headers={"Content-Type": content_type})
        text = await resp.text()
        assert resp.status == 400 and "Formulir tidak lengkap" in text
        assert_portal_headers(resp)
        assert backend.calls == []
        assert not any(r.exc_info for r in caplog.records)  # no traceback for a bad request
        # positive control: a well-formed multipart form with the token is read
        token = await form_token(client)
        form = FormData({"action": "terms", "csrf": token})
        form.add_field("lang", "id", content_type="text/plain")  # forces multipart
        ok = await client.post("/login", data=form, headers=PORTAL, allow_redirects=False)
        assert ok.status == 303


def wrong(i: int) -> dict[str, str]:
    return {"action": "voucher", "voucher": f"ZZZZ{'23456789'[i % 8]}-ZZZZZ"}


async def test_rotating_macs_share_the_village_budget_of_wrong_codes() -> None:
    """5 a minute per MAC, but 6 wrong codes a minute for the whole village: a sixth MAC
    gets no guess; a right code neither needs nor spends a place; the wait ends."""
    backend = FakeBackend()
    clock = Clock()
    limiter = RateLimiter(limit=5, window=60, clock=clock)
    village = RateLimiter(limit=6, window=60, max_keys=1, clock=clock)
    async with portal(backend=backend, limiter=limiter, village=village) as client:
        statuses = []
        for i in range(4):  # four MACs, two wrong codes each
            backend.macs["127.0.0.1"] = f"02:00:00:00:01:0{i}"
            for j in range(2):
                statuses.append((await post(client, "/login", wrong(i * 2 + j))).status)
        assert statuses == [403] * 6 + [429] * 2
        assert len([c for c in backend.calls if c[0] == "voucher"]) == 6
        resp = await post(client, "/login", wrong(0))
        text = await resp.text()
        assert resp.status == 429 and resp.headers["Retry-After"] == "60"
        assert "Terlalu banyak kode voucher salah dicoba di jaringan desa" in text
        # A refused check is no attempt of the client's own: its budget is untouched.
        assert limiter.retry_after("02:00:00:00:01:03") == 0
        # While the budget is spent even a right code waits (else guessing would go on) ...
        backend.macs["127.0.0.1"] = "02:00:00:00:02:00"
        assert (await post(client, "/login", {"action": "voucher",
                                              "voucher": "ABCDE-FGHJK"})).status == 429
        # ... and gets in once the oldest wrong code is a minute old.
        clock.t = 60
        resp = await post(client, "/login", {"action": "voucher", "voucher": "ABCDE-FGHJK"})
        assert resp.status == 303


async def test_right_codes_do_not_spend_the_village_budget() -> None:
    """A bus of villagers with right codes: 20 logins, the budget (3) never trips."""
    backend = FakeBackend()
    village = RateLimiter(limit=3, window=60, max_keys=1, clock=Clock())
    async with portal(backend=backend, village=village) as client:
        for i in range(20):
            backend.macs["127.0.0.1"] = f"02:00:00:00:03:{i:02x}"
            code = f"GDDD{'23456789'[i % 8]}-{'ABCDEFGHJK'[i % 10]}2222"
            backend.vouchers[code] = None
            resp = await post(client, "/login", {"action": "voucher", "voucher": code})
            assert resp.status == 303, i
        assert village.retry_after("village") == 0
        # and a malformed code is no guess either
        backend.macs["127.0.0.1"] = "02:00:00:00:04:00"
        for _ in range(4):
            resp = await post(client, "/login", {"action": "voucher", "voucher": "??"})
            assert resp.status == 403
        assert village.retry_after("village") == 0


async def test_village_budget_comes_from_config() -> None:
    backend = FakeBackend()
    async with portal(make_cfg(voucher_failures_per_minute=2), backend) as client:
        statuses = []
        for i in range(3):
            backend.macs["127.0.0.1"] = f"02:00:00:00:05:0{i}"
            statuses.append((await post(client, "/login", wrong(i))).status)
        assert statuses == [403, 403, 429]


async def test_a_backend_failure_gives_the_village_place_back() -> None:
    backend = FakeBackend()
    village = RateLimiter(limit=1, window=60, max_keys=1, clock=Clock())

    async def broken(client: ClientView, code: str) -> Session:
        raise RuntimeError("store is gone")
    backend.login_voucher = broken  # type: ignore[method-assign]
    async with portal(backend=backend, village=village) as client:
        resp = await post(client, "/login", {"action": "voucher", "voucher": "ABCDE-FGHJK"})
        assert resp.status == 500
        assert village.retry_after("village") == 0
