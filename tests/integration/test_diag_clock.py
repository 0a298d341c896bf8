"""The `clock` diagnostic compares this clock with a server's (its HTTP Date): a server an
hour ahead is told as such, a server in step is not. A real HTTP server on loopback plays
the government service's upstream; no root needed."""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway.diag import CheckResult, run_checks

pytestmark = [pytest.mark.integration]


@pytest.fixture
def origin() -> Iterator[tuple[int, list[datetime.timedelta]]]:
    """An upstream whose clock is ours plus ``offset[0]``; its port and that offset."""
    offset = [datetime.timedelta(0)]

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def date_time_string(self, timestamp: float | None = None) -> str:
            when = datetime.datetime.now(datetime.UTC) + offset[0]
            return email.utils.format_datetime(when, usegmt=True)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], offset
    finally:
        server.shutdown()
        server.server_close()


def clock(tmp_path: Path, port: int) -> CheckResult:
    path = tmp_path / "gateway.toml"
    path.write_text("\n".join([
        "[site]", 'name = "T"', 'village = "T"', "[network]", 'lan_interface = "br-lan"',
        'wan_interface = "eth0"', 'lan_address = "10.42.0.1/24"', "[dhcp]",
        'range_start = "10.42.0.100"', 'range_end = "10.42.0.200"', "[local_services]",
        "enabled = true", "[[local_services.services]]", 'slug = "dukcapil"',
        'title_id = "D"', 'title_en = "D"', f'upstream = "http://127.0.0.1:{port}"']) + "\n")
    [result] = asyncio.run(run_checks(["clock"], str(path)))
    return result


def test_a_clock_in_step_with_the_upstream(tmp_path: Path,
                                           origin: tuple[int, list[datetime.timedelta]]) -> None:
    r = clock(tmp_path, origin[0])
    assert r.details["reference"] == "127.0.0.1"
    assert abs(r.details["skew_seconds"]) <= 60  # HTTP dates have whole seconds
    assert "minutes" not in r.summary_en


def test_a_clock_an_hour_off_the_upstream_fails(tmp_path: Path,
                                                origin: tuple[int, list[datetime.timedelta]]) -> None:
    port, offset = origin
    offset[0] = datetime.timedelta(hours=1)  # the server is an hour ahead: we are behind
    r = clock(tmp_path, port)
    assert r.status == "fail", r
    assert "60 minutes behind 127.0.0.1" in r.summary_en
    assert "lebih lambat" in r.summary_id
