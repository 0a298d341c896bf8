"""SessionService against the fakes: logins, refusals, ends, plan changes, sweeps, events.

A refused request changes nothing: the store, the fake kernel (firewall sets,
HTB classes) and the event bus are compared before and after.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from gateway.core.events import EndReason, PlanChanged, SessionEnded, SessionStarted
from gateway.errors import (
    DesanetError,
    FirewallError,
    Invalid,
    NotFound,
    PortalDenied,
    ShapingError,
    VoucherError,
)
from gateway.model import ClientView
from gateway.shaping.plan import client_minor
from tests.unit.conftest import make_config
from tests.unit.corekit import NOW, Core, build_core, session

A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
IP1, IP2, IP3 = "10.42.0.101", "10.42.0.102", "10.42.0.103"
PLANS = {"school": {"down": "4mbit", "up": "1mbit"}, "slow": {"down": "1mbit", "up": "256kbit"}}


def shaped_config(**sections: dict[str, Any]) -> Config:
    shaping = {"enabled": True, "plans": PLANS, **sections.pop("shaping", {})}
    return make_config(shaping=shaping, **sections)


@pytest.fixture
def core(tmp_path: Path) -> Core:
    c = build_core(tmp_path, shaped_config())
    c.neighbours.add(IP1, A)
    c.neighbours.add(IP2, B)
    return c


def lan_classes(core: Core) -> dict[int, Any]:
    return core.shaper.classes.get("br-lan", {})


def minor(core: Core, ip: str) -> int:
    return client_minor(core.cfg, ip)


def ended(core: Core, since: int = 0) -> list[tuple[str, str, EndReason]]:
    return [(e.event.mac, e.event.ip, e.event.reason) for e in core.events(since)
            if isinstance(e.event, SessionEnded)]


def started(core: Core, since: int = 0) -> list[tuple[str, str, str]]:
    return [(e.event.mac, e.event.ip, e.event.source) for e in core.events(since)
            if isinstance(e.event, SessionStarted)]


async def make_voucher(core: Core, duration: int = 3600, max_devices: int = 1,
                       plan: str | None = None) -> str:
    _, made = await core.vouchers.create_batch(1, duration, max_devices, plan, "t")
    return made[0].code


# -- logins ------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["terms", "voucher", "manual"])
async def test_login_opens_the_kernel_and_publishes_session_started(
    core: Core, source: str
) -> None:
    seq = core.bus.last_seq
    if source == "terms":
        s = await core.sessions.login_terms(ClientView(IP1, A, None))
        want_expires, want_plan = NOW + core.cfg.portal.session_length, None
    elif source == "voucher":
        code = await make_voucher(core, duration=7200, plan="school")
        seq = core.bus.last_seq
        s = await core.sessions.login_voucher(ClientView(IP1, A, None), code)
        want_expires, want_plan = NOW + 7200, "school"
        assert s.voucher == code
    else:
        s = await core.ops.authorize(A, None, 600, "slow")  # ip looked up from the lease
        want_expires, want_plan = NOW + 600, "slow"
    assert (s.mac, s.ip, s.source, s.expires, s.plan) == (A, IP1, source, want_expires, want_plan)
    assert await core.store.active_session(A, NOW) == s
    assert (A, IP1) in core.firewall.authorized and (A, IP1) in core.firewall.active
    assert core.firewall.classes == {IP1: f"1:{minor(core, IP1):x}"}
    down = lan_classes(core)[minor(core, IP1)]
    assert down.rate == core.cfg.shaping.plan(want_plan).down
    assert minor(core, IP1) in core.shaper.classes["wan0"]
    assert started(core, seq) == [(A, IP1, source)]
    stamped = core.events(seq)[-1]
    assert stamped.event == SessionStarted(A, IP1, source, want_plan, s.voucher, want_expires)


async def test_login_with_shaping_off_touches_no_class(tmp_path: Path) -> None:
    core = build_core(tmp_path, make_config())
    s = await core.sessions.authorize(A, IP1, "manual")
    assert core.firewall.authorized == {(A, IP1): s.expires - NOW}
    assert core.firewall.classes == {} and core.shaper.classes == {}


async def test_address_outside_the_lan_is_allowed_with_shaping_off(tmp_path: Path) -> None:
    core = build_core(tmp_path, make_config())
    await core.sessions.authorize(A, "10.99.0.5", "manual")
    assert (A, "10.99.0.5") in core.firewall.authorized


@dataclass
class Refusal:
    name: str
    call: Callable[[Core], Awaitable[Any]]
    error: type[DesanetError]
    attrs: dict[str, Any] = field(default_factory=dict)
    cfg: dict[str, dict[str, Any]] = field(default_factory=dict)
    setup: Callable[[Core], Awaitable[None]] | None = None


async def _other_online(core: Core) -> None:
    await core.sessions.authorize(B, IP2, "manual")


async def _revoked_voucher(core: Core) -> None:
    code = await make_voucher(core)
    await core.vouchers.revoke(code)


REFUSALS = [
    Refusal("blocked", lambda c: c.sessions.authorize(A, IP1, "terms"), PortalDenied,
            {"reason": "blocked"}, {"access": {"blocked_macs": [A]}}),
    Refusal("blocked-voucher", lambda c: c.sessions.login_voucher(ClientView(IP1, A, None),
                                                                   "AAAAA-BBBBB"),
            PortalDenied, {"reason": "blocked"}, {"access": {"blocked_macs": [A]}}),
    Refusal("full", lambda c: c.sessions.authorize(A, IP1, "terms"), PortalDenied,
            {"reason": "full"}, {"portal": {"max_clients": 1}}, _other_online),
    Refusal("plan unknown", lambda c: c.sessions.authorize(A, IP1, "manual", plan="gold"),
            Invalid, {"field": "plan", "found": "gold"}),
    Refusal("ip outside the lan", lambda c: c.sessions.authorize(A, "10.99.0.5", "manual"),
            Invalid, {"field": "ip"}),
    Refusal("ip gateway's own", lambda c: c.sessions.authorize(A, "10.42.0.1", "manual"),
            Invalid, {"field": "ip"}),
    Refusal("ip lan network", lambda c: c.sessions.authorize(A, "10.42.0.0", "manual"),
            Invalid, {"field": "ip"}),
    Refusal("ip broadcast", lambda c: c.sessions.authorize(A, "10.42.0.255", "manual"),
            Invalid, {"field": "ip"}),
    Refusal("ip not ipv4", lambda c: c.sessions.authorize(A, "fe80::1", "manual"),
            Invalid, {"field": "ip"}),
    Refusal("no ip known", lambda c: c.sessions.authorize(C, None, "manual"), NotFound),
    Refusal("terms in voucher mode", lambda c: c.sessions.login_terms(ClientView(IP1, A, None)),
            PortalDenied, {"reason": "mode"}, {"portal": {"mode": "voucher"}}),
    Refusal("voucher in terms mode",
            lambda c: c.sessions.login_voucher(ClientView(IP1, A, None), "AAAAA-BBBBB"),
            PortalDenied, {"reason": "mode"}, {"portal": {"mode": "terms"}}),
    Refusal("terms without mac", lambda c: c.sessions.login_terms(ClientView(IP3, None, None)),
            PortalDenied, {"reason": "no_mac"}),
    Refusal("voucher without mac",
            lambda c: c.sessions.login_voucher(ClientView(IP3, None, None), "AAAAA-BBBBB"),
            PortalDenied, {"reason": "no_mac"}),
    Refusal("voucher unknown",
            lambda c: c.sessions.login_voucher(ClientView(IP1, A, None), "AAAAA-BBBBB"),
            VoucherError, {"reason": "unknown"}),
    Refusal("change plan unknown", lambda c: c.sessions.change_plan(B, "gold"), Invalid,
            {"field": "plan"}, {}, _other_online),
    Refusal("change plan no session", lambda c: c.sessions.change_plan(A, "school"), NotFound),
    Refusal("end no session", lambda c: c.sessions.end(A, EndReason.DEAUTH), NotFound),
    Refusal("deauth no session", lambda c: c.ops.deauthorize(A), NotFound, {}, {},
            _other_online),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[r.name for r in REFUSALS])
async def test_refused_request_names_the_problem_and_changes_nothing(
    tmp_path: Path, case: Refusal
) -> None:
    core = build_core(tmp_path, shaped_config(**case.cfg))
    core.neighbours.add(IP1, A)
    core.neighbours.add(IP2, B)
    if case.setup is not None:
        await case.setup(core)
    before = await core.snapshot()
    with pytest.raises(case.error) as info:
        await case.call(core)
    for name, value in case.attrs.items():
        assert getattr(info.value, name) == value, (name, info.value)
    if isinstance(info.value, Invalid):
        assert f"field {info.value.field}" in str(info.value)
    assert await core.snapshot() == before


async def test_relogin_on_a_new_address_cuts_the_old_one_off(core: Core) -> None:
    await core.sessions.authorize(A, IP1, "terms")
    seq = core.bus.last_seq
    # The phone really moved: dnsmasq gave it IP3 and its lease of IP1 is gone.
    del core.neighbours.lease_table[IP1]
    core.neighbours.add(IP3, A)
    s = await core.sessions.authorize(A, IP3, "terms")
    assert s.ip == IP3
    assert set(core.firewall.authorized) == {(A, IP3)}
    assert set(core.firewall.active) == {(A, IP3)}
    assert core.firewall.classes == {IP3: f"1:{minor(core, IP3):x}"}
    assert minor(core, IP1) not in lan_classes(core)
    assert minor(core, IP3) in lan_classes(core)
    assert ended(core, seq) == [(A, IP1, EndReason.REPLACED)]
    assert started(core, seq) == [(A, IP3, "terms")]
    assert [x.ip for x in await core.store.active_sessions(NOW)] == [IP3]


async def test_relogin_on_the_same_address_keeps_it_open(core: Core) -> None:
    await core.sessions.authorize(A, IP1, "terms")
    core.clock.advance(60)
    s = await core.sessions.authorize(A, IP1, "terms")
    assert set(core.firewall.authorized) == {(A, IP1)}
    assert core.firewall.authorized[(A, IP1)] == s.expires - core.clock.now()
    assert minor(core, IP1) in lan_classes(core)
    assert [e[2] for e in ended(core)] == [EndReason.REPLACED]


@pytest.mark.parametrize(("part", "method", "error"), [
    ("firewall", "authorize", FirewallError("nftables refused the element")),
    ("shaper", "upsert", ShapingError("tc refused the class")),
])
async def test_kernel_refusal_ends_the_session_and_leaves_nothing(
    core: Core, part: str, method: str, error: DesanetError
) -> None:
    fake = core.firewall if part == "firewall" else core.shaper
    fake.fail_on[method] = error
    with pytest.raises(type(error)):
        await core.sessions.authorize(A, IP1, "terms")
    assert core.store.end_reason(A) == EndReason.KERNEL_REFUSED
    assert await core.store.active_session(A, NOW) is None
    assert core.firewall.authorized == {} and core.firewall.active == {}
    assert core.firewall.classes == {}
    assert all(minor(core, IP1) not in classes for classes in core.shaper.classes.values())
    assert ended(core) == [(A, IP1, EndReason.KERNEL_REFUSED)]
    assert started(core) == []


async def test_kernel_refusal_on_relogin_leaves_no_access(core: Core) -> None:
    await core.sessions.authorize(A, IP1, "terms")
    core.firewall.fail_on["authorize"] = FirewallError("nftables refused the element")
    with pytest.raises(FirewallError):
        await core.sessions.authorize(A, IP1, "terms")
    assert core.firewall.authorized == {}
    assert await core.store.active_sessions(NOW) == []
    assert [e[2] for e in ended(core)] == [EndReason.REPLACED, EndReason.KERNEL_REFUSED]


# -- ending ---------------------------------------------------------------------------


@pytest.mark.parametrize(("how", "reason"), [
    ("logout", EndReason.LOGOUT),
    ("deauth", EndReason.DEAUTH),
    ("end", EndReason.VOUCHER_REVOKED),
])
async def test_end_closes_the_kernel_and_publishes_the_reason(
    core: Core, how: str, reason: EndReason
) -> None:
    await core.sessions.authorize(A, IP1, "terms")
    await core.sessions.authorize(B, IP2, "terms")
    if how == "logout":
        await core.sessions.logout(ClientView(IP1, A, None))
    elif how == "deauth":
        s = await core.ops.deauthorize(A)
        assert s.ip == IP1
    else:
        await core.sessions.end(A, reason)
    assert set(core.firewall.authorized) == {(B, IP2)}
    assert core.firewall.revoke_log == [(A, IP1, f"1:{minor(core, IP1):x}")]
    assert minor(core, IP1) not in lan_classes(core) and minor(core, IP2) in lan_classes(core)
    assert core.store.end_reason(A) == reason
    assert ended(core) == [(A, IP1, reason)]


async def test_logout_without_a_mac_does_nothing(core: Core) -> None:
    before = await core.snapshot()
    await core.sessions.logout(ClientView(IP3, None, None))
    assert await core.snapshot() == before


async def test_ending_old_session_keeps_class_of_new_holder_of_the_address(core: Core) -> None:
    # Phone A's lease moved to phone B, who logged in; A's session ends later.
    await core.store.start_session(session(A, IP1))
    await core.sessions.authorize(B, IP1, "terms")
    await core.sessions.end(A, EndReason.DEAUTH)
    assert core.firewall.revoke_log == [(A, IP1, None)]  # auth/active only, B's map entry stays
    assert minor(core, IP1) in lan_classes(core)  # B's HTB class stays
    assert core.firewall.classes == {IP1: f"1:{minor(core, IP1):x}"}

    await core.sessions.end(B, EndReason.DEAUTH)
    assert core.firewall.revoke_log[-1] == (B, IP1, f"1:{minor(core, IP1):x}")
    assert minor(core, IP1) not in lan_classes(core)


# -- plans -------------------------------------------------------------------------------


@pytest.mark.parametrize("plan", ["school", "slow", None])
async def test_change_plan_reshapes_a_live_client(core: Core, plan: str | None) -> None:
    await core.sessions.authorize(A, IP1, "terms", plan="slow" if plan != "slow" else "school")
    seq = core.bus.last_seq
    s = await core.ops.change_plan(A, plan)
    assert s.plan == plan
    assert (await core.store.active_session(A, NOW)) == s
    want = core.cfg.shaping.plan(plan)
    assert lan_classes(core)[minor(core, IP1)].rate == want.down
    assert core.shaper.classes["wan0"][minor(core, IP1)].rate == want.up
    assert (A, IP1) in core.firewall.authorized
    assert [e.event for e in core.events(seq)] == [PlanChanged(A, plan)]


# -- identify ---------------------------------------------------------------------------


@pytest.mark.parametrize(("ip", "want_mac", "has_session"), [
    (IP1, A, True),  # online
    (IP2, B, False),  # on the LAN, not logged in
    (IP3, None, False),  # not on the LAN
    ("10.42.0.104", A, False),  # A's old address (the neighbour entry is stale): not A's session
])
async def test_identify(core: Core, ip: str, want_mac: str | None, has_session: bool) -> None:
    core.neighbours.add("10.42.0.104", A, lease=False)
    s = await core.sessions.authorize(A, IP1, "terms")
    view = await core.sessions.identify(ip)
    assert view == ClientView(ip, want_mac, s if has_session else None)


# -- sweeping -------------------------------------------------------------------------


async def test_sweep_ends_expired_sessions(core: Core) -> None:
    await core.sessions.authorize(A, IP1, "manual", duration=600)
    await core.sessions.authorize(B, IP2, "manual", duration=7200)
    core.clock.advance(601)
    seq = core.bus.last_seq
    await core.sessions.sweep()
    assert set(core.firewall.authorized) == {(B, IP2)}
    assert minor(core, IP1) not in lan_classes(core)
    assert core.store.end_reason(A) == EndReason.EXPIRED
    assert ended(core, seq) == [(A, IP1, EndReason.EXPIRED)]


@pytest.mark.parametrize(("age", "in_active", "idle"), [
    (1801, False, True),  # past its idle timeout, no traffic: idle
    (1801, True, False),  # traffic inside the window: stays
    (60, False, False),  # younger than the idle timeout: cannot be idle yet
])
async def test_sweep_ends_idle_sessions(core: Core, age: int, in_active: bool, idle: bool) -> None:
    await core.sessions.authorize(A, IP1, "terms")
    core.clock.advance(age)
    if not in_active:
        del core.firewall.active[(A, IP1)]
    seq = core.bus.last_seq
    await core.sessions.sweep()
    if idle:
        assert core.firewall.authorized == {}
        assert core.store.end_reason(A) == EndReason.IDLE
        assert ended(core, seq) == [(A, IP1, EndReason.IDLE)]
    else:
        assert set(core.firewall.authorized) == {(A, IP1)}
        assert ended(core, seq) == []


async def test_sweep_removes_kernel_entries_with_no_session(core: Core) -> None:
    await core.sessions.authorize(B, IP1, "terms")
    core.firewall.authorized[(A, IP1)] = 100  # A's old entry at B's address: B keeps the class
    core.firewall.authorized[(A, IP2)] = 100  # nobody's address now: its class goes too
    core.firewall.active[(B, IP1)] = 100
    seq = core.bus.last_seq
    await core.sessions.sweep()
    assert sorted(core.firewall.revoke_log) == [
        (A, IP1, None), (A, IP2, f"1:{minor(core, IP2):x}")]
    assert set(core.firewall.authorized) == {(B, IP1)}
    assert minor(core, IP1) in lan_classes(core)
    assert ended(core, seq) == []  # stale entries had no session: no session event


async def test_sweep_with_nothing_to_do_changes_nothing(core: Core) -> None:
    await core.sessions.authorize(A, IP1, "terms")
    before = await core.snapshot()
    await core.sessions.sweep()
    assert await core.snapshot() == before


def test_session_events_carry_the_reason_enum_as_text() -> None:
    data = SessionEnded(A, IP1, EndReason.KERNEL_REFUSED).to_json()
    assert data == {"type": "session_ended", "mac": A, "ip": IP1, "reason": "kernel_refused"}
    assert {r.value for r in EndReason} == {
        "logout", "deauth", "expired", "idle", "replaced", "voucher_revoked", "voucher_released",
        "kernel_refused", "time_used", "quota"}


async def test_active_lists_live_sessions_oldest_first(core: Core) -> None:
    await core.sessions.authorize(A, IP1, "terms")
    core.clock.advance(5)
    await core.sessions.authorize(B, IP2, "terms")
    assert [s.mac for s in await core.sessions.active()] == [A, B]


