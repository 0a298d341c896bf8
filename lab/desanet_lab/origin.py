"""Origin servers of the lab's "internet", run in the WAN namespace.

``python -m desanet_lab.origin --listen 0.0.0.0 --listen ::`` serves, by
Host header (falling back to the address the request arrived on):

- the connectivity checks of Android, Apple, Windows and Firefox,
- ``internet.lab``: any path answers "desanet-lab internet OK",
- ``layanan.lab``: a small cacheable page (Cache-Control, ETag),

plus a UDP echo on 9999 of the internet host ("echo:" + payload), a TCP echo on 9999 and a
TCP listener on 443 that greets with "tls-lab" (for "HTTPS cannot bypass
the portal" tests). ``--ready-file`` is written once every socket is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

from aiohttp import web

from desanet_lab import gov_origin
from desanet_lab import plan as p

INTERNET_BODY = "desanet-lab internet OK\n"
GOVERNMENT_BODY = (
    "<!doctype html><html lang=\"id\"><head><meta charset=\"utf-8\">"
    "<title>Layanan pemerintah (lab)</title></head>"
    "<body><h1>Layanan pemerintah (lab)</h1><p>Data kependudukan desa.</p></body></html>\n"
)
GOVERNMENT_ETAG = '"' + hashlib.sha256(GOVERNMENT_BODY.encode()).hexdigest()[:16] + '"'
APPLE_SUCCESS = "<HTML><HEAD><TITLE>Success</TITLE></HEAD><BODY>Success</BODY></HTML>"
FIREFOX_CANONICAL = (
    '<meta http-equiv="refresh" content="0;url=https://support.mozilla.org/kb/'
    'captive-portal"/>success\n'
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_BY_ADDRESS = {
    p.INTERNET_V4: p.INTERNET_HOST,
    p.INTERNET_V6: p.INTERNET_HOST,
    p.GOVERNMENT_V4: p.GOVERNMENT_HOST,
}


def _text(body: str, status: int = 200, content_type: str = "text/plain") -> web.Response:
    return web.Response(text=body, status=status, content_type=content_type)


def _not_found(request: web.Request) -> web.Response:
    return _text(f"404 not found: {request.host}{request.path}\n", status=404)


async def _internet(request: web.Request) -> web.StreamResponse:
    return _text(INTERNET_BODY)


async def _government(request: web.Request) -> web.StreamResponse:
    headers = {"Cache-Control": "max-age=60", "ETag": GOVERNMENT_ETAG}
    if GOVERNMENT_ETAG in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(
        text=GOVERNMENT_BODY, content_type="text/html", charset="utf-8", headers=headers
    )


async def _generate_204(request: web.Request) -> web.StreamResponse:
    if request.path != "/generate_204":
        return _not_found(request)
    return web.Response(status=204)


async def _apple(request: web.Request) -> web.StreamResponse:
    if request.path not in ("/hotspot-detect.html", "/"):
        return _not_found(request)
    return _text(APPLE_SUCCESS, content_type="text/html")


async def _microsoft(request: web.Request) -> web.StreamResponse:
    if request.path != "/connecttest.txt":
        return _not_found(request)
    return _text("Microsoft Connect Test")


async def _firefox(request: web.Request) -> web.StreamResponse:
    if request.path == "/canonical.html":
        return _text(FIREFOX_CANONICAL, content_type="text/html")
    if request.path == "/success.txt":
        return _text("success\n")
    return _not_found(request)


HOSTS: dict[str, Handler] = {
    p.INTERNET_HOST: _internet,
    p.GOVERNMENT_HOST: _government,
    "connectivitycheck.gstatic.com": _generate_204,
    "clients3.google.com": _generate_204,
    "captive.apple.com": _apple,
    "www.msftconnecttest.com": _microsoft,
    "detectportal.firefox.com": _firefox,
    gov_origin.HOST: gov_origin.handle,
}


def _host_of(request: web.Request) -> str:
    host = (request.host or "").lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host in HOSTS:
        return host
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    local = str(sock[0]) if sock else ""
    return _BY_ADDRESS.get(host) or _BY_ADDRESS.get(local.removeprefix("::ffff:"), host)


async def dispatch(request: web.Request) -> web.StreamResponse:
    handler = HOSTS.get(_host_of(request))
    if handler is None:
        return _not_found(request)
    return await handler(request)


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport does not subclass DatagramTransport on 3.11.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.transport.sendto(b"echo:" + data, addr)


def _udp_socket(host: str, port: int) -> socket.socket:
    # asyncio sets IPV6_V6ONLY for TCP servers but not for datagram endpoints.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _tcp_handler(greeting: bytes) -> Callable[
    [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if greeting:
                writer.write(greeting)
                await writer.drain()
            while data := await asyncio.wait_for(reader.read(4096), timeout=30):
                writer.write(data)
                await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    return handle


async def serve(
    listen: list[str], udp_listen: list[str], http_port: int, echo_port: int, tls_port: int,
    ready_file: str | None,
) -> None:
    loop = asyncio.get_running_loop()
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    servers: list[asyncio.Server] = []
    transports: list[asyncio.BaseTransport] = []
    for host in listen:
        await web.TCPSite(runner, host, http_port, reuse_address=True).start()
        servers.append(await asyncio.start_server(_tcp_handler(b"tls-lab\n"), host, tls_port))
        servers.append(await asyncio.start_server(_tcp_handler(b""), host, echo_port))
    for host in udp_listen:
        transport, _ = await loop.create_datagram_endpoint(
            _UdpEcho, sock=_udp_socket(host, echo_port)
        )
        transports.append(transport)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready_file:
        Path(ready_file).write_text("ready\n")
    print(f"origin: serving on {', '.join(listen)} (http {http_port}, "
          f"echo {echo_port}, tls {tls_port})", flush=True)
    try:
        await stop.wait()
    finally:
        for t in transports:
            t.close()
        for s in servers:
            s.close()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m desanet_lab.origin",
                                     description="desanet lab origin servers")
    parser.add_argument("--listen", action="append", default=None,
                        help="address to bind (repeatable; default 0.0.0.0 and ::)")
    parser.add_argument("--udp-listen", action="append", default=None,
                        help="address for the UDP echo (repeatable; default the internet "
                             "host's addresses: a wildcard socket would answer from the "
                             "wrong source address and break NAT)")
    parser.add_argument("--http-port", type=int, default=80)
    parser.add_argument("--echo-port", type=int, default=p.UDP_ECHO_PORT)
    parser.add_argument("--tls-port", type=int, default=p.TLS_PORT)
    parser.add_argument("--ready-file", default=None)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.listen or ["0.0.0.0", "::"],
                      args.udp_listen or [p.INTERNET_V4, p.INTERNET_V6], args.http_port, args.echo_port,
                      args.tls_port, args.ready_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
