"""Lost answers: a change is never sent twice and says "outcome unknown"; a read is retried.

A tiny raw daemon on a unix socket follows a script, one step per connection:
"drop" reads the whole request and closes without answering, "hang" reads it
and never answers, "answer" replies 200 with JSON, "answer_close" replies and
then closes the kept-alive connection. It counts what arrived.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator

import pytest

from gateway import cli
from gateway.control.aclient import AsyncControlClient
from gateway.control.client import OUTCOME_UNKNOWN, UNREACHABLE, ControlClient, check_with
from gateway.errors import ControlError

BODY = b'{"ok": true}'
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
          b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


class ScriptedDaemon:
    def __init__(self, path: str, script: list[str]) -> None:
        self.path = path
        self.script = list(script)
        self.requests: list[bytes] = []
        self.connections = 0
        self.closed = threading.Event()  # set each time the daemon closed a connection
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        self._sock.listen(8)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _read_request(self, conn: socket.socket) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += conn.recv(65536)
        return head.split(b"\r\n")[0]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                # One connection may carry several requests (keep-alive) while answering.
                while True:
                    line = self._read_request(conn)
                    if line is None:
                        break
                    self.requests.append(line)
                    step = self.script.pop(0) if self.script else "answer"
                    if step == "drop":
                        break
                    if step == "hang":
                        self._stop.wait()
                        break
                    conn.sendall(ANSWER)
                    if step == "answer_close":
                        break
            self.closed.set()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


@pytest.fixture
def sock_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="dn-rt-", dir="/tmp")  # sun_path is 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def scripted(sock_dir: str) -> Iterator[list[ScriptedDaemon]]:
    made: list[ScriptedDaemon] = []
    yield made
    for d in made:
        d.close()


def start(scripted: list[ScriptedDaemon], sock_dir: str, *script: str) -> ScriptedDaemon:
    d = ScriptedDaemon(os.path.join(sock_dir, "c.sock"), list(script))
    scripted.append(d)
    return d


def test_a_change_whose_answer_is_lost_is_not_sent_again(
        scripted: list[ScriptedDaemon], sock_dir: str) -> None:
    d = start(scripted, sock_dir, "drop")
    with pytest.raises(ControlError) as info:
        ControlClient(d.path).request("POST", "/v1/clients/auth", {"mac": "02:00:00:00:00:01"})
    assert info.value.reason == OUTCOME_UNKNOWN
    assert "sent; outcome unknown" in str(info.value)
    assert "check with `desanet clients`" in str(info.value)
    assert d.requests == [b"POST /v1/clients/auth HTTP/1.1"]


def test_a_change_with_no_answer_in_time_is_outcome_unknown(
        scripted: list[ScriptedDaemon], sock_dir: str) -> None:
    d = start(scripted, sock_dir, "hang")
    with pytest.raises(ControlError) as info:
        ControlClient(d.path, timeout=0.2).request("POST", "/v1/vouchers", {"count": 1})
    assert info.value.reason == OUTCOME_UNKNOWN
    assert "check with `desanet vouchers list`" in str(info.value)
    assert len(d.requests) == 1


def test_a_read_whose_answer_is_lost_is_asked_once_more(
        scripted: list[ScriptedDaemon], sock_dir: str) -> None:
    d = start(scripted, sock_dir, "drop", "answer")
    assert ControlClient(d.path).request("GET", "/v1/clients") == {"ok": True}
    assert d.requests == [b"GET /v1/clients HTTP/1.1"] * 2


def test_a_read_is_asked_at_most_twice(scripted: list[ScriptedDaemon], sock_dir: str) -> None:
    d = start(scripted, sock_dir, "drop", "drop", "answer")
    with pytest.raises(ControlError) as info:
        ControlClient(d.path).request("GET", "/v1/status")
    assert info.value.reason != OUTCOME_UNKNOWN and "without an answer" in str(info.value)
    assert len(d.requests) == 2


def test_a_change_rides_a_connection_that_just_answered(
        scripted: list[ScriptedDaemon], sock_dir: str) -> None:
    d = start(scripted, sock_dir)
    client = ControlClient(d.path)
    client.request("GET", "/v1/status")
    client.request("GET", "/v1/clients")
    client.request("POST", "/v1/clients/deauth", {"mac": "02:00:00:00:00:01"})
    assert d.connections == 1 and len(d.requests) == 3


def test_a_change_after_a_long_idle_takes_a_new_connection(
        scripted: list[ScriptedDaemon], sock_dir: str) -> None:
    d = start(scripted, sock_dir)
    client = ControlClient(d.path, reuse_for=-1)  # every connection counts as idle too long
    client.request("GET", "/v1/status")
    client.request("GET", "/v1/clients")
    assert d.connections == 1  # reads share one connection
    client.request("POST", "/v1/clients/deauth", {"mac": "02:00:00:00:00:01"})
    assert d.connections == 2 and len(d.requests) == 3


def test_a_change_on_a_connection_the_daemon_closed_is_sent_once_on_a_new_one(
        scripted: list[ScriptedDaemon], sock_dir: str) -> None:
    d = start(scripted, sock_dir, "answer_close", "answer")
    client = ControlClient(d.path)
    client.request("GET", "/v1/status")
    assert d.closed.wait(5)
    # The daemon closed it (a restart, say) without saying so: sending fails, nothing
    # reached the daemon, so the change goes once on a new connection.
    assert client.request("POST", "/v1/clients/auth", {"mac": "02:00:00:00:00:01"}) == \
        {"ok": True}
    assert d.requests == [b"GET /v1/status HTTP/1.1", b"POST /v1/clients/auth HTTP/1.1"]
    assert d.connections == 2


def test_no_daemon_is_unreachable_not_outcome_unknown(sock_dir: str) -> None:
    with pytest.raises(ControlError) as info:
        ControlClient(os.path.join(sock_dir, "none.sock")).request("POST", "/v1/reload", {})
    assert info.value.reason == UNREACHABLE and "cannot reach the daemon" in str(info.value)


@pytest.mark.parametrize(("path", "command"), [
    ("/v1/clients/auth", "desanet clients"), ("/v1/clients/deauth", "desanet clients"),
    ("/v1/vouchers/revoke", "desanet vouchers list"), ("/v1/config/apply", "desanet status"),
    ("/v1/reload", "desanet status"), ("/v1/services/prefetch", "desanet services"),
])
def test_check_with_names_the_list_command(path: str, command: str) -> None:
    assert check_with(path) == command


def test_cli_says_sent_outcome_unknown(scripted: list[ScriptedDaemon], sock_dir: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    d = start(scripted, sock_dir, "drop")
    assert cli.main(["--socket", d.path, "clients", "deauth", "02:00:00:00:00:01"]) == 1
    err = capsys.readouterr().err
    assert "sent; outcome unknown" in err and "desanet clients" in err
    assert "refused" not in err
    assert len(d.requests) == 1


async def test_async_client_change_is_sent_once(scripted: list[ScriptedDaemon],
                                                sock_dir: str) -> None:
    d = start(scripted, sock_dir, "drop")
    async with AsyncControlClient(d.path) as api:
        with pytest.raises(ControlError) as info:
            await api.request("POST", "/v1/clients/auth", {"mac": "02:00:00:00:00:01"})
    assert info.value.reason == OUTCOME_UNKNOWN
    assert len(d.requests) == 1


async def test_async_client_read_is_asked_once_more(scripted: list[ScriptedDaemon],
                                                    sock_dir: str) -> None:
    d = start(scripted, sock_dir, "drop", "answer")
    async with AsyncControlClient(d.path) as api:
        assert await api.request("GET", "/v1/status") == {"ok": True}
    assert len(d.requests) == 2


def test_a_reload_whose_answer_is_lost_is_no_refusal(
        scripted: list[ScriptedDaemon], sock_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    d = start(scripted, sock_dir, "drop")
    assert cli.main(["--socket", d.path, "reload"]) == 1
    err = capsys.readouterr().err
    assert "sent; outcome unknown" in err and "check with `desanet status`" in err
    assert "refused" not in err and "running config stays" not in err
