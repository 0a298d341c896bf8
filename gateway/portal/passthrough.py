"""Relay a logged-in client's request for an outside site that still reached the gateway.

Why: before login the pre-login resolver answers every outside name with the
gateway's LAN address (gateway/services/prelogin_dns.py). Right after login the
client's DNS cache still holds that answer (curl 60 s, Chrome up to a minute
whatever the TTL), so "Lanjut ke internet" reaches the portal app with
``Host: <outside name>``. Instead of a page that waits for the cache to expire,
the gateway fetches the same request from the real site and relays the answer.

Bounds (the relay is the gateway's own traffic, so each one matters):

* only names, port 80, GET/HEAD/POST (a body of at most ``MAX_BODY``);
* the name is resolved by the full resolver (the same path as the walled
  garden: the LAN dnsmasq, which recurses for the gateway itself) and the
  relay connects to that exact address; an address that is not global
  unicast, or is in the LAN or the gateway's own, is refused (no SSRF into
  the LAN, the loopback or the ISP's CGNAT). ``portal.relay_test_networks``
  also allows the documentation prefixes (the lab's "internet" lives there);
* the answer is marked for shaping in the client's class (:func:`mark_metered`),
  never cached, and closes the connection: the client's next request opens a new
  one, which after its DNS cache expires goes to the real site directly;
* at most ``PER_CLIENT`` relays in flight per client.

Anything refused returns None: the portal then shows its "menyambungkan" page.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import aiohttp
from aiohttp import hdrs, web

from gateway.cache.shapemark import mark_metered

log = logging.getLogger("desanet.portal")

MAX_BODY = 16 * 1024  # the portal's own limit (gateway/portal/app.py)
PER_CLIENT = 8
CONNECT_TIMEOUT = 10.0
READ_IDLE_TIMEOUT = 30.0
CHUNK = 64 * 1024
METHODS = frozenset({"GET", "HEAD", "POST"})
# request key: the portal adds none of its own headers to a relayed answer
RELAYED: Any = (web.RequestKey("desanet_relayed", bool) if hasattr(web, "RequestKey")
                else "desanet_relayed")  # aiohttp < 3.13: a plain key
# Headers of one connection, not of the message (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
})
# ... and what the relay sets itself: the original name, the length of what it
# sends; Expect: the body is read whole before the site is asked.
_SET_BY_RELAY = frozenset({"host", "content-length", "expect"})
TEST_NETWORKS = tuple(ipaddress.ip_network(n) for n in
                      ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))
_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)+[a-z]"
                   r"([a-z0-9-]{0,61}[a-z0-9])?\.?$")


class Resolver(Protocol):
    async def resolve(self, name: str) -> list[tuple[str, int]]: ...


class BodyTooLarge(Exception):
    """A POST body over ``MAX_BODY``: the portal answers 413."""


def relay_host(host: str) -> str | None:
    """The name to relay to from a Host header: a DNS name on port 80 (pure).

    None for an IP literal, another port, or anything that is not a name."""
    host = host.strip().lower()
    name, sep, port = host.rpartition(":") if not host.startswith("[") else ("", "", host)
    if not sep:
        name = host
    elif port != "80":
        return None
    if not _NAME.match(name):
        return None  # an IP literal ends in a digit label: no TLD starts with a digit
    return name.rstrip(".")


def address_allowed(address: str, lan: ipaddress.IPv4Network, own: Iterable[str],
                    test_networks: bool) -> bool:
    """Whether the relay may connect to ``address`` (pure).

    Global unicast only (``is_global``: not private, loopback, link-local,
    multicast, reserved or the CGNAT range), never the LAN or an address of
    the gateway; the documentation prefixes only when ``test_networks``."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version != 4 or ip in lan or address in set(own) or ip.is_multicast:
        return False  # IPv6 is dropped on the LAN: the relay speaks IPv4 too
    if ip.is_global:
        return True
    return test_networks and any(ip in net for net in TEST_NETWORKS)


