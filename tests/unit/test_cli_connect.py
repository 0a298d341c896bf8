"""Which daemon the CLI talks to: labs listed when it cannot reach one; the site's zone."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from gateway import cli, cli_connect
from gateway.cli_connect import SiteZone, labs_up, unreachable_hint
from gateway.errors import ControlError


@pytest.fixture
def lab_root() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="dn-labs-", dir="/tmp")  # sun_path is 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


def listening(root: str, prefix: str) -> socket.socket:
    os.makedirs(os.path.join(root, prefix))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.path.join(root, prefix, "control.sock"))
    sock.listen(4)
    return sock


def left_over(root: str, prefix: str) -> None:
    # A socket file whose daemon is gone: nobody accepts on it.
    listening(root, prefix).close()


def test_labs_up_lists_answering_sockets_only(lab_root: str) -> None:
    a, b = listening(lab_root, "dn"), listening(lab_root, "p7")
    left_over(lab_root, "old")
    try:
        pattern = os.path.join(lab_root, "*", "control.sock")
        assert labs_up(pattern) == [("dn", os.path.join(lab_root, "dn", "control.sock")),
                                    ("p7", os.path.join(lab_root, "p7", "control.sock"))]
    finally:
        a.close()
        b.close()


def test_unreachable_lists_the_labs_and_how_to_pick_one(
        lab_root: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    a, b = listening(lab_root, "dn"), listening(lab_root, "p7")
    pattern = os.path.join(lab_root, "*", "control.sock")
    real = unreachable_hint
    monkeypatch.setattr(cli, "unreachable_hint",
                        lambda tried, argv: real(tried, argv, pattern))
    try:
        missing = os.path.join(lab_root, "none.sock")
        assert cli.main(["--socket", missing, "clients", "--json"]) == 1
    finally:
        a.close()
        b.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: cannot reach the daemon at")
    assert "pick one with --socket" in err[1]
    p7 = os.path.join(lab_root, "p7", "control.sock")
    assert f"  lab 'p7': desanet --socket {p7} clients --json" in err
    assert len(err) == 4  # the error, the heading, two labs


def test_no_lab_no_hint(lab_root: str) -> None:
    left_over(lab_root, "old")
    assert unreachable_hint("/x.sock", ["status"], os.path.join(lab_root, "*", "control.sock")) \
        == []


def test_the_lab_that_was_tried_is_not_offered_again(lab_root: str) -> None:
    a = listening(lab_root, "dn")
    try:
        path = os.path.join(lab_root, "dn", "control.sock")
        assert unreachable_hint(path, ["status"], os.path.join(lab_root, "*", "control.sock")) \
            == []
    finally:
        a.close()


class StatusOnly:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked = 0

    def request(self, method: str, path: str) -> Any:
        assert (method, path) == ("GET", "/v1/status")
        self.asked += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(("answer", "zone"), [
    ({"timezone": "Asia/Makassar"}, "Asia/Makassar"),
    ({"timezone": "Mars/Olympus"}, "Asia/Jakarta"),  # unknown here: the default
    ({}, "Asia/Jakarta"),  # an older daemon
])
def test_site_zone_comes_from_the_status_answer_once(answer: Any, zone: str) -> None:
    daemon = StatusOnly(answer)
    site = SiteZone(lambda: daemon)
    assert (site.name, site.name) == (zone, zone)
    assert daemon.asked == 1


def test_site_zone_asks_again_after_the_daemon_was_down() -> None:
    daemon = StatusOnly(ControlError("down", 503, "unavailable"))
    site = SiteZone(lambda: daemon)
    assert site.name == "Asia/Jakarta"
    daemon.answer = {"timezone": "Asia/Jayapura"}
    assert site.name == "Asia/Jayapura"


def test_site_zone_learnt_from_a_status_answer_asks_nothing() -> None:
    daemon = StatusOnly(AssertionError("must not be asked"))
    site = SiteZone(lambda: daemon)
    site.learn({"timezone": "Asia/Makassar"})
    assert site.name == "Asia/Makassar" and daemon.asked == 0


def test_resolve_socket_picks_the_one_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    monkeypatch.delenv("DESANET_SOCKET", raising=False)
    monkeypatch.setattr(cli_connect, "DEFAULT_PATH", "/nonexistent/gateway.toml")
    monkeypatch.setattr(cli_connect, "DEFAULT_SOCKET", "/nonexistent/control.sock")
    monkeypatch.setattr(cli_connect.glob, "glob", lambda pattern: ["/run/desanet-lab/p7/c.sock"])
    args = argparse.Namespace(socket=None, config=None)
    assert cli_connect.resolve_socket(args) == "/run/desanet-lab/p7/c.sock"
