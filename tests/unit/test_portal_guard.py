"""Slow and many connections (portalsec, Step 6): header and body timeouts, the
connection cap at accept, the open-files limit, and a log that cannot flood."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.daemon.servers import CappedRunner, connection_cap, raise_file_limit
from gateway.portal.guard import make_body_deadline
from tests.unit.test_portal_app import make_cfg

DEADLINE = 10.0  # seconds any wait below may take at most


async def hello(request: web.Request) -> web.Response:
    data = await request.post()
    return web.Response(text=f"got {len(data)} fields")


@contextlib.asynccontextmanager
async def serving(cap: int = 100, keepalive: float = 75.0) -> AsyncIterator[tuple[int, CappedRunner]]:
    app = web.Application(middlewares=[make_body_deadline(every=0.2, least=200)])
    app.router.add_post("/", hello)
    app.router.add_get("/", hello)
    runner = CappedRunner(app, lambda: cap, access_log=None, keepalive_timeout=keepalive,
                          lingering_time=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site.port, runner
    finally:
        await runner.cleanup()


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (bounded wait). A reset
    is a close too: a server that closes with our unread bytes in its buffer sends RST."""
    data = b""
    async with asyncio.timeout(DEADLINE):
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(4096):
                data += chunk
    return data


async def test_slow_headers_are_cut_and_a_quick_request_is_served() -> None:
    async with serving(keepalive=0.5) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        request = b"GET / HTTP/1.1\r\nHost: portal.desa\r\nX-Slow: " + b"a" * 200
        for byte in request:  # slowloris: a byte at a time, never the end of the headers
            if reader.at_eof():
                break
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0.02)
            if time.monotonic() - start > DEADLINE:
                break
        assert await closed_by_server(reader) == b""  # closed without an answer
        assert time.monotonic() - start < DEADLINE
        writer.close()
        # positive control: a whole request gets its answer
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: portal.desa\r\nConnection: close\r\n\r\n")
        assert b"200 OK" in await closed_by_server(reader)
        writer.close()


async def test_a_stalled_body_gets_408_and_a_moving_one_is_read() -> None:
    async with serving() as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: portal.desa\r\nContent-Length: 100000\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n\r\na=")
        await writer.drain()
        answer = await closed_by_server(reader)  # nothing more sent: the body stalls
        assert answer.startswith(b"HTTP/1.1 408")
        writer.close()
        # positive control: a body that keeps coming (>= 200 bytes per 0.2 s) is read whole
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b"a=" + b"x" * 3000
        writer.write(b"POST / HTTP/1.1\r\nHost: portal.desa\r\nConnection: close\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 500):
            writer.write(body[i:i + 500])
            await writer.drain()
            await asyncio.sleep(0.05)
        answer = await closed_by_server(reader)
        assert answer.startswith(b"HTTP/1.1 200") and b"got 1 fields" in answer
        writer.close()


async def test_connections_over_the_cap_are_reset_at_accept() -> None:
    async with serving(cap=3) as (port, runner):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        async with asyncio.timeout(DEADLINE):
            while runner.factory is None or runner.factory.open < 3:
                await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: portal.desa\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            assert await closed_by_server(reader) == b""  # reset, no answer
        writer.close()
        assert runner.factory is not None and runner.factory.refused >= 1
        # positive control: when one of the three goes, a new connection is served again
        held[0][1].close()
        async with asyncio.timeout(DEADLINE):
            while runner.factory.open >= 3:
                await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: portal.desa\r\nConnection: close\r\n\r\n")
        assert b"200 OK" in await closed_by_server(reader)
        writer.close()
        for _, w in held[1:]:
            w.close()


def test_the_cap_leaves_a_reserve_under_the_open_files_limit() -> None:
    cfg = make_cfg(max_connections=4000)
    assert connection_cap(cfg, 65536) == 4000
    assert connection_cap(cfg, 1024) == (1024 - 512) // 2  # half: each may proxy upstream
    assert connection_cap(make_cfg(max_connections=100), 1024) == 100


def test_the_open_files_limit_is_raised_within_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        got = raise_file_limit(512)
        assert got == min(512, hard) == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert raise_file_limit(300) == got  # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_bad_requests_log_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp logs each malformed request with a traceback; the flood filter on the
    daemon's handler makes it one line."""
    from gateway.daemon.logflood import FloodFilter
    flood = FloodFilter()
    async with serving() as (port, _):
        with caplog.at_level(logging.DEBUG):
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET / HTTP/1.1\r\nHost: portal.desa\r\n" + b"X: y\r\n" * 200
                             + b"Bad Header\r\n\r\n")
                answer = await closed_by_server(reader)
                assert answer.split(b" ")[1] == b"400"
                writer.close()
    server_records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert server_records and server_records[0].exc_info
    kept = [r for r in server_records if flood.filter(r)]
    assert kept and all(r.exc_info is None for r in kept)
    assert "Error handling request" in kept[0].getMessage()


async def test_a_stalled_login_form_is_a_408_without_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """Through the real portal app (its error middleware must not turn the cut into a 500)."""
    from gateway.portal.app import create_portal_app
    from tests.unit.test_portal_app import FakeBackend
    app = create_portal_app(make_cfg(), FakeBackend())
    app.middlewares[0] = make_body_deadline(every=0.2, least=200)  # quick, for the test
    runner = web.AppRunner(app, access_log=None, lingering_time=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        with caplog.at_level(logging.DEBUG):
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            writer.write(b"POST /login HTTP/1.1\r\nHost: portal.desa\r\nContent-Length: 9000\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n\r\naction=te")
            await writer.drain()
            assert (await closed_by_server(reader)).startswith(b"HTTP/1.1 408")
            writer.close()
        assert not any(r.exc_info for r in caplog.records)
        assert any("stalled" in r.getMessage() for r in caplog.records)
    finally:
        await runner.cleanup()