def forwarded_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` without the hop-by-hop ones and those named by Connection (pure)."""
    pairs = list(headers)
    named = {t.strip().lower() for k, v in pairs if k.lower() == "connection"
             for t in v.split(",")}
    drop = HOP_BY_HOP | named
    return [(k, v) for k, v in pairs if k.lower() not in drop]


async def read_body(request: web.Request) -> bytes:
    """The whole request body (it is small: at most ``MAX_BODY``, else BodyTooLarge)."""
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(MAX_BODY + 1 - size)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            raise BodyTooLarge()


def _upstream_headers(upstream: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in upstream.raw_headers]


class Passthrough:
    """One per portal app; ``relay`` is called for an authorized client while the uplink is up."""

    def __init__(self, resolver: Resolver, lan: Callable[[], ipaddress.IPv4Network],
                 own_addresses: Callable[[], Iterable[str]] = tuple,
                 test_networks: Callable[[], bool] = lambda: False) -> None:
        self.resolver = resolver
        self.lan = lan
        self.own_addresses = own_addresses
        self.test_networks = test_networks
        self.in_flight: dict[str, int] = {}
        self.port = 80  # the site's port (a unit test's origin listens elsewhere)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No pooling (each relay is one request to one address), no decompression
            # (the body goes out as the site sent it, Content-Encoding and all), no cookies.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=256),
                timeout=aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT,
                                              sock_read=READ_IDLE_TIMEOUT),
                auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def allowed(self, address: str, own: set[str]) -> bool:
        return address_allowed(address, self.lan(), own, self.test_networks())

    async def _address(self, name: str) -> str | None:
        try:
            answers = await self.resolver.resolve(name)
        except (OSError, TimeoutError, ValueError) as exc:
            log.debug("relay: cannot resolve %s: %s", name, exc)
            return None
        own = set(self.own_addresses())
        for address, _ttl in answers:
            if self.allowed(address, own):
                return address
        log.debug("relay: refused %s: no allowed address in %s", name, [a for a, _ in answers])
        return None

    async def relay(self, request: web.Request, host: str) -> web.StreamResponse | None:
        """The site's answer to ``request``, streamed; None when it is not relayed.

        Raises BodyTooLarge for a POST body over ``MAX_BODY``."""
        name = relay_host(host)
        if name is None or request.method not in METHODS or request.secure:
            return None
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise BodyTooLarge()
        client = request.remote or ""
        if self.in_flight.get(client, 0) >= PER_CLIENT:
            log.debug("relay: %s has %d relays in flight", client, PER_CLIENT)
            return None
        self.in_flight[client] = self.in_flight.get(client, 0) + 1
        try:
            return await self._relay(request, name)
        finally:
            left = self.in_flight[client] - 1
            if left:
                self.in_flight[client] = left
            else:
                del self.in_flight[client]

    async def _relay(self, request: web.Request, name: str) -> web.StreamResponse | None:
        body = b""
        if request.method == "POST":
            body = await read_body(request)
        address = await self._address(name)
        if address is None:
            return None
        headers = [(k, v) for k, v in forwarded_headers(request.headers.items())
                   if k.lower() not in _SET_BY_RELAY]
        headers.append((hdrs.HOST, name))
        try:
            upstream = await self.session().request(
                request.method, f"http://{address}:{self.port}{request.rel_url.raw_path_qs}", headers=headers,
                data=body if request.method == "POST" else None, allow_redirects=False,
                skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT, hdrs.ACCEPT_ENCODING))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("relay: %s %s (%s) failed: %s", request.method, name, address, exc)
            return None
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in forwarded_headers(_upstream_headers(upstream)):
                response.headers.add(key, value)
            response.force_close()
            request[RELAYED] = True
            mark_metered(request)
            await response.prepare(request)
            if request.method != "HEAD":
                try:
                    async for chunk in upstream.content.iter_chunked(CHUNK):
                        await response.write(chunk)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    # Headers are out: all we can do is cut the connection short.
                    log.debug("relay: %s %s cut: %s", request.method, name, exc)
                    if request.transport is not None:
                        request.transport.close()
                    return response
            await response.write_eof()
        return response

