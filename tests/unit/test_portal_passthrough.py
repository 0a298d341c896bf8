"""The relay for a logged-in client whose stale pre-login DNS answer sent it to the gateway
(gateway/portal/passthrough.py), against a local aiohttp origin."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.portal.app import create_portal_app
from gateway.portal.passthrough import (
    MAX_BODY,
    PER_CLIENT,
    Passthrough,
    address_allowed,
    forwarded_headers,
    relay_host,
)
from tests.unit.test_portal_app import FakeBackend
from tests.unit.test_portal_offline import Switch, logged_in, services_cfg

LAN = ipaddress.IPv4Network("10.42.0.0/24")
SITE = {"Host": "internet.lab"}


class Resolver:
    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.asked: list[str] = []

    async def resolve(self, name: str) -> list[tuple[str, int]]:
        self.asked.append(name)
        return [(a, 60) for a in self.addresses]


class LoopbackRelay(Passthrough):
    """The real policy, plus the test origin's loopback address when ``origin_ok``
    (the positive control beside each refusal)."""

    def __init__(self, resolver: Resolver, port: int, origin_ok: bool = True) -> None:
        super().__init__(resolver, lambda: LAN, own_addresses=lambda: {"10.42.0.1"})
        self.port = port
        self.origin_ok = origin_ok

    def allowed(self, address: str, own: set[str]) -> bool:
        return (self.origin_ok and address == "127.0.0.1") or super().allowed(address, own)


class Origin:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.gate: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append((request.method, request.path_qs, dict(request.headers), body))
        if self.gate is not None:
            await self.gate.wait()
        if request.path == "/moved":
            raise web.HTTPFound("/elsewhere")
        response = web.Response(text=f"desanet-lab internet OK {request.method} {body.decode()}",
                                headers={"X-Site": "yes", "Keep-Alive": "timeout=99",
                                         "Set-Cookie": "a=1"})
        return response


@asynccontextmanager
async def setup(resolver: Resolver, origin_ok: bool = True, switch: Switch | None = None,
                login: bool = True
                ) -> AsyncIterator[tuple[TestClient[Any, Any], Origin, LoopbackRelay]]:
    origin = Origin()
    site = web.Application()
    site.router.add_route("*", "/{tail:.*}", origin.handle)
    async with TestServer(site, host="127.0.0.1") as server:
        relay = LoopbackRelay(resolver, server.port, origin_ok)
        backend = FakeBackend()
        app = create_portal_app(services_cfg(), backend, uplink_down=switch or Switch(False),
                                passthrough=relay)
        async with TestClient(TestServer(app)) as client:
            if login:
                await logged_in(backend)
            yield client, origin, relay


async def test_get_head_and_post_are_relayed_with_status_headers_and_body() -> None:
    async with setup(Resolver("127.0.0.1")) as (client, origin, _):
        resp = await client.get("/berita?id=7", headers={**SITE, "X-Mine": "1"},
                                allow_redirects=False)
        assert resp.status == 200
        assert await resp.text() == "desanet-lab internet OK GET "
        assert resp.headers["X-Site"] == "yes" and resp.headers["Set-Cookie"] == "a=1"
        # the site's answer as it is: none of the portal's own headers, and the
        # connection closes so the next request may go to the real site directly
        assert "Content-Security-Policy" not in resp.headers
        assert "Cache-Control" not in resp.headers
        assert resp.headers["Connection"].lower() == "close"
        assert "Keep-Alive" not in resp.headers  # hop-by-hop: stripped
        method, path, headers, _ = origin.seen[-1]
        assert (method, path) == ("GET", "/berita?id=7")
        assert headers["Host"] == "internet.lab" and headers["X-Mine"] == "1"

        head = await client.head("/", headers=SITE, allow_redirects=False)
        assert head.status == 200 and await head.read() == b""
        assert origin.seen[-1][0] == "HEAD"

        post = await client.post("/form", data=b"nama=Siti", headers={
            **SITE, "Content-Type": "application/x-www-form-urlencoded"},
            allow_redirects=False)
        assert post.status == 200
        assert await post.text() == "desanet-lab internet OK POST nama=Siti"
        assert origin.seen[-1][2]["Content-Type"] == "application/x-www-form-urlencoded"

        moved = await client.get("/moved", headers=SITE, allow_redirects=False)
        assert moved.status == 302 and moved.headers["Location"] == "/elsewhere"


async def test_hop_by_hop_request_headers_are_not_forwarded() -> None:
    async with setup(Resolver("127.0.0.1")) as (client, origin, _):
        resp = await client.get("/", headers={**SITE, "Connection": "keep-alive, X-Secret",
                                              "X-Secret": "1", "Proxy-Authorization": "x",
                                              "Upgrade": "h2c", "X-Kept": "1"})
        assert resp.status == 200
        headers = origin.seen[-1][2]
        assert "X-Secret" not in headers and "Proxy-Authorization" not in headers
        assert "Upgrade" not in headers and headers["X-Kept"] == "1"


def test_forwarded_headers_drops_those_connection_names() -> None:
    got = forwarded_headers([("Connection", "close, X-A"), ("X-A", "1"), ("TE", "trailers"),
                             ("Transfer-Encoding", "chunked"), ("X-B", "2")])
    assert got == [("X-B", "2")]


@pytest.mark.parametrize("address", ["127.0.0.1", "10.42.0.7", "192.168.1.1", "169.254.1.1",
                                     "224.0.0.1", "100.64.0.1", "0.0.0.0", "10.42.0.1"])
async def test_a_private_or_local_destination_gets_the_reconnect_page(address: str) -> None:
    # origin_ok=False: the real policy alone; the origin would answer if asked
    async with setup(Resolver(address), origin_ok=False) as (client, origin, _):
        resp = await client.get("/", headers=SITE, allow_redirects=False)
        text = await resp.text()
        assert resp.status == 200 and "Menyambungkan" in text
        assert resp.headers["Refresh"] == "5; url=http://internet.lab/"
        assert origin.seen == []
    # positive control: the same request to an allowed address is relayed
    async with setup(Resolver(address, "127.0.0.1")) as (client, origin, _):
        resp = await client.get("/", headers=SITE, allow_redirects=False)
        assert "desanet-lab internet OK" in await resp.text() and len(origin.seen) == 1


def test_address_policy() -> None:
    own = {"10.42.0.1", "203.0.113.9"}
    assert address_allowed("93.184.216.34", LAN, own, test_networks=False)
    for refused in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.0.1", "169.254.169.254",
                    "100.64.0.1", "224.0.0.251", "255.255.255.255", "0.0.0.0", "10.42.0.9",
                    "::1", "2001:4860::1", "not an address"):
        assert not address_allowed(refused, LAN, own, test_networks=True), refused
    # documentation prefixes (the lab's internet) only with the flag; never an own address
    assert not address_allowed("198.51.100.10", LAN, own, test_networks=False)
    assert address_allowed("198.51.100.10", LAN, own, test_networks=True)
    assert not address_allowed("203.0.113.9", LAN, own, test_networks=True)


def test_only_names_on_port_80_are_relayed() -> None:
    assert relay_host("Internet.Lab") == "internet.lab"
    assert relay_host("internet.lab:80") == "internet.lab"
    assert relay_host("example.com.") == "example.com"
    for refused in ("198.51.100.10", "198.51.100.10:80", "[2001:db8::1]", "internet.lab:8080",
                    "localhost", "a..b", "-x.com", "x.com:", "", "1.2.3.4.5"):
        assert relay_host(refused) is None, refused


async def test_an_ip_literal_or_another_method_is_not_relayed() -> None:
    async with setup(Resolver("127.0.0.1")) as (client, origin, _):
        resp = await client.get("/", headers={"Host": "198.51.100.10"}, allow_redirects=False)
        assert "Menyambungkan" in await resp.text()
        resp = await client.request("PUT", "/", headers=SITE, data=b"x", allow_redirects=False)
        assert "Menyambungkan" in await resp.text()
        assert origin.seen == []
        resp = await client.get("/", headers=SITE)  # positive control
        assert "desanet-lab internet OK" in await resp.text()


async def test_a_body_over_the_limit_is_refused() -> None:
    async with setup(Resolver("127.0.0.1")) as (client, origin, _):
        resp = await client.post("/", headers=SITE, data=b"x" * (MAX_BODY + 1))
        assert resp.status == 413 and origin.seen == []
        resp = await client.post("/", headers=SITE, data=b"x" * MAX_BODY)  # positive control
        assert resp.status == 200 and len(origin.seen[-1][3]) == MAX_BODY


async def test_a_client_not_logged_in_is_never_relayed() -> None:
    resolver = Resolver("127.0.0.1")
    async with setup(resolver, login=False) as (client, origin, _):
        resp = await client.get("/", headers=SITE, allow_redirects=False)
        assert resp.status == 302 and resp.headers["Location"].startswith("http://portal.desa/")
        assert origin.seen == [] and resolver.asked == []


async def test_uplink_down_gives_the_terputus_page() -> None:
    switch = Switch(down=True)
    async with setup(Resolver("127.0.0.1"), switch=switch) as (client, origin, _):
        resp = await client.get("/", headers=SITE, allow_redirects=False)
        assert "Internet desa sedang terputus" in await resp.text() and origin.seen == []
        switch.down = False  # positive control
        resp = await client.get("/", headers=SITE, allow_redirects=False)
        assert "desanet-lab internet OK" in await resp.text()


async def test_relays_in_flight_per_client_are_capped() -> None:
    async with setup(Resolver("127.0.0.1")) as (client, origin, relay):
        origin.gate = asyncio.Event()
        held = [asyncio.create_task(client.get(f"/{i}", headers=SITE)) for i in range(PER_CLIENT)]
        deadline = asyncio.get_running_loop().time() + 10
        while len(origin.seen) < PER_CLIENT:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        resp = await client.get("/one-more", headers=SITE, allow_redirects=False)
        assert "Menyambungkan" in await resp.text()
        origin.gate.set()
        for task in held:
            assert (await task).status == 200
        assert relay.in_flight == {}
        resp = await client.get("/again", headers=SITE)  # positive control: room again
        assert "desanet-lab internet OK" in await resp.text()


async def test_a_body_sent_in_pieces_is_relayed_whole() -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for part in (b"nama=", b"Siti", b"&desa=Sukamaju"):
            yield part
            await asyncio.sleep(0)

    async with setup(Resolver("127.0.0.1")) as (client, origin, _):
        resp = await client.post("/", headers={**SITE, "Expect": "100-continue"}, data=pieces())
        assert resp.status == 200  # chunked, no Content-Length
        assert origin.seen[-1][3] == b"nama=Siti&desa=Sukamaju"
        assert "Expect" not in origin.seen[-1][2]

        async def too_much() -> AsyncIterator[bytes]:
            for _ in range(MAX_BODY // 1024 + 1):
                yield b"x" * 1024

        resp = await client.post("/", headers=SITE, data=too_much())
        assert resp.status == 413 and len(origin.seen) == 1
