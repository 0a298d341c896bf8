"""Tracked connections and deadlines: a login ends the client's redirected connections, a
cut-off ends all of them, and the sweep is asked for at the next expiry or idle deadline.

Against the fakes: ``FakeFirewall.conntrack_log`` records each end_connections call.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.core.events import EndReason, SessionEnded
from gateway.core.reconcile import SWEEP_INTERVAL, SWEEP_JOB
from gateway.core.sweep import DEADLINE_SLACK, LISTING_SHARE, MIN_SWEEP_GAP, next_deadline
from gateway.errors import FirewallError
from gateway.firewall.fake import FakeFirewall
from gateway.model import ClientView, Session
from tests.unit.corekit import NOW, Core, build_core, session

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
IP1, IP2 = "10.42.0.101", "10.42.0.102"


class OrderedFirewall(FakeFirewall):
    """Also notes, at each end_connections, whether the client was in the sets then."""

    def __init__(self) -> None:
        super().__init__()
        self.in_sets_when_ended: list[bool] = []

    async def end_connections(self, ip: str, redirected_only: bool) -> None:
        self.in_sets_when_ended.append(any(k[1] == ip for k in self.authorized))
        await super().end_connections(ip, redirected_only)


@pytest.fixture
def core(tmp_path: Path) -> Core:
    c = build_core(tmp_path, firewall=OrderedFirewall())
    c.neighbours.add(IP1, A)
    c.neighbours.add(IP2, B)
    return c


def fw(core: Core) -> OrderedFirewall:
    assert isinstance(core.firewall, OrderedFirewall)
    return core.firewall


# -- which connections end, and when -------------------------------------------------


async def test_login_ends_only_the_redirected_connections_after_opening_the_sets(
        core: Core) -> None:
    await core.sessions.login_terms(ClientView(IP1, A, None))
    assert core.firewall.conntrack_log == [(IP1, True)]
    assert fw(core).in_sets_when_ended == [True]  # a connection tracked anew is not redirected


@pytest.mark.parametrize("how", ["logout", "deauth", "end"])
async def test_a_cut_off_ends_every_connection_after_closing_the_sets(
        core: Core, how: str) -> None:
    await core.sessions.authorize(A, IP1, "terms")
    await core.sessions.authorize(B, IP2, "terms")
    core.firewall.conntrack_log.clear()
    fw(core).in_sets_when_ended.clear()
    if how == "logout":
        await core.sessions.logout(ClientView(IP1, A, None))
    elif how == "deauth":
        await core.ops.deauthorize(A)
    else:
        await core.sessions.end(A, EndReason.VOUCHER_REVOKED)
    assert core.firewall.conntrack_log == [(IP1, False)]  # B's connections are untouched
    assert fw(core).in_sets_when_ended == [False]


async def test_expiry_and_idle_end_the_connections(core: Core) -> None:
    await core.sessions.authorize(A, IP1, "manual", duration=600)
    await core.sessions.authorize(B, IP2, "manual", duration=7200)
    core.firewall.conntrack_log.clear()
    core.clock.advance(1801)  # A expired; B past its idle timeout
    del core.firewall.active[(B, IP2)]
    await core.sessions.sweep()
    assert sorted(core.firewall.conntrack_log) == [(IP1, False), (IP2, False)]
    assert core.store.end_reason(A) == EndReason.EXPIRED
    assert core.store.end_reason(B) == EndReason.IDLE


async def test_the_address_of_another_phones_session_keeps_its_connections(core: Core) -> None:
    # Phone A's lease moved to phone B, who logged in; A's old session ends later.
    await core.store.start_session(session(A, IP1))
    await core.sessions.authorize(B, IP1, "terms")
    core.firewall.conntrack_log.clear()
    await core.sessions.end(A, EndReason.DEAUTH)
    assert core.firewall.conntrack_log == []  # they are B's connections now
    await core.sessions.end(B, EndReason.DEAUTH)
    assert core.firewall.conntrack_log == [(IP1, False)]


async def test_a_stale_kernel_entry_ends_its_connections_unless_the_address_is_live(
        core: Core) -> None:
    await core.sessions.authorize(B, IP1, "terms")
    core.firewall.authorized[(A, IP1)] = 100  # A's old entry at B's live address
    core.firewall.authorized[(A, IP2)] = 100  # nobody's address now
    core.firewall.conntrack_log.clear()
    await core.sessions.sweep()
    assert core.firewall.conntrack_log == [(IP2, False)]


async def test_a_refused_conntrack_call_does_not_fail_the_login_or_the_cut_off(
        core: Core, caplog: pytest.LogCaptureFixture) -> None:
    core.firewall.fail_on["end_connections"] = FirewallError("ctnetlink: EPERM")
    s = await core.sessions.authorize(A, IP1, "terms")
    assert (A, IP1) in core.firewall.authorized and s.mac == A
    assert await core.store.active_session(A, core.clock.now()) is not None
    core.firewall.fail_on["end_connections"] = FirewallError("ctnetlink: EPERM")
    await core.sessions.end(A, EndReason.DEAUTH)
    assert core.firewall.authorized == {}
    assert core.store.end_reason(A) == EndReason.DEAUTH
    assert caplog.text.count("could not end the tracked connections of 10.42.0.101") == 2


async def test_a_login_the_kernel_refuses_ends_whatever_it_opened(core: Core) -> None:
    core.firewall.fail_on["authorize"] = FirewallError("nft refused")
    with pytest.raises(FirewallError):
        await core.sessions.authorize(A, IP1, "terms")
    assert core.firewall.conntrack_log == [(IP1, False)]  # no "redirected only" half-step


# -- deadlines -------------------------------------------------------------------------


def _s(mac: str, ip: str, started: int, expires: int, idle: int) -> Session:
    return Session(mac, ip, started, expires, idle, "terms", None, None)


@pytest.mark.parametrize(("sessions", "active", "want"), [
    ([], {}, None),
    # the session ends before its idle window can
    ([_s(A, IP1, NOW - 100, NOW + 5, 600)], {(A, IP1): 500}, NOW + 5),
    # idle window listed with 7 whole seconds left: over within the 8th
    ([_s(A, IP1, NOW - 100, NOW + 3600, 60)], {(A, IP1): 7}, NOW + 8),
    # logged in since the listing: not idle before its idle timeout from the start
    ([_s(A, IP1, NOW - 2, NOW + 3600, 60)], {}, NOW + 58),
    # the earliest of several
    ([_s(A, IP1, NOW - 100, NOW + 3600, 60), _s(B, IP2, NOW - 100, NOW + 30, 60)],
     {(A, IP1): 50, (B, IP2): 50}, NOW + 30),
])
def test_next_deadline(sessions: list[Session], active: dict[tuple[str, str], int],
                       want: float | None) -> None:
    assert next_deadline(sessions, active, float(NOW)) == want


async def test_login_and_sweep_ask_for_the_sweep_at_the_next_deadline(core: Core) -> None:
    asked: list[float] = []
    core.sessions.set_wakeup(asked.append)
    s = await core.sessions.authorize(A, IP1, "manual", duration=30)
    assert asked == [s.expires + DEADLINE_SLACK]  # before its idle timeout (1800 s)
    s = await core.sessions.authorize(B, IP2, "manual", duration=7200)
    assert asked[-1] == s.started + s.idle_timeout + DEADLINE_SLACK  # idle without traffic
    await core.sessions.end(A, EndReason.DEAUTH)
    core.clock.advance(s.idle_timeout + 10)
    core.firewall.active[(B, IP2)] = 3  # traffic meanwhile: its window ends in 3-4 s
    await core.sessions.sweep()
    assert asked[-1] == NOW + s.idle_timeout + 10 + 3 + 1 + DEADLINE_SLACK


async def test_deadlines_never_ask_for_sweeps_closer_than_the_minimum_gap(core: Core) -> None:
    asked: list[float] = []
    core.sessions.set_wakeup(asked.append)
    await core.sessions.authorize(A, IP1, "terms")
    core.firewall.active[(A, IP1)] = 0  # listed in its last second
    await core.sessions.sweep()
    assert asked[-1] >= NOW + MIN_SWEEP_GAP


async def test_a_slow_listing_of_the_kernel_sets_spaces_the_deadline_sweeps(
        core: Core) -> None:
    asked: list[float] = []
    core.sessions.set_wakeup(asked.append)
    await core.sessions.authorize(A, IP1, "terms")
    real = core.firewall.active_clients

    async def slow() -> dict[tuple[str, str], int]:
        core.clock.advance(0.2)  # the monotonic clock: a listing of a very large village
        return await real()

    core.firewall.active_clients = slow  # type: ignore[method-assign]
    core.clock.advance(1801)
    core.firewall.active[(A, IP1)] = 0  # traffic in its last second: due in a second
    await core.sessions.sweep()
    assert asked[-1] == NOW + 1801 + LISTING_SHARE * 0.2  # not NOW + 1801 + 1


# -- the reconciler's timer --------------------------------------------------------------


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def tick(core: Core, seconds: float) -> None:
    core.clock.advance(seconds)
    core.reconciler.wake()
    await _settle()


async def test_run_at_brings_a_job_forward_and_never_delays_it(tmp_path: Path) -> None:
    core = build_core(tmp_path)
    runs: list[int] = []

    async def job() -> None:
        runs.append(core.clock.now())

    core.reconciler.every("j", 60.0, job)
    core.reconciler.run_at("j", core.clock.time() + 3)
    core.reconciler.run_at("j", core.clock.time() + 30)  # later than its due: ignored
    core.reconciler.run_at("unknown", core.clock.time())  # no such job: ignored
    task = asyncio.create_task(core.reconciler.run())
    try:
        await _settle()
        await tick(core, 2)
        assert runs == []
        await tick(core, 1)
        assert runs == [NOW + 3]
        await tick(core, 59)
        assert runs == [NOW + 3]  # back on its interval: 60 s after that run
        await tick(core, 1)
        assert runs == [NOW + 3, NOW + 63]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_job_asked_for_while_running_runs_again_right_after(tmp_path: Path) -> None:
    core = build_core(tmp_path)
    release = asyncio.Event()
    runs = 0

    async def job() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            await release.wait()

    core.reconciler.every("j", 60.0, job, first_in=0.0)
    task = asyncio.create_task(core.reconciler.run())
    try:
        await _settle()
        assert runs == 1
        core.reconciler.run_at("j", core.clock.time())  # due while the first run goes on
        await tick(core, 0)
        assert runs == 1
        release.set()
        await _settle()
        await tick(core, 1)
        assert runs == 2  # not skipped until its next 60 s turn
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_expiry_is_acted_on_at_its_deadline_not_at_the_next_regular_sweep(
        tmp_path: Path) -> None:
    core = build_core(tmp_path)
    await core.start()
    core.reconciler.every(SWEEP_JOB, SWEEP_INTERVAL, core.sessions.sweep)
    task = asyncio.create_task(core.reconciler.run())
    try:
        await _settle()
        # Regular sweeps at +5, +10, ... +30, +35: the deadline at +31 comes between.
        await core.sessions.authorize(A, IP1, "manual", duration=31)
        for _ in range(31):
            await tick(core, 1)
        assert (A, IP1) in core.firewall.authorized
        await tick(core, 1)
        assert core.firewall.authorized == {}
        assert core.store.end_reason(A) == EndReason.EXPIRED
        ended = [e.event for e in core.events() if isinstance(e.event, SessionEnded)]
        assert ended == [SessionEnded(A, IP1, EndReason.EXPIRED)]
        assert core.firewall.conntrack_log[-1] == (IP1, False)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
