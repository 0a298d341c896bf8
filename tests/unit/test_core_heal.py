"""Healing against the fakes: a crash between the store and the kernel, lost kernel
entries, a flushed table, deleted HTB roots, a vanished interface.

The integration twin is tests/integration/test_crash_heal.py (the real kernel).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from gateway.core.entry_check import ENTRY_CHECK_INTERVAL
from gateway.core.reconcile import KERNEL_JOB
from gateway.core.session_rules import missing_kernel_entries
from gateway.errors import FirewallError
from gateway.firewall.adapter import unwritten_get_a_window
from gateway.firewall.fake import FakeFirewall
from gateway.firewall.planner import CarriedState
from gateway.shaping.fake import FakeShaper
from gateway.store.fake import MemoryStore
from tests.unit.conftest import make_config
from tests.unit.corekit import NOW, Core, build_core, session

A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
IP1, IP2, IP3 = "10.42.0.101", "10.42.0.102", "10.42.0.103"
LAN, WAN = "br-lan", "wan0"


def shaped() -> Config:
    return make_config(shaping={"enabled": True})


@pytest.fixture
def core(tmp_path: Path) -> Core:
    c = build_core(tmp_path, shaped())
    for ip, mac in ((IP1, A), (IP2, B), (IP3, C)):
        c.neighbours.add(ip, mac)
    return c


def restarted(core: Core, tmp_path: Path) -> Core:
    """A new daemon after kill -9: same database, same kernel (the table survives)."""
    again = build_core(tmp_path / "again", shaped(), clock=core.clock, store=core.store,
                       firewall=core.firewall, shaper=core.shaper)
    for ip, mac in ((IP1, A), (IP2, B), (IP3, C)):
        again.neighbours.add(ip, mac)
    return again


def whole(core: Core, mac: str, ip: str) -> bool:
    return (mac, ip) in core.firewall.authorized and (mac, ip) in core.firewall.active


# -- a crash between the store's commit and the kernel write ----------------------------


async def test_restart_after_a_crash_mid_login_puts_the_session_fully_in_the_kernel(
    core: Core, tmp_path: Path
) -> None:
    await core.start()
    await core.sessions.authorize(A, IP1, "terms")  # whole: the positive control
    await core.sessions.authorize(B, IP2, "terms")
    core.clock.advance(1900)
    del core.firewall.active[(B, IP2)]  # B went idle in the kernel
    # The crash: C's login committed, the kernel never heard of it.
    await core.store.start_session(session(C, IP3, started=core.clock.now(),
                                           expires=core.clock.now() + 3600))
    again = restarted(core, tmp_path)
    await again.start()
    assert whole(again, A, IP1)
    assert whole(again, C, IP3), "a login the kernel never saw must not start out idle"
    assert (B, IP2) in again.firewall.authorized and (B, IP2) not in again.firewall.active
    await again.sessions.sweep()  # B was idle before the crash and ends as idle now
    assert again.store.end_reason(B) == "idle"
    assert whole(again, C, IP3) and again.store.end_reason(C) is None


async def test_restart_after_a_crash_mid_logout_drops_the_kernel_entry(
    core: Core, tmp_path: Path
) -> None:
    await core.start()
    await core.sessions.authorize(A, IP1, "terms")
    await core.sessions.authorize(B, IP2, "terms")
    await core.store.end_session(A, core.clock.now(), "logout")  # ... and then kill -9
    again = restarted(core, tmp_path)
    await again.start()
    assert set(again.firewall.authorized) == {(B, IP2)}
    assert whole(again, B, IP2)


@pytest.mark.parametrize(("in_auth", "in_active", "fresh"), [
    (False, False, True),   # never reached the kernel: one fresh idle window
    (True, True, False),    # carried as it was
    (True, False, False),   # idle in the kernel: stays idle
])
def test_unwritten_sessions_get_a_window_and_nothing_else_does(
    in_auth: bool, in_active: bool, fresh: bool
) -> None:
    s = session(A, IP1, idle=1800)
    carried = CarriedState(active={(A, IP1): 42} if in_active else {}, from_live_table=True)
    authorized = {(A, IP1): 3000} if in_auth else {}
    out = unwritten_get_a_window(carried, authorized, [s], NOW)
    want: dict[Any, int] = {(A, IP1): 1800} if fresh else dict(carried.active)
    assert dict(out.active) == want
    assert out.from_live_table


def test_an_expired_unwritten_session_gets_no_window() -> None:
    s = session(A, IP1, expires=NOW - 1)
    out = unwritten_get_a_window(CarriedState(from_live_table=True), {}, [s], NOW)
    assert dict(out.active) == {}


# -- lost entries: the sweep and a portal visit put them back ----------------------------


@pytest.mark.parametrize(("started", "in_auth", "in_active", "missing"), [
    (NOW - 100, False, False, True),    # lost from both sets
    (NOW - 100, True, False, True),     # young and out of active4: cannot be idle yet
    (NOW - 2000, True, False, False),   # idle: the sweep ends it, nothing to restore
    (NOW - 2000, False, False, True),   # lost, not idle: it was never out of auth4 by itself
    (NOW - 100, True, True, False),     # whole
    (NOW - 1, False, False, False),     # started as the sets were listed: may be on its way
])
def test_missing_kernel_entries(started: int, in_auth: bool, in_active: bool,
                                missing: bool) -> None:
    s = session(A, IP1, started=started, idle=1800)
    auth = {(A, IP1)} if in_auth else set()
    active = {(A, IP1): 10} if in_active else {}
    assert missing_kernel_entries([s], auth, active, NOW, float(NOW)) == ([s] if missing else [])


async def test_sweep_restores_a_lost_entry_instead_of_ending_it(core: Core) -> None:
    await core.start()
    await core.sessions.authorize(A, IP1, "terms")
    await core.sessions.authorize(B, IP2, "terms")
    core.clock.advance(2000)  # both past their first idle window
    core.firewall.active[(B, IP2)] = 100  # B still busy
    del core.firewall.authorized[(A, IP1)]  # A lost by the kernel (not idle: lost)
    del core.firewall.active[(A, IP1)]
    await core.sessions.sweep()
    assert core.store.end_reason(A) is None
    assert whole(core, A, IP1)
    assert whole(core, B, IP2)


async def test_a_portal_visit_restores_a_lost_entry_at_most_every_interval(core: Core) -> None:
    await core.start()
    s = await core.sessions.authorize(A, IP1, "terms")
    core.clock.advance(5)
    view = await core.sessions.identify(IP1)
    assert view.session == s and whole(core, A, IP1)  # whole: nothing done
    logged = len(core.firewall.authorize_log)
    core.firewall.active.pop((A, IP1))  # shut out, as after the crash of an older version
    core.firewall.authorized.pop((A, IP1))
    await core.sessions.identify(IP1)
    assert not whole(core, A, IP1), "checked again within the interval"
    core.clock.advance(ENTRY_CHECK_INTERVAL)
    view = await core.sessions.identify(IP1)
    assert view.session == s
    assert whole(core, A, IP1)
    assert len(core.firewall.authorize_log) == logged + 1
    assert core.firewall.classes[IP1] == core.shaping.class_text(s)


async def test_a_portal_visit_leaves_an_idle_session_to_the_sweep(core: Core) -> None:
    await core.start()
    await core.sessions.authorize(A, IP1, "terms")
    core.clock.advance(2000)
    del core.firewall.active[(A, IP1)]
    before = await core.snapshot()
    await core.sessions.identify(IP1)
    assert await core.snapshot() == before


async def test_a_portal_visit_survives_a_kernel_that_refuses(core: Core,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    await core.start()
    s = await core.sessions.authorize(A, IP1, "terms")
    core.firewall.fail_on["client_entry"] = FirewallError("nft is gone")
    view = await core.sessions.identify(IP1)
    assert view.session == s
    assert "nft is gone" in caplog.text


# -- a flushed table, deleted roots, an interface gone and back ---------------------------


async def test_nothing_broken_nothing_done(core: Core) -> None:
    await core.start()
    await core.sessions.authorize(A, IP1, "terms")
    before = await core.snapshot()
    applied = core.firewall.applied
    assert await core.reconciler.check_kernel() == []
    assert await core.snapshot() == before and core.firewall.applied == applied


async def test_a_flushed_table_is_rebuilt_with_every_session(core: Core) -> None:
    await core.start()
    await core.sessions.authorize(A, IP1, "terms")
    await core.sessions.authorize(B, IP2, "terms")
    core.firewall.flush_by_hand()
    with pytest.raises(FirewallError):  # what logins and the sweep met before the repair
        await core.sessions.sweep()
    assert await core.reconciler.check_kernel() == ["firewall"]
    assert whole(core, A, IP1) and whole(core, B, IP2)
    assert core.firewall.last_config == core.cfg
    await core.sessions.authorize(C, IP3, "terms")  # logins work again
    assert whole(core, C, IP3)


async def test_deleted_roots_are_rebuilt_and_logins_work_again(core: Core) -> None:
    await core.start()
    s = await core.sessions.authorize(A, IP1, "terms")
    lan_before = dict(core.shaper.classes[LAN])
    core.shaper.lose_root(LAN)
    core.shaper.lose_root(WAN)
    assert await core.reconciler.check_kernel() == ["shaping"]
    assert core.shaper.classes[LAN] == lan_before
    assert WAN in core.shaper.classes
    assert whole(core, A, IP1) and core.store.end_reason(A) is None
    assert s.mac == A
    await core.sessions.authorize(B, IP2, "terms")
    assert whole(core, B, IP2)


async def test_a_refused_login_asks_for_a_check_at_once(core: Core) -> None:
    await core.start()

    async def noop() -> None:
        pass

    core.reconciler.every(KERNEL_JOB, 60.0, noop)
    core.shaper.lose_root(LAN)
    with pytest.raises(Exception, match="no root qdisc"):
        await core.sessions.authorize(A, IP1, "terms")
    job = next(j for j in core.reconciler.jobs if j.name == KERNEL_JOB)
    assert job.due == core.clock.monotonic()


async def test_an_interface_gone_is_reported_once_and_rebuilt_when_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shaper = FakeShaper(devices=[LAN, WAN])
    core = build_core(tmp_path, shaped(), shaper=shaper, store=MemoryStore(),
                      firewall=FakeFirewall())
    core.neighbours.add(IP1, A)
    await core.start()
    await core.sessions.authorize(A, IP1, "terms")
    assert shaper.devices is not None
    shaper.devices.discard(WAN)  # the modem's interface went away
    shaper.lose_root(WAN)
    caplog.set_level(logging.DEBUG, logger="desanet.reconcile")
    assert await core.reconciler.check_kernel() == []
    assert await core.reconciler.check_kernel() == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and WAN in errors[0].getMessage()
    shaper.devices.add(WAN)  # ... and came back, bare
    assert await core.reconciler.check_kernel() == ["shaping"]
    assert await shaper.intact(WAN)
    assert await core.reconciler.check_kernel() == []
    assert whole(core, A, IP1)
