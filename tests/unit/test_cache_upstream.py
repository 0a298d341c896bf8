"""Malformed origin answers (issue #10): a raw asyncio origin writes exactly the bytes of
each case; the cache must do as nginx does (trust Content-Length, never reuse the
connection) instead of turning a readable answer into "service unreachable"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.test_utils import TestClient, TestServer

from gateway.cache.service import LocalServices
from gateway.cache.upstream import TrustLengthProtocol, connector
from tests.unit.cachesite import SLUG, site_config


class RawOrigin:
    """Answers each request on a connection with the next scripted bytes for its path."""

    def __init__(self) -> None:
        self.answers: dict[str, list[bytes]] = {}
        self.connections = 0
        self.requests: list[tuple[int, str]] = []  # (connection number, request line)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode()
                self.requests.append((number, line))
                path = line.split(" ")[1]
                for piece in self.answers[path]:
                    writer.write(piece)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def raw_site(tmp_path: Path) -> AsyncIterator[tuple[RawOrigin, TestClient[Any, Any],
                                                          LocalServices]]:
    origin = RawOrigin()
    server = await asyncio.start_server(origin.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = site_config(f"http://127.0.0.1:{port}")
    services = LocalServices(lambda: cfg, tmp_path)
    front = web.Application()
    front.router.add_route("*", "/{tail:.*}", services.handle)
    try:
        async with TestClient(TestServer(front)) as client:
            yield origin, client, services
    finally:
        await services.stop()
        server.close()
        await server.wait_closed()


def answer(body: bytes, length: int | None = None, extra: str = "") -> bytes:
    size = len(body) if length is None else length
    return (f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nCache-Control: max-age=60\r\n{extra}"
            f"\r\n").encode() + body


GOOD = answer(b"ok")
LARGE = bytes(range(256)) * 2048  # 512 KiB: many reads
# (pieces the origin writes for /a, what the villager gets, whether /b reuses the connection)
CASES = [
    ([answer(b"hello world, more than five", length=5)], b"hello", False),
    ([answer(b"hello")], b"hello", True),  # positive control: a well-framed answer
    ([answer(LARGE + b"excess", length=len(LARGE))], LARGE, False),
    ([answer(LARGE)], LARGE, True),
    ([answer(b"hel"), b"lo"], b"hel", False),  # two writes, the excess separate
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nCache-Control: max-age=60\r\n\r\n"
      b"5\r\nhello\r\n0\r\n\r\n"], b"hello", True),  # chunked: left to the parser
    ([b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n", answer(b"hello")],
     b"hello", True),  # an interim answer, then the final one
]


@pytest.mark.parametrize(("pieces", "body", "reused"), CASES)
async def test_a_body_longer_than_its_length_is_trimmed_and_the_connection_dropped(
        tmp_path: Path, pieces: list[bytes], body: bytes, reused: bool) -> None:
    async with raw_site(tmp_path) as (origin, client, _):
        origin.answers["/a"] = pieces
        origin.answers["/b"] = [GOOD]
        resp = await client.get(f"/{SLUG}/a")
        assert (resp.status, await resp.read()) == (200, body)
        resp = await client.get(f"/{SLUG}/b")
        assert (resp.status, await resp.read()) == (200, b"ok")
        connection_of = dict((line.split(" ")[1], n) for n, line in origin.requests)
        assert (connection_of["/b"] == connection_of["/a"]) is reused
        # Stored as announced: the next villager gets the same bytes from the cache.
        resp = await client.get(f"/{SLUG}/a")
        assert await resp.read() == body and resp.headers["Cache-Status"].startswith(
            "desanet; hit")


async def test_head_and_bodyless_answers_keep_the_connection(tmp_path: Path) -> None:
    """Negative: a HEAD answer's Content-Length announces no body; nothing is dropped."""
    async with raw_site(tmp_path) as (origin, client, _):
        origin.answers["/a"] = [answer(b"", length=5)]
        origin.answers["/b"] = [GOOD]
        resp = await client.head(f"/{SLUG}/a")
        assert resp.status == 200
        resp = await client.get(f"/{SLUG}/b")
        assert await resp.read() == b"ok"
        assert len({n for n, _ in origin.requests}) == 1


def test_the_connector_uses_the_trimming_protocol() -> None:
    """The aiohttp internal this relies on (the connector's protocol factory)."""
    async def check() -> None:
        conn = connector()
        try:
            made = conn._factory()  # type: ignore[attr-defined]
            assert isinstance(made, TrustLengthProtocol) and isinstance(made, ResponseHandler)
            assert hasattr(made, "_skip_payload")
        finally:
            await conn.close()

    asyncio.run(check())


EARLY_HINTS = (b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n"
               b"Keep-Alive: timeout=5\r\n\r\n")


async def raw_exchange(client: TestClient[Any, Any], request: bytes) -> bytes:
    """What the villager's side of the connection receives, to the end."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()


# (villager's request line, method, whether the 103 reaches the villager)
INTERIM = [
    ("GET /svc/a HTTP/1.1", "GET", True),
    ("HEAD /svc/a HTTP/1.1", "HEAD", True),
    ("POST /svc/a HTTP/1.1", "POST", True),
    ("GET /svc/a HTTP/1.0", "GET", False),  # never a 1xx to an HTTP/1.0 client (§15.2)
]


@pytest.mark.parametrize(("line", "method", "forwarded"), INTERIM)
async def test_interim_answers_reach_the_villager_before_the_final_one(
        tmp_path: Path, line: str, method: str, forwarded: bool) -> None:
    async with raw_site(tmp_path) as (origin, client, _):
        origin.answers["/a"] = [EARLY_HINTS, answer(b"hello")]
        body = b"a=1" if method == "POST" else b""
        got = await raw_exchange(client, f"{line}\r\nHost: layanan.desa\r\nConnection: close\r\n"
                                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert origin.requests and origin.requests[0][1].startswith(method)
        if forwarded:
            interim, _, final = got.partition(b"\r\n\r\n")
            assert interim == b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload"
        else:
            final = got
            assert b"103" not in got.split(b"\r\n", 1)[0]
        assert final.startswith(b"HTTP/1.1 200 OK\r\n") or final.startswith(b"HTTP/1.0 200 OK")
        if method != "HEAD":
            assert final.endswith(b"\r\n\r\nhello")


async def test_interim_answers_are_not_sent_for_a_background_fetch(tmp_path: Path) -> None:
    """Negative: a fetch nobody waits for (prefetch, refresh) forwards nothing, and its
    answer is still stored."""
    async with raw_site(tmp_path) as (origin, client, services):
        origin.answers["/a"] = [EARLY_HINTS, answer(b"hello")]
        service = services.services()[SLUG]
        assert await services.proxy.refresh(service, service.upstream + "/a") == "stored"
        got = await raw_exchange(client, b"GET /svc/a HTTP/1.1\r\nHost: layanan.desa\r\n"
                                         b"Connection: close\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"hello")
        assert len(origin.requests) == 1  # a hit
