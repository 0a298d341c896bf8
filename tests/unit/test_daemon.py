"""The daemon's own parts, without root: what it hosts (DaemonServers), the control
socket's directory, the exit-stack teardown, start-up recovery of a config trial.

The session and sweep rules the old ``Gateway`` tests covered live in the core
now (tests/unit/test_core_sessions.py, test_core_reconcile.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from gateway.config import Config
from gateway.config.pending import TrialRecord, TrialStore
from gateway.core.reconcile import Reconciler
from gateway.daemon.main import Daemon, _on_close, _task_on_stack
from gateway.daemon.servers import DaemonServers, prepare_socket_dir
from gateway.errors import ApplyFailed, ServiceError
from tests.unit.conftest import make_config
from tests.unit.corekit import Core, build_core, config_text, edited


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _loopback_config(http_port: int, redirect_port: int) -> Config:
    return make_config(
        network={"lan_address": "127.0.0.1/24"},
        dhcp={"range_start": "127.0.0.100", "range_end": "127.0.0.200"},
        portal={"http_port": http_port, "redirect_port": redirect_port},
    )


def _daemon_servers(core: Core) -> tuple[DaemonServers, Reconciler]:
    servers = DaemonServers(core.holder.get, core.sessions, core.state_dir)
    reconciler = Reconciler(core.holder, core.sessions, core.shaping, core.firewall, core.dhcp,
                            servers, core.clock)
    return servers, reconciler


async def _captive(port: int) -> bytes:
    url = f"http://127.0.0.1:{port}/api/captive"
    return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())


# -- what the daemon hosts ----------------------------------------------------------------


async def test_start_portal_on_taken_port_is_service_error(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        cfg = _loopback_config(taken.getsockname()[1], _free_port())
        core = build_core(tmp_path, cfg)
        servers, _ = _daemon_servers(core)
        with pytest.raises(ServiceError, match=r"portal\.http_port"):
            await servers.sync_portal(cfg, None)
    finally:
        taken.close()


async def test_portal_is_kept_across_changes_that_do_not_move_it(tmp_path: Path) -> None:
    cfg = _loopback_config(_free_port(), _free_port())
    core = build_core(tmp_path, cfg)
    servers, reconciler = _daemon_servers(core)
    await servers.sync_portal(cfg, None)
    try:
        runner = servers._portal
        new = core.config.parse(edited(config_text(cfg), portal={
            "terms_id": "Aturan baru.", "voucher_attempts_per_minute": 9}))
        steps = await reconciler.converge(new, cfg)
        assert "portal" not in steps
        assert servers._portal is runner  # villagers' connections are not dropped
        assert servers._limiter is not None and servers._limiter.limit == 9
        assert b"captive" in await _captive(cfg.portal.http_port)
    finally:
        await servers.stop_portal()


async def test_reload_to_a_taken_portal_port_keeps_the_old_portal(tmp_path: Path) -> None:
    old_cfg = _loopback_config(_free_port(), _free_port())
    core = build_core(tmp_path, old_cfg)
    servers, reconciler = _daemon_servers(core)
    await servers.sync_portal(old_cfg, None)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        new_cfg = _loopback_config(taken.getsockname()[1], _free_port())
        with pytest.raises(ApplyFailed, match=r"step portal failed.*cannot listen"):
            await reconciler.converge(new_cfg, core.cfg)
        assert core.holder.current.portal == old_cfg.portal
        assert b"captive" in await _captive(old_cfg.portal.http_port)
    finally:
        taken.close()
        await servers.stop_portal()


async def test_control_socket_is_root_only_and_answers(tmp_path: Path) -> None:
    core = build_core(tmp_path)
    servers, _ = _daemon_servers(core)
    sock = tmp_path / "run" / "control.sock"
    sock.parent.mkdir(mode=0o755)
    sock.write_text("stale")  # a socket file left by a killed daemon is replaced
    await servers.start_control(core.control_app(), str(sock))
    try:
        st = os.stat(sock)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s, \
                s.get("http://desanet/v1/config") as resp:
            assert resp.status == 200
            assert (await resp.json())["version"] == core.config.version
    finally:
        await servers.stop_control()
        await servers.stop_control()  # twice is harmless


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


# -- teardown on the exit stack ---------------------------------------------------------------


async def test_teardown_completes_in_reverse_when_one_close_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closed: list[str] = []

    def closer(name: str, error: Exception | None = None) -> Callable[[], Awaitable[None]]:
        async def close() -> None:
            closed.append(name)
            if error is not None:
                raise error
        return close

    async with contextlib.AsyncExitStack() as stack:
        _on_close(stack, "store", closer("store"))
        _on_close(stack, "dnsmasq", closer("dnsmasq", ServiceError("dnsmasq would not die")))
        _on_close(stack, "portal", closer("portal", RuntimeError("a bug")))
        _on_close(stack, "control socket", closer("control socket"))
    assert closed == ["control socket", "portal", "dnsmasq", "store"]
    assert "stopping portal failed" in caplog.text
    assert "stopping dnsmasq failed" in caplog.text


async def test_teardown_runs_when_start_fails_halfway() -> None:
    closed: list[str] = []

    async def close() -> None:
        closed.append("store")

    with pytest.raises(ServiceError):
        async with contextlib.AsyncExitStack() as stack:
            _on_close(stack, "store", close)
            raise ServiceError("the portal cannot listen")
    assert closed == ["store"]


async def test_background_tasks_are_cancelled_on_the_stack() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    async with contextlib.AsyncExitStack() as stack:
        task = asyncio.create_task(forever())
        _task_on_stack(stack, task)
        await started.wait()
    assert task.cancelled()


# -- start-up --------------------------------------------------------------------------------


async def test_start_finds_a_pending_trial_and_restores_the_previous_file(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    previous = config_text(make_config(store={"state_dir": str(state_dir)}))
    trial_text = edited(previous, portal={"terms_id": "Trial."})
    path = tmp_path / "gateway.toml"
    path.write_text(trial_text)
    record = TrialRecord(1_700_000_000, 1_700_000_300, previous, "a" * 12, "b" * 12, "budi")
    TrialStore(state_dir).save(record)

    cfg, text, recovered = await Daemon(str(path))._load_config()
    assert recovered == record
    assert text == previous and path.read_text() == previous
    assert cfg.portal.terms_id == make_config().portal.terms_id
    assert TrialStore(state_dir).load() is None

    cfg, text, recovered = await Daemon(str(path))._load_config()  # next start: nothing to do
    assert recovered is None and text == previous


async def test_uplink_down_switches_dnsmasq_to_offline_answers_and_back(tmp_path: Path) -> None:
    from gateway.core.uplink import UplinkStatus
    from gateway.services.dnsmasq import Dnsmasq

    core = build_core(tmp_path)
    dm = Dnsmasq.in_dirs("dnsmasq", str(tmp_path), str(tmp_path), check_config=False)
    dm.offline_server = "127.0.0.1#5999"
    follow = Daemon._dns_follows_uplink(core.holder, dm)
    await follow(UplinkStatus("down", 1.0, "link"))
    servers = tmp_path / "dnsmasq.servers"
    assert "server=127.0.0.1#5999" in servers.read_text()
    await follow(UplinkStatus("up", 2.0, "probes"))
    assert "server=" not in servers.read_text()


async def test_catalog_badges_follow_the_uplink_at_once(tmp_path: Path) -> None:
    from typing import cast

    from gateway.cache.health import ServiceHealth
    from gateway.cache.service import LocalServices
    from gateway.core.events import ServiceHealthChanged
    from gateway.core.uplink import UplinkStatus

    class Site:
        def __init__(self) -> None:
            self.health = {"dukcapil": ServiceHealth("dukcapil", "online")}
            self.probes = 0

        def health_states(self) -> dict[str, str]:
            return {k: v.state for k, v in self.health.items()}

        def uplink_lost(self) -> None:
            for h in self.health.values():
                h.mark_offline(0.0, "uplink down")

        async def probe(self) -> None:
            self.probes += 1
            self.health["dukcapil"].record_ok(1.0)

    core = build_core(tmp_path)
    servers, _ = _daemon_servers(core)
    site = Site()
    servers.local = cast(LocalServices, site)
    follow = Daemon._local_follows_uplink(servers, core.bus)
    await follow(UplinkStatus("down", 1.0, "link"))
    assert site.health_states() == {"dukcapil": "offline"} and site.probes == 0
    await follow(UplinkStatus("up", 2.0, "probes"))  # back: probe now, not in a minute
    assert site.probes == 1 and site.health_states() == {"dukcapil": "online"}
    assert [s.event for s in core.events()] == [ServiceHealthChanged("dukcapil", "offline"),
                                                ServiceHealthChanged("dukcapil", "online")]
