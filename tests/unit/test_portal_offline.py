"""The portal while the village uplink is down: the "terputus" page for outside hosts
(logged-in villagers only) and the notice on the portal's own pages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from gateway.config import Config, parse_config
from gateway.portal.app import create_portal_app
from gateway.portal.backend import ClientView
from tests.unit.test_portal_app import MAC, FakeBackend, get, make_cfg


class Switch:
    def __init__(self, down: bool = True) -> None:
        self.down = down

    def __call__(self) -> bool:
        return self.down


def services_cfg() -> Config:
    return parse_config({
        "site": {"name": "Hotspot Desa Sukamaju", "village": "Desa Sukamaju"},
        "network": {"lan_interface": "br-lan", "wan_interface": "wan0",
                    "lan_address": "10.42.0.1/24"},
        "dhcp": {"range_start": "10.42.0.100", "range_end": "10.42.0.250"},
        "local_services": {"enabled": True, "hostname": "layanan.desa"},
    })


@asynccontextmanager
async def portal(switch: Switch, cfg: Config | None = None, backend: FakeBackend | None = None
                 ) -> AsyncIterator[tuple[TestClient[Any, Any], FakeBackend]]:
    backend = backend or FakeBackend()
    app = create_portal_app(cfg or services_cfg(), backend, uplink_down=switch)
    async with TestClient(TestServer(app)) as client:
        yield client, backend


async def logged_in(backend: FakeBackend) -> None:
    await backend.login_terms(ClientView(ip="127.0.0.1", mac=MAC, session=None))


async def test_logged_in_villager_gets_the_terputus_page_for_any_outside_host() -> None:
    switch = Switch(down=True)
    async with portal(switch) as (client, backend):
        await logged_in(backend)
        resp = await get(client, "/berita?id=7", headers={"Host": "example.com"})
        text = await resp.text()
        assert resp.status == 200
        assert "Internet desa sedang terputus" in text
        assert text.index("Internet desa sedang terputus") < text.index(
            "The village internet is down")  # Bahasa Indonesia first, English second
        assert 'href="http://layanan.desa/"' in text
        assert 'href="http://example.com/berita?id=7"' in text  # "coba lagi"
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers.get("Connection", "").lower() == "close"
        # positive control: the uplink is back -> not the terputus page. This portal has no
        # relay (create_portal_app without passthrough; with one the site's own answer is
        # relayed, tests/unit/test_portal_passthrough.py), so "menyambungkan", reloading the
        # same address until the browser's stale DNS answer expires
        switch.down = False
        resp = await get(client, "/berita", headers={"Host": "example.com"})
        text = await resp.text()
        assert resp.status == 200 and "Internet desa sedang terputus" not in text
        assert "Menyambungkan" in text and "Connecting" in text
        assert resp.headers["Refresh"] == "5; url=http://example.com/berita"
        assert resp.headers.get("Connection", "").lower() == "close"


async def test_a_client_not_logged_in_gets_no_reconnect_page() -> None:
    async with portal(Switch(down=False)) as (client, _):
        resp = await get(client, "/berita", headers={"Host": "example.com"})
        assert resp.status == 302 and "Refresh" not in resp.headers
        assert resp.headers["Location"].startswith("http://portal.desa/")


async def test_not_logged_in_still_goes_to_the_portal_which_says_internet_is_down() -> None:
    async with portal(Switch(down=True)) as (client, _):
        resp = await get(client, "/", headers={"Host": "example.com"})
        assert resp.status == 302 and resp.headers["Location"].startswith("http://portal.desa/")
        login = await get(client, "/")
        text = await login.text()
        assert login.status == 200 and "Internet desa sedang terputus" in text
        assert 'href="http://layanan.desa/"' in text


async def test_status_page_does_not_say_connected_to_the_internet_while_down() -> None:
    switch = Switch(down=True)
    async with portal(switch) as (client, backend):
        await logged_in(backend)
        text = await (await get(client, "/")).text()
        assert "internet desa sedang terputus" in text
        assert "Anda sudah terhubung ke internet." not in text
        en = await (await get(client, "/?lang=en")).text()
        assert "the village internet is down" in en
        switch.down = False  # positive control
        text = await (await get(client, "/?lang=id")).text()
        assert "Anda sudah terhubung ke internet." in text
        assert "Internet desa sedang terputus" not in text


async def test_without_local_services_the_page_has_no_dead_link() -> None:
    async with portal(Switch(down=True), make_cfg()) as (client, backend):
        await logged_in(backend)
        resp = await get(client, "/", headers={"Host": "example.com"})
        text = await resp.text()
        assert resp.status == 200 and "Internet desa sedang terputus" in text
        assert "layanan.desa" not in text


async def test_the_local_site_and_the_portal_keep_answering_while_down() -> None:
    seen: list[str] = []

    async def catalog(request: Any) -> Any:
        from aiohttp import web

        seen.append(request.host)
        return web.Response(text="katalog")

    backend = FakeBackend()
    await logged_in(backend)
    app = create_portal_app(services_cfg(), backend, local_hosts={"layanan.desa": catalog},
                            uplink_down=Switch(True))
    async with TestClient(TestServer(app)) as client:
        resp = await get(client, "/", headers={"Host": "layanan.desa"})
        assert resp.status == 200 and await resp.text() == "katalog"
        resp = await get(client, "/api/captive")
        assert resp.status == 200
