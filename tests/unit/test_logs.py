"""Log lines for journald (priority prefix, no timestamp) and for a terminal; repeated lines
held back; malformed requests one debug line; one logger naming scheme."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from gateway.daemon.logs import MalformedRequestFilter, log_formatter


def record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("desanet.config", level, __file__, 1, msg, None, None)


@pytest.mark.parametrize(("level", "prefix"), [
    (logging.ERROR, "<3>"), (logging.WARNING, "<4>"), (logging.INFO, "<6>"), (logging.DEBUG, "<7>"),
])
def test_under_systemd_lines_carry_the_priority_and_no_time(level: int, prefix: str) -> None:
    line = log_formatter({"JOURNAL_STREAM": "8:1234"}).format(record(level, "reload refused"))
    assert line == f"{prefix}desanet.config: reload refused"


def test_every_line_of_a_multi_line_message_keeps_the_priority() -> None:
    text = log_formatter({"JOURNAL_STREAM": "8:1"}).format(record(logging.ERROR, "a\nb"))
    assert text.splitlines() == ["<3>desanet.config: a", "<3>b"]


def test_on_a_terminal_lines_keep_their_timestamp() -> None:
    line = log_formatter({}).format(record(logging.INFO, "ready"))
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO desanet.config: ready$", line)


# -- repeated lines ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def line(name: str, level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 7, msg, args, None)


async def send_raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


@pytest.mark.parametrize("with_filter", [True, False])
async def test_a_malformed_request_is_one_debug_line(
        with_filter: bool, caplog: pytest.LogCaptureFixture) -> None:
    from aiohttp import web

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None)  # as the daemon runs its servers
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server_log = logging.getLogger("aiohttp.server")
    flt = MalformedRequestFilter()
    if with_filter:
        server_log.addFilter(flt)
    caplog.set_level(logging.DEBUG, logger="desanet")
    try:
        good = await send_raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        bad = await send_raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    finally:
        server_log.removeFilter(flt)
        await runner.cleanup()
    assert good.startswith(b"HTTP/1.1 200") and b" 400 " in bad.split(b"\r\n")[0]
    records = [r for r in caplog.records if r.name in ("aiohttp.server", "desanet.http")]
    if with_filter:
        assert [(r.name, r.levelname, r.exc_info) for r in records] == \
            [("desanet.http", "DEBUG", None)]
        assert records[0].getMessage().startswith("malformed request from 127.0.0.1: ")
    else:  # the control: what aiohttp does on its own, per request
        assert [(r.name, r.levelname) for r in records] == [("aiohttp.server", "ERROR")]
        assert records[0].exc_info is not None


async def test_a_handler_bug_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1,
                               "Error handling request from %s", ("127.0.0.1",), None)
    try:
        raise KeyError("bug")
    except KeyError:
        import sys
        record.exc_info = sys.exc_info()
    assert MalformedRequestFilter().filter(record) is True
    assert record.levelno == logging.ERROR and record.exc_info is not None


# -- one naming scheme --------------------------------------------------------------------------


def test_every_logger_of_ours_is_named_desanet_dot_something() -> None:
    root = Path(__file__).resolve().parents[2]
    found = []
    for path in [*root.glob("gateway/**/*.py"), *root.glob("lab/desanet_lab/**/*.py")]:
        for match in re.finditer(r"getLogger\(([^)]*)\)", path.read_text(encoding="utf-8")):
            found.append((path.relative_to(root).as_posix(), match.group(1)))
    assert found, "the scan found no logger at all"
    bad = [(p, arg) for p, arg in found
           if not re.fullmatch(r'"desanet\.[a-z_.]+"', arg) and p != "gateway/daemon/logs.py"]
    assert bad == []


def test_a_body_the_portal_could_not_read_is_one_debug_line() -> None:
    from aiohttp.http_exceptions import TransferEncodingError

    record = logging.LogRecord("desanet.portal", logging.ERROR, __file__, 1,
                               "portal request %s %s failed", ("POST", "/login"), None)
    try:
        raise TransferEncodingError("Not enough data\n   for chunk")
    except TransferEncodingError:
        import sys
        record.exc_info = sys.exc_info()
    assert MalformedRequestFilter().filter(record) is False  # debug is off here
    assert (record.levelname, record.exc_info) == ("DEBUG", None)
    assert record.getMessage() == ("portal request POST /login failed: malformed request: "
                                   "Not enough data for chunk")
