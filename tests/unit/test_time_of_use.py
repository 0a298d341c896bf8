"""Time of use (Step 11): counted from the kernel's activity set on the monotonic clock,
idle time excluded, kept in the store across restarts; when it runs out the sessions
end ("time_used") and the code is refused with its own reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config.schema import Config
from gateway.core.events import ChangeSource, EndReason, SessionEnded
from gateway.core.usage import TimeOfUse, credits, quiet_for
from gateway.errors import StoreError, VoucherError
from gateway.model import ClientView, Voucher
from gateway.store.fake import MemoryStore
from tests.unit.conftest import make_config
from tests.unit.corekit import NOW, Core, build_core, config_text, session

A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
IP = {A: "10.42.0.101", B: "10.42.0.102", C: "10.42.0.103"}
IDLE = 60


# -- arithmetic ------------------------------------------------------------------------


def test_quiet_is_the_element_timeout_minus_what_is_left() -> None:
    s = session(A, IP[A], idle=IDLE)
    assert quiet_for(s, IDLE - 1) == 0.0  # just refreshed (the kernel truncates)
    assert quiet_for(s, IDLE) == 0.0
    assert quiet_for(s, IDLE - 11) == 10.0
    # a login within an idle timeout of the end: its element's timeout was the time left
    late = session(A, IP[A], started=NOW, expires=NOW + 20, idle=IDLE)
    assert quiet_for(late, 19) == 0.0 and quiet_for(late, 9) == 10.0


def test_credits_per_voucher() -> None:
    busy = session(A, IP[A], idle=IDLE, voucher="V1")
    quiet3 = session(B, IP[B], idle=IDLE, voucher="V2")
    idle = session(C, IP[C], idle=IDLE, voucher="V3")
    terms = session("02:00:00:00:00:0d", "10.42.0.104", idle=IDLE)
    active = {(A, IP[A]): IDLE - 1, (B, IP[B]): IDLE - 4, (terms.mac, terms.ip): IDLE}
    got = credits([busy, quiet3, idle, terms], active, 5.0, NOW, known=[])
    assert got == {"V1": 5.0, "V2": 2.0, "V3": 0.0}  # no entry for a terms session
    # quiet for longer than the span: nothing
    assert credits([quiet3], {(B, IP[B]): IDLE - 30}, 5.0, NOW) == {"V2": 0.0}


def test_two_devices_on_one_voucher_count_once() -> None:
    a = session(A, IP[A], idle=IDLE, voucher="V")
    b = session(B, IP[B], idle=IDLE, voucher="V")
    got = credits([a, b], {(A, IP[A]): IDLE - 1, (B, IP[B]): IDLE - 3}, 5.0, NOW)
    assert got == {"V": 5.0}  # the longest, not 5 + 3


def test_a_session_new_since_the_last_tick_gets_no_more_than_its_age() -> None:
    new = session(A, IP[A], started=NOW - 2, idle=IDLE, voucher="V")
    active = {(A, IP[A]): IDLE - 1}
    assert credits([new], active, 5.0, NOW, known=[]) == {"V": 3.0}  # 2 s old (+1 rounding)
    known = [(A, IP[A], NOW - 2)]
    assert credits([new], active, 5.0, NOW, known=known) == {"V": 5.0}
    # a wall clock stepped back makes its age look negative: the span is trusted
    stepped = session(A, IP[A], started=NOW + 3600, idle=IDLE, voucher="V")
    assert credits([stepped], active, 5.0, NOW, known=[]) == {"V": 5.0}


async def _store_with(*codes: str, used: int = 0) -> MemoryStore:
    store = MemoryStore()
    await store.add_vouchers([Voucher(c, 86400, "jam", NOW, "b") for c in codes])
    if used:
        await store.add_used_seconds({c: used for c in codes})
    return store


def _jam(minutes: int = 60) -> Config:
    return make_config(shaping={"enabled": True, "plans": {"jam": {
        "down": "2mbit", "up": "1mbit", "time_of_use": f"{minutes}m"}}})


async def test_ticks_add_whole_seconds_and_carry_fractions() -> None:
    store = await _store_with("V")
    cfg = _jam()
    use = TimeOfUse(lambda: cfg, store)
    s = session(A, IP[A], started=NOW - 100, idle=IDLE, voucher="V")
    busy = {(A, IP[A]): IDLE - 1}
    assert await use.tick([s], busy, 100.0, NOW) == []  # the first tick sets the base
    for mono in (102.5, 105.0, 107.5):
        await use.tick([s], busy, mono, NOW)
    v = await store.voucher("V")
    assert v is not None and v.used_seconds == 7  # 7.5 s: 7 written, 0.5 carried
    assert use.deadline == NOW + 3600 - 7  # busy: its hour would run out then


async def test_idle_gaps_and_clock_steps_are_not_use() -> None:
    store = await _store_with("V")
    cfg = _jam()
    use = TimeOfUse(lambda: cfg, store)
    s = session(A, IP[A], started=NOW - 100, idle=IDLE, voucher="V")
    await use.tick([s], {(A, IP[A]): IDLE}, 0.0, NOW)
    await use.tick([s], {(A, IP[A]): IDLE}, 30.0, NOW + 30)  # 30 s busy
    # quiet since second 32, then idle (out of the set) for a long gap
    await use.tick([s], {(A, IP[A]): IDLE - 4}, 35.0, NOW + 35)
    await use.tick([s], {}, 600.0, NOW + 600)
    # the wall clock steps a day ahead (NTP's first sync) and back: nothing is counted
    await use.tick([s], {(A, IP[A]): IDLE}, 605.0, NOW + 86400)
    await use.tick([s], {(A, IP[A]): IDLE}, 610.0, NOW - 86400)
    v = await store.voucher("V")
    assert v is not None and v.used_seconds == 30 + 2 + 5 + 5


async def test_a_restart_keeps_what_was_counted_and_not_the_downtime() -> None:
    store = await _store_with("V", used=100)
    cfg = _jam()
    s = session(A, IP[A], started=NOW - 100, idle=IDLE, voucher="V")
    busy = {(A, IP[A]): IDLE}
    first = TimeOfUse(lambda: cfg, store)
    await first.tick([s], busy, 0.0, NOW)
    await first.tick([s], busy, 5.0, NOW + 5)
    # kill -9: a new daemon (new monotonic origin), the same store
    second = TimeOfUse(lambda: cfg, store)
    await second.tick([s], busy, 7.0, NOW + 60)  # base only: the downtime is not use
    await second.tick([s], busy, 12.0, NOW + 65)
    v = await store.voucher("V")
    assert v is not None and v.used_seconds == 100 + 5 + 5


async def test_a_store_failure_is_counted_at_the_next_tick() -> None:
    store = await _store_with("V")
    cfg = _jam()
    use = TimeOfUse(lambda: cfg, store)
    s = session(A, IP[A], started=NOW - 100, idle=IDLE, voucher="V")
    busy = {(A, IP[A]): IDLE}
    await use.tick([s], busy, 0.0, NOW)
    store.fail_on["add_used_seconds"] = StoreError("disk full")
    with pytest.raises(StoreError):
        await use.tick([s], busy, 5.0, NOW + 5)
    await use.tick([s], busy, 10.0, NOW + 10)
    v = await store.voucher("V")
    assert v is not None and v.used_seconds == 10


async def test_used_up_sessions_are_returned() -> None:
    store = await _store_with("V", used=3590)
    cfg = _jam(60)
    use = TimeOfUse(lambda: cfg, store)
    s = session(A, IP[A], started=NOW - 100, idle=IDLE, voucher="V")
    other = session(B, IP[B], started=NOW - 100, idle=IDLE, voucher="V")
    busy = {(A, IP[A]): IDLE}
    await use.tick([s, other], busy, 0.0, NOW)
    assert await use.tick([s, other], busy, 9.0, NOW + 9) == []
    assert await use.tick([s, other], busy, 10.0, NOW + 10) == [s, other]


# -- in the core ---------------------------------------------------------------------


def _plans(**jam: Any) -> dict[str, Any]:
    return {"enabled": True, "plans": {"jam": {"down": "2mbit", "up": "1mbit", **jam}}}


@pytest.fixture
def core(tmp_path: Path) -> Core:
    c = build_core(tmp_path, make_config(portal={"idle_timeout": f"{IDLE}s"},
                                         shaping=_plans(time_of_use="2m", validity="1d")))
    for mac, ip in IP.items():
        c.neighbours.add(ip, mac)
    return c


async def _login(core: Core, mac: str, code: str) -> None:
    await core.sessions.login_voucher(ClientView(IP[mac], mac, None), code)


async def _use(core: Core, seconds: int, *busy: str) -> None:
    """``seconds`` of time pass in 5 s sweeps, the ``busy`` devices sending all along; the
    others' idle windows run down as the kernel's do (the fake's do not by themselves)."""
    for _ in range(seconds // 5):
        core.clock.advance(5)
        for key, left in list(core.firewall.active.items()):
            if key[0] in busy:
                core.firewall.active[key] = IDLE
            elif left > 5:
                core.firewall.active[key] = left - 5
            else:
                del core.firewall.active[key]
        await core.sessions.sweep()


async def test_time_of_use_runs_out_and_the_code_is_then_refused(core: Core) -> None:
    await core.start()
    _, made = await core.vouchers.create_batch(1, 86400, plan="jam")
    code = made[0].code
    await _login(core, A, code)
    await core.sessions.sweep()
    await _use(core, 60, A)
    v = await core.store.voucher(code)
    assert v is not None and 55 <= v.used_seconds <= 60
    since = core.bus.last_seq
    await _use(core, 70, A)
    assert core.store.end_reason(A) == EndReason.TIME_USED
    assert (A, IP[A]) not in core.firewall.authorized
    assert [e.event for e in core.events(since) if e.event.type == "session_ended"] == [
        SessionEnded(A, IP[A], EndReason.TIME_USED)]
    with pytest.raises(VoucherError) as info:
        await _login(core, B, code)
    assert info.value.reason == "time_used"


async def test_an_idle_gap_is_not_counted(core: Core) -> None:
    await core.start()
    _, made = await core.vouchers.create_batch(1, 86400, plan="jam")
    code = made[0].code
    await _login(core, A, code)
    await core.sessions.sweep()
    await _use(core, 30, A)
    await _use(core, 300)  # nobody sends: the idle window runs down, the sweep ends it
    assert core.store.end_reason(A) == EndReason.IDLE
    await _login(core, A, code)
    await _use(core, 30, A)
    v = await core.store.voucher(code)
    assert v is not None and 55 <= v.used_seconds <= 66, v.used_seconds


async def test_a_plan_change_applies_to_live_vouchers_at_once(core: Core) -> None:
    await core.start()
    _, made = await core.vouchers.create_batch(1, 86400, plan="jam")
    code = made[0].code
    await _login(core, A, code)
    with pytest.raises(VoucherError) as info:
        await _login(core, B, code)
    assert (info.value.reason, info.value.devices) == ("in_use", 1)
    # shared by two now; valid 10 minutes from first use; the running session follows
    text = config_text(make_config(portal={"idle_timeout": f"{IDLE}s"}, shaping=_plans(
        time_of_use="2m", validity="10m", shared_devices=2)))
    await core.config.apply(text, None, "budi", ChangeSource.CLI)
    v = await core.store.voucher(code)
    assert v is not None and (v.duration, v.max_devices) == (600, 2)
    live = await core.store.active_session(A, NOW)
    assert live is not None and live.expires == NOW + 600
    assert core.firewall.authorized[(A, IP[A])] == 600
    await _login(core, B, code)
    with pytest.raises(VoucherError) as info:
        await _login(core, C, code)
    assert (info.value.reason, info.value.devices) == ("in_use", 2)
    # time of use lowered below what was used: the sessions end at the next sweep
    await _use(core, 30, A, B)
    text = config_text(make_config(portal={"idle_timeout": f"{IDLE}s"}, shaping=_plans(
        time_of_use="20s", validity="10m", shared_devices=2)))
    await core.config.apply(text, None, "budi", ChangeSource.CLI)
    await core.sessions.sweep()
    assert core.store.end_reason(A) == core.store.end_reason(B) == EndReason.TIME_USED


async def test_old_vouchers_keep_their_devices_and_new_ones_take_the_plans(core: Core) -> None:
    await core.start()
    # made before the plan said anything about devices: 3 of them
    _, old = await core.vouchers.create_batch(1, 86400, 3, plan="jam")
    text = config_text(make_config(portal={"idle_timeout": f"{IDLE}s"}, shaping=_plans(
        time_of_use="2m", validity="1d", price=5000)))
    await core.config.apply(text, None, "budi", ChangeSource.CLI)
    v = await core.store.voucher(old[0].code)
    assert v is not None and v.max_devices == 3  # shared_devices at its default 1: kept
    _, new = await core.vouchers.create_batch(1, 86400, plan="jam")
    assert (new[0].max_devices, new[0].price, new[0].duration) == (1, 5000, 86400)
    # a validity the plan does not have is refused, not silently changed
    with pytest.raises(Exception, match="duration"):
        await core.vouchers.create_batch(1, 3600, plan="jam")


async def test_an_apply_that_fails_later_puts_the_vouchers_back(core: Core) -> None:
    from gateway.errors import ApplyFailed, ServiceError

    await core.start()
    _, made = await core.vouchers.create_batch(1, 86400, plan="jam")
    code = made[0].code
    await _login(core, A, code)
    # a shorter validity and two devices, in a config whose portal cannot start
    core.servers.fail_on["sync_portal"] = ServiceError("port 8080 taken")
    text = config_text(make_config(portal={"idle_timeout": f"{IDLE}s", "http_port": 8080},
                                   shaping=_plans(time_of_use="2m", validity="10m",
                                                  shared_devices=2)))
    with pytest.raises(ApplyFailed) as info:
        await core.config.apply(text, None, "budi", ChangeSource.CLI)
    assert info.value.step == "portal"
    v = await core.store.voucher(code)
    assert v is not None and (v.duration, v.max_devices) == (86400, 1)
    live = await core.store.active_session(A, NOW)
    assert live is not None and live.expires == NOW + 86400
    assert core.firewall.authorized[(A, IP[A])] == 86400
