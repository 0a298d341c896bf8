"""The Reconciler against the fakes: converge's steps, what a reload leaves alone,
undo in reverse order when a step fails, and the timer loop.

Every fake writes what it did into one journal, so the order of steps
across parts (shaping before the firewall, forwarding only after it) is
asserted, not just the list converge returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from gateway.core.events import ChangeSource, ConfigRefused, EndReason, SessionEnded
from gateway.core.reconcile import SWEEP_INTERVAL, Reconciler
from gateway.errors import ApplyFailed, FirewallError, ServiceError, ShapingError
from gateway.firewall.fake import FakeFirewall
from gateway.model import Session
from gateway.services.fake import FakeDhcpServer
from gateway.shaping.fake import FakeShaper
from gateway.shaping.plan import DeviceTree
from tests.unit.conftest import make_config
from tests.unit.corekit import Core, FakeServers, build_core, config_text, edited


class JournalShaper(FakeShaper):
    def __init__(self, journal: list[str]) -> None:
        super().__init__()
        self.journal = journal

    async def reconcile(self, tree: DeviceTree) -> int:
        n = await super().reconcile(tree)
        self.journal.append(f"shaper.reconcile {tree.device}")
        return n

    async def remove(self, device: str) -> None:
        await super().remove(device)
        self.journal.append(f"shaper.remove {device}")


class JournalFirewall(FakeFirewall):
    def __init__(self, journal: list[str]) -> None:
        super().__init__()
        self.journal = journal

    async def apply(self, cfg: Config, sessions: Any, now: int,
                    carry_garden: bool = True, meters: Any = ()) -> None:
        await super().apply(cfg, sessions, now, carry_garden, meters)
        self.journal.append(f"firewall.apply {cfg.portal.http_port}")


class JournalDhcp(FakeDhcpServer):
    def __init__(self, journal: list[str]) -> None:
        super().__init__()
        self.journal = journal

    async def configure(self, cfg: Config) -> bool:
        changed = await super().configure(cfg)
        self.journal.append(f"dhcp.configure {'changed' if changed else 'same'}")
        return changed

    async def start(self) -> None:
        await super().start()
        self.journal.append("dhcp.start")

    async def stop(self) -> None:
        await super().stop()
        self.journal.append("dhcp.stop")


def shaped(**sections: dict[str, Any]) -> Config:
    return make_config(shaping={"enabled": True, **sections.pop("shaping", {})}, **sections)


def journal_core(tmp_path: Path, cfg: Config | None = None) -> tuple[Core, list[str]]:
    journal: list[str] = []
    core = build_core(tmp_path, cfg or shaped(), shaper=JournalShaper(journal),
                      firewall=JournalFirewall(journal), dhcp=JournalDhcp(journal),
                      servers=FakeServers(journal))
    return core, journal


async def test_start_runs_every_step_in_order(tmp_path: Path) -> None:
    core, journal = journal_core(tmp_path)
    steps = await core.start()
    assert steps == ["config", "plans", "shaping", "firewall", "forwarding", "dnsmasq", "local_services",
                     "portal", "limits"]
    assert journal == [
        "shaper.reconcile br-lan", "shaper.reconcile wan0",  # classes before the rules using them
        "firewall.apply 80",
        "enable_forwarding",  # only once the firewall fails closed
        "dhcp.configure changed", "dhcp.start",
        "sync_local_services", "sync_portal", "update_limits",
    ]
    assert core.dhcp.running and core.servers.forwarding and core.servers.portal is core.cfg
    assert core.firewall.last_carry_garden is True


async def test_start_rebuilds_the_kernel_from_the_store(tmp_path: Path) -> None:
    core = build_core(tmp_path, shaped())
    now = core.clock.now()
    await core.store.start_session(Session("02:00:00:00:00:0a", "10.42.0.101", now - 10,
                                           now + 600, 1800, "terms"))
    await core.store.start_session(Session("02:00:00:00:00:0b", "10.42.0.102", now - 900,
                                           now - 1, 1800, "terms"))  # expired while down
    await core.start()
    assert set(core.firewall.authorized) == {("02:00:00:00:00:0a", "10.42.0.101")}
    assert 0x100 + 101 in core.shaper.classes["br-lan"]
    # The expired one is ended (with its event) by the first sweep, not hidden by the rebuild.
    await core.sessions.sweep()
    assert core.store.end_reason("02:00:00:00:00:0b") == "expired"


def _edit(**sections: dict[str, Any]) -> Callable[[str], str]:
    return lambda text: edited(text, **sections)


# (name, edit of the running text, steps converge runs, journal expected after the reload)
RELOADS: list[tuple[str, Callable[[str], str], list[str], list[str]]] = [
    ("terms only", _edit(portal={"terms_id": "Aturan baru."}),
     ["config", "plans", "shaping", "firewall", "dnsmasq", "limits"],
     ["shaper.reconcile br-lan", "shaper.reconcile wan0", "firewall.apply 80",
      "dhcp.configure same", "update_limits"]),
    ("portal port", _edit(portal={"http_port": 8080}),
     ["config", "plans", "shaping", "firewall", "dnsmasq", "portal", "limits"],
     ["shaper.reconcile br-lan", "shaper.reconcile wan0", "firewall.apply 8080",
      "dhcp.configure changed", "dhcp.stop", "dhcp.start", "sync_portal", "update_limits"]),
    ("dhcp range", _edit(dhcp={"range_end": "10.42.0.200"}),
     ["config", "plans", "shaping", "firewall", "dnsmasq", "limits"],
     ["shaper.reconcile br-lan", "shaper.reconcile wan0", "firewall.apply 80",
      "dhcp.configure changed", "dhcp.stop", "dhcp.start", "update_limits"]),
    ("local services on", _edit(local_services={"enabled": True}),
     ["config", "plans", "shaping", "firewall", "dnsmasq", "local_services", "limits"],
     ["shaper.reconcile br-lan", "shaper.reconcile wan0", "firewall.apply 80",
      "dhcp.configure changed", "dhcp.stop", "dhcp.start", "sync_local_services",
      "update_limits"]),
    ("shaping off", _edit(shaping={"enabled": False}),
     ["config", "plans", "shaping", "firewall", "dnsmasq", "limits"],
     ["shaper.remove br-lan", "shaper.remove wan0", "firewall.apply 80",
      "dhcp.configure same", "update_limits"]),
]


@pytest.mark.parametrize(("name", "edit", "steps", "calls"), RELOADS,
                         ids=[r[0] for r in RELOADS])
async def test_reload_touches_only_what_changed(
    tmp_path: Path, name: str, edit: Callable[[str], str], steps: list[str], calls: list[str]
) -> None:
    core, journal = journal_core(tmp_path)
    await core.start()
    journal.clear()
    new_text = edit(core.config_path.read_text())
    old = core.cfg
    assert await core.reconciler.converge(core.config.parse(new_text), old) == steps
    assert journal == calls
    assert core.cfg == core.config.parse(new_text)


async def test_reload_of_terms_only_keeps_portal_and_dnsmasq(tmp_path: Path) -> None:
    core, journal = journal_core(tmp_path)
    await core.start()
    pid, starts = core.dhcp.pid, core.dhcp.starts
    journal.clear()
    core.config_path.write_text(edited(core.config_path.read_text(),
                                       portal={"terms_id": "Aturan baru."}))
    result = await core.config.reload(ChangeSource.SIGHUP)
    assert [c["path"] for c in result.changes] == ["portal.terms_id"]
    assert "sync_portal" not in journal and "dhcp.start" not in journal
    assert (core.dhcp.pid, core.dhcp.starts, core.dhcp.restart_count) == (pid, starts, 0)
    assert core.cfg.portal.terms_id == "Aturan baru."


async def test_reload_of_the_portal_port_restarts_the_portal(tmp_path: Path) -> None:
    core, journal = journal_core(tmp_path)
    await core.start()
    journal.clear()
    core.config_path.write_text(edited(core.config_path.read_text(), portal={"http_port": 8080}))
    await core.config.reload(ChangeSource.SIGHUP)
    assert "sync_portal" in journal
    assert core.servers.portal is not None and core.servers.portal.portal.http_port == 8080
    assert core.dhcp.restart_count == 1  # the captive URL handed out by DHCP has the port


async def test_walled_garden_change_does_not_carry_the_garden_set(tmp_path: Path) -> None:
    core = build_core(tmp_path, shaped())
    await core.start()
    new = core.config.parse(edited(config_text(core.cfg),
                                   walled_garden={"hostnames": ["dukcapil.go.id"]}))
    await core.reconciler.converge(new, core.cfg)
    assert core.firewall.last_carry_garden is False
    await core.reconciler.converge(new, new)
    assert core.firewall.last_carry_garden is True


# -- failures: every step taken is undone, in reverse order ------------------------------


def _fail_dhcp_configure(core: Core) -> None:
    core.dhcp.refuse_next_configure = True


def _fail_dhcp_start(core: Core) -> None:
    core.dhcp.fail_on["start"] = ServiceError("dnsmasq exited at once with code 2 (fake)")


def _fail_portal(core: Core) -> None:
    core.servers.fail_on["sync_portal"] = ServiceError("the portal cannot listen on port 8080")


def _fail_firewall(core: Core) -> None:
    core.firewall.fail_on["apply"] = FirewallError("nftables refused the ruleset")


def _fail_shaping(core: Core) -> None:
    core.shaper.fail_on["reconcile"] = ShapingError("tc refused the class")


def _fail_local(core: Core) -> None:
    core.servers.fail_on["sync_local_services"] = ServiceError("port 80 on layanan.desa taken")


# (name, fault, the failing step, journal of the undo after the failure)
FAILURES: list[tuple[str, Callable[[Core], None], str, list[str]]] = [
    ("dnsmasq configure", _fail_dhcp_configure, "dnsmasq",
     ["firewall.apply 80", "shaper.reconcile br-lan", "shaper.reconcile wan0"]),
    ("portal", _fail_portal, "portal",
     ["dhcp.configure changed", "dhcp.stop", "dhcp.start",
      "firewall.apply 80", "shaper.reconcile br-lan", "shaper.reconcile wan0"]),
    ("local services", _fail_local, "local_services",
     ["dhcp.configure changed", "dhcp.stop", "dhcp.start",
      "firewall.apply 80", "shaper.reconcile br-lan", "shaper.reconcile wan0"]),
    ("firewall", _fail_firewall, "firewall",
     ["shaper.reconcile br-lan", "shaper.reconcile wan0"]),
    ("shaping", _fail_shaping, "shaping", []),
]


@pytest.mark.parametrize(("name", "fault", "step", "undo"), FAILURES,
                         ids=[f[0] for f in FAILURES])
async def test_failing_step_undoes_every_step_taken_in_reverse(
    tmp_path: Path, name: str, fault: Callable[[Core], None], step: str, undo: list[str]
) -> None:
    core, journal = journal_core(tmp_path)
    await core.start()
    old, old_dhcp = core.cfg, core.dhcp.text
    new_text = edited(core.config_path.read_text(), portal={"http_port": 8080},
                      local_services={"enabled": True},
                      shaping={"client_down": "3mbit"})
    core.config_path.write_text(new_text)
    seq = core.bus.last_seq
    journal.clear()
    fault(core)
    with pytest.raises(ApplyFailed) as info:
        await core.config.reload(ChangeSource.SIGHUP)
    assert info.value.step == step
    assert f"step {step} failed" in str(info.value)
    assert core.holder.current is old
    done = journal[: len(journal) - len(undo)]
    assert journal[len(done):] == undo, journal
    # the kernel and the children are on the old config again
    assert core.firewall.last_config == old
    assert core.dhcp.text == old_dhcp and core.dhcp.running
    assert core.shaper.classes["br-lan"][0x1].rate == old.shaping.uplink_down
    assert core.servers.portal is old and core.servers.local_enabled is False
    # and the refusal is visible
    assert core.config.last_refusal is not None and core.config.last_refusal["step"] == step
    refused = [s.event for s in core.events(seq)]
    assert len(refused) == 1 and isinstance(refused[0], ConfigRefused)
    assert (refused[0].step, refused[0].source) == (step, ChangeSource.SIGHUP)


async def test_dnsmasq_failing_to_restart_is_back_on_the_old_config_and_running(
    tmp_path: Path,
) -> None:
    core, _ = journal_core(tmp_path)
    await core.start()
    old_dhcp = core.dhcp.text
    core.config_path.write_text(edited(core.config_path.read_text(),
                                       dhcp={"range_end": "10.42.0.200"}))
    _fail_dhcp_start(core)
    with pytest.raises(ApplyFailed) as info:
        await core.config.reload(ChangeSource.SIGHUP)
    assert info.value.step == "dnsmasq"
    assert core.dhcp.text == old_dhcp  # fails today: the new file stays
    assert core.dhcp.running  # fails today: stopped by the failed restart


async def test_failing_start_names_the_step(tmp_path: Path) -> None:
    core, journal = journal_core(tmp_path)
    _fail_dhcp_start(core)
    with pytest.raises(ApplyFailed) as info:
        await core.start()
    assert info.value.step == "dnsmasq"
    assert "sync_portal" not in journal and not core.dhcp.running


class BuggyServers(FakeServers):
    def update_limits(self, cfg: Config) -> None:
        if cfg.portal.terms_id == "x":
            raise KeyError("a bug")
        super().update_limits(cfg)


async def test_a_bug_in_a_step_is_undone_and_raised_as_is(tmp_path: Path) -> None:
    journal: list[str] = []
    core = build_core(tmp_path, shaped(), firewall=JournalFirewall(journal),
                      servers=BuggyServers(journal))
    await core.start()
    old = core.cfg
    journal.clear()
    new = core.config.parse(edited(config_text(old), portal={"terms_id": "x"}))
    with pytest.raises(KeyError):
        await core.reconciler.converge(new, old)
    assert core.holder.current is old
    # done, the failing step undone too (it may have done part of its work), then the firewall
    assert journal == ["firewall.apply 80", "update_limits", "firewall.apply 80"]


# -- the timer loop --------------------------------------------------------------------


async def tick(core: Core, seconds: float) -> None:
    """Move the fake clock and let the loop see it.

    Reconciler.run sleeps on a real-time wait_for; ``_wake`` is the only way to
    make it look at the (fake) clock again (seam requested from the lead).
    """
    core.clock.advance(seconds)
    core.reconciler.wake()
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.fixture
async def loop_core(tmp_path: Path) -> Core:
    return build_core(tmp_path)


async def _run(reconciler: Reconciler) -> asyncio.Task[None]:
    task = asyncio.create_task(reconciler.run())
    for _ in range(5):
        await asyncio.sleep(0)
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_timer_runs_due_jobs(loop_core: Core) -> None:
    runs: list[str] = []

    def job(name: str) -> Callable[[], Any]:
        async def action() -> None:
            runs.append(name)
        return action

    loop_core.reconciler.every("five", 5.0, job("five"))
    loop_core.reconciler.every("now", 60.0, job("now"), first_in=0.0)
    task = await _run(loop_core.reconciler)
    try:
        assert runs == ["now"]
        await tick(loop_core, 4.9)
        assert runs == ["now"]
        await tick(loop_core, 0.2)
        assert runs == ["now", "five"]
        await tick(loop_core, 5.0)
        assert runs == ["now", "five", "five"]
        await tick(loop_core, 55.0)
        assert runs.count("now") == 2
    finally:
        await _stop(task)


async def test_timer_survives_a_job_that_raises(loop_core: Core,
                                                caplog: pytest.LogCaptureFixture) -> None:
    calls = {"flaky": 0, "steady": 0}

    async def flaky() -> None:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise RuntimeError("a bug")

    async def steady() -> None:
        calls["steady"] += 1

    loop_core.reconciler.every("flaky", 1.0, flaky, first_in=0.0)
    loop_core.reconciler.every("steady", 1.0, steady, first_in=0.0)
    task = await _run(loop_core.reconciler)
    try:
        await tick(loop_core, 1.0)
        await tick(loop_core, 1.0)
        assert calls == {"flaky": 3, "steady": 3}
        assert not task.done()
        assert "periodic job flaky failed" in caplog.text
    finally:
        await _stop(task)


async def test_timer_is_cancellable_while_waiting_and_while_a_job_runs(loop_core: Core) -> None:
    task = await _run(loop_core.reconciler)  # no jobs: waiting
    await _stop(task)

    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(3600)

    loop_core.reconciler.every("slow", 1.0, slow, first_in=0.0)
    task = await _run(loop_core.reconciler)
    await asyncio.wait_for(started.wait(), 1.0)
    await _stop(task)


async def test_job_registered_while_running_is_picked_up(loop_core: Core) -> None:
    task = await _run(loop_core.reconciler)
    runs: list[int] = []

    async def late() -> None:
        runs.append(1)

    try:
        loop_core.reconciler.every("late", 2.0, late, first_in=0.0)
        for _ in range(10):
            await asyncio.sleep(0)
        assert runs == [1]
    finally:
        await _stop(task)


async def test_sweep_on_the_timer_ends_an_expired_session(tmp_path: Path) -> None:
    core = build_core(tmp_path)
    await core.start()
    mac, ip = "02:00:00:00:00:0a", "10.42.0.101"
    await core.sessions.authorize(mac, ip, "manual", duration=30)
    core.reconciler.every("sweep", SWEEP_INTERVAL, core.sessions.sweep)
    task = await _run(core.reconciler)
    try:
        await tick(core, SWEEP_INTERVAL)
        assert (mac, ip) in core.firewall.authorized
        await tick(core, 30)
        assert core.firewall.authorized == {}
        assert core.store.end_reason(mac) == "expired"
    finally:
        await _stop(task)


async def test_a_session_expiring_at_a_reload_still_gets_its_event(tmp_path: Path) -> None:
    core = build_core(tmp_path)
    await core.start()
    mac, ip = "02:00:00:00:00:0a", "10.42.0.101"
    await core.sessions.authorize(mac, ip, "manual", duration=30)
    core.clock.advance(31)
    core.config_path.write_text(edited(core.config_path.read_text(),
                                       portal={"terms_id": "Aturan baru."}))
    await core.config.reload(ChangeSource.SIGHUP)
    await core.sessions.sweep()
    assert core.store.end_reason(mac) == "expired" and core.firewall.authorized == {}
    ended = [s.event for s in core.events() if isinstance(s.event, SessionEnded)]
    assert ended == [SessionEnded(mac, ip, EndReason.EXPIRED)]
