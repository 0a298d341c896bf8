"""Daemon life-cycle rules with recording fakes for the kernel side (no root).

The Gateway is built without __init__ so that no netlink or nftables handle
is opened; the store is the real SQLite one.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from gateway.daemon import gateway as gwmod
from gateway.daemon.gateway import Gateway, prepare_socket_dir
from gateway.errors import ControlError, ServiceError
from gateway.model import Session
from gateway.store import Store
from tests.unit.conftest import make_config

NOW = 1_700_000_000
A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
IP = "10.42.0.101"


class FakeFirewall:
    def __init__(self) -> None:
        self.revoked: list[tuple[str, str, str | None]] = []
        self.authorized: dict[tuple[str, str], int] = {}
        self.active: dict[tuple[str, str], int] = {}
        self.applied: list[Config] = []

    def revoke(self, mac: str, ip: str, class_text: str | None = None) -> None:
        self.revoked.append((mac, ip, class_text))

    def authorized_clients(self) -> dict[tuple[str, str], int]:
        return self.authorized

    def active_clients(self) -> dict[tuple[str, str], int]:
        return self.active

    def apply(self, cfg: Config, sessions: Any, now: int, carry_garden: bool = True) -> None:
        self.applied.append(cfg)


class FakeShaping:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.removed: list[Session] = []

    def class_text(self, session: Session) -> str | None:
        return self.ip_class_text(session.ip)

    def ip_class_text(self, ip: str) -> str | None:
        return "1:165" if self.gw.cfg.shaping.enabled else None

    async def remove(self, session: Session) -> None:
        self.removed.append(session)

    async def reconcile(self, sessions: Any, previous: Config | None = None) -> int:
        return 0

    async def sample(self) -> None:
        pass


class FakeNetlink:
    async def call(self, fn: Any, *args: Any) -> Any:
        return fn(*args)


class FakeNeighbours:
    def mac_of(self, ip: str) -> str | None:
        return None


class FakeDnsmasq:
    def write_config(self, text: str) -> bool:
        return False


def make_gateway(tmp_path: Path, cfg: Config) -> Gateway:
    gw = object.__new__(Gateway)
    gw.cfg = cfg
    gw.config_path = None
    gw.state_dir = tmp_path
    gw.run_dir = tmp_path
    gw.store = Store(tmp_path / "db")
    gw.firewall = FakeFirewall()  # type: ignore[assignment]
    gw.shaping = FakeShaping(gw)  # type: ignore[assignment]
    gw.dnsmasq = FakeDnsmasq()  # type: ignore[assignment]
    gw.netlink = FakeNetlink()  # type: ignore[assignment]
    gw.neighbours = FakeNeighbours()  # type: ignore[assignment]
    gw.local = None
    gw._portal_runner = None
    gw._lock = asyncio.Lock()
    gw.now = lambda: NOW  # type: ignore[method-assign]
    return gw


def session(mac: str, ip: str = IP, started: int = NOW - 100) -> Session:
    return Session(mac, ip, started, NOW + 3600, 1800, "terms")


@pytest.fixture
def shaped(tmp_path: Path) -> Gateway:
    return make_gateway(tmp_path, make_config(shaping={"enabled": True}))


async def test_ending_old_session_keeps_class_of_new_holder_of_the_address(
    shaped: Gateway,
) -> None:
    # Phone A's lease moved to phone B, who logged in; A's session ends later.
    shaped.store.start_session(session(A))
    shaped.store.start_session(session(B))
    ended = await shaped.deauthorize(A, "deauth")
    assert ended is not None
    fw: FakeFirewall = shaped.firewall  # type: ignore[assignment]
    sh: FakeShaping = shaped.shaping  # type: ignore[assignment]
    assert fw.revoked == [(A, IP, None)]  # auth4/active4 only, B's map entry stays
    assert sh.removed == []  # B's HTB class stays

    await shaped.deauthorize(B, "deauth")
    assert fw.revoked[-1] == (B, IP, "1:165")
    assert [s.mac for s in sh.removed] == [B]


async def test_sweep_stale_entry_keeps_map_entry_of_live_address(shaped: Gateway) -> None:
    shaped.store.start_session(session(B))
    fw: FakeFirewall = shaped.firewall  # type: ignore[assignment]
    fw.authorized = {(A, IP): 100, (B, IP): 100, (A, "10.42.0.102"): 100}
    fw.active = {(B, IP): 100}
    await shaped.sweep()
    assert sorted(fw.revoked) == [(A, IP, None), (A, "10.42.0.102", "1:165")]


async def test_sweep_loop_survives_unexpected_errors(
    shaped: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")

    monkeypatch.setattr(gwmod, "SWEEP_INTERVAL", 0.001)
    monkeypatch.setattr(shaped, "sweep", flaky)
    task = asyncio.create_task(shaped._sweep_loop())
    for _ in range(200):
        await asyncio.sleep(0.005)
        if calls >= 3:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls >= 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _loopback_config(http_port: int, redirect_port: int) -> Config:
    return make_config(
        network={"lan_address": "127.0.0.1/8"},
        dhcp={"range_start": "127.0.0.100", "range_end": "127.0.0.200"},
        portal={"http_port": http_port, "redirect_port": redirect_port},
    )


async def test_reload_to_a_taken_portal_port_keeps_the_old_portal(tmp_path: Path) -> None:
    old_cfg = _loopback_config(_free_port(), _free_port())
    gw = make_gateway(tmp_path, old_cfg)
    await gw._start_portal()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        new_cfg = _loopback_config(taken.getsockname()[1], _free_port())
        with pytest.raises(ControlError, match=r"reload refused.*cannot listen"):
            await gw.reload(new_cfg)
        assert gw.cfg is old_cfg
        url = f"http://127.0.0.1:{old_cfg.portal.http_port}/api/captive"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        assert b"captive" in body
    finally:
        taken.close()
        await gw._stop_portal()
        gw.store.close()


async def test_start_portal_on_taken_port_is_service_error(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        gw = make_gateway(tmp_path, _loopback_config(taken.getsockname()[1], _free_port()))
        with pytest.raises(ServiceError, match=r"portal\.http_port"):
            await gw._start_portal()
    finally:
        taken.close()


def test_socket_dir_writable_by_others_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(ServiceError, match="only this user"):
        prepare_socket_dir(shared / "control.sock")


def test_socket_dir_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ServiceError, match="symlink"):
        prepare_socket_dir(tmp_path / "link" / "control.sock")


def test_socket_dir_is_created_root_only_writable(tmp_path: Path) -> None:
    prepare_socket_dir(tmp_path / "run" / "desanet" / "control.sock")
    assert (tmp_path / "run" / "desanet").stat().st_mode & 0o022 == 0
