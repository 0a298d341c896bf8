"""VoucherService against the fakes: batches, revocation, and the redeem rules of a login."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from gateway.core.events import EndReason, SessionEnded, VoucherBatchCreated, VoucherRevoked
from gateway.core.voucher_codes import normalize_code
from gateway.errors import Invalid, StoreError, VoucherError
from gateway.model import ClientView
from tests.unit.conftest import make_config
from tests.unit.corekit import NOW, Core, build_core

A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
IP = {A: "10.42.0.101", B: "10.42.0.102", C: "10.42.0.103"}


def voucher_config(**sections: dict[str, Any]) -> Config:
    return make_config(shaping={"enabled": True, "plans": {"school": {"down": "4mbit",
                                                                      "up": "1mbit"}}},
                       **sections)


@pytest.fixture
def core(tmp_path: Path) -> Core:
    c = build_core(tmp_path, voucher_config())
    for mac, ip in IP.items():
        c.neighbours.add(ip, mac)
    return c


def view(mac: str) -> ClientView:
    return ClientView(IP[mac], mac, None)


async def one(core: Core, duration: int = 3600, max_devices: int = 1,
              plan: str | None = None) -> str:
    _, made = await core.vouchers.create_batch(1, duration, max_devices, plan, "test")
    return made[0].code


# -- batches ---------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "batch", "plan"), [
    (1, "posyandu", None),
    (5, None, "school"),
    (20, "sekolah-2024", "school"),
])
async def test_create_batch(core: Core, count: int, batch: str | None, plan: str | None) -> None:
    name, made = await core.vouchers.create_batch(count, 86400, 2, plan, batch)
    if batch is None:
        assert re.fullmatch(rf"{NOW}-[0-9a-f]{{4}}", name), name
    else:
        assert name == batch
    assert len(made) == count and len({v.code for v in made}) == count
    assert all(normalize_code(v.code) == v.code for v in made)
    assert {(v.duration, v.plan, v.batch, v.max_devices, v.created, v.first_used)
            for v in made} == {(86400, plan, name, 2, NOW, None)}
    assert sorted(v.code for v in await core.vouchers.list(name)) == sorted(v.code for v in made)
    assert core.events()[-1].event == VoucherBatchCreated(name, count, plan, 86400)


async def test_create_batch_with_an_unknown_plan_changes_nothing(core: Core) -> None:
    before = await core.snapshot()
    with pytest.raises(Invalid) as info:
        await core.vouchers.create_batch(3, 3600, 1, "gold", "b")
    assert info.value.field == "plan" and "school" in info.value.expected
    assert await core.snapshot() == before


async def test_create_batch_store_failure_publishes_nothing(core: Core) -> None:
    core.store.fail_on["add_vouchers"] = StoreError("state database error: disk full")
    before = await core.snapshot()
    with pytest.raises(StoreError):
        await core.vouchers.create_batch(3, 3600)
    assert await core.snapshot() == before


async def test_batches_are_listed_apart(core: Core) -> None:
    await core.vouchers.create_batch(2, 3600, batch="a")
    await core.vouchers.create_batch(3, 3600, batch="b")
    assert [len(await core.vouchers.list(b)) for b in ("a", "b", None)] == [2, 3, 5]


# sheet: named batches, serials, and a bad name refused with nothing created


async def test_a_named_batch_gets_an_id_from_its_name_and_serials(core: Core) -> None:
    ident, made = await core.vouchers.create_batch(3, 86400, name="  Posyandu Mei  ")
    assert re.fullmatch(r"posyandu-mei-[0-9a-f]{4}", ident), ident
    assert [(v.batch, v.batch_name, v.serial) for v in made] == [
        (ident, "Posyandu Mei", n) for n in (1, 2, 3)]
    assert await core.vouchers.list(ident) == made
    # ids stay plain ASCII to type after --batch; a name without any still gets an id
    accented, _ = await core.vouchers.create_batch(1, 60, name="Ñandú RT/RW")
    assert re.fullmatch(r"nandu-rt-rw-[0-9a-f]{4}", accented), accented
    symbols, _ = await core.vouchers.create_batch(1, 60, name="✓ ✓")
    assert re.fullmatch(rf"{NOW}-[0-9a-f]{{4}}", symbols), symbols


@pytest.mark.parametrize("bad", ["x" * 65, "Posyandu\x1b[2J", "Mei\nRT 3", "\u200bA\u202e"])
async def test_a_bad_batch_name_creates_nothing(core: Core, bad: str) -> None:
    await core.vouchers.create_batch(1, 60, batch="kept")
    before, events = await core.snapshot(), len(core.events())
    with pytest.raises(Invalid) as info:
        await core.vouchers.create_batch(3, 3600, name=bad)
    assert info.value.field == "name" and "printable" in info.value.expected
    assert await core.snapshot() == before and len(core.events()) == events


# -- revoking --------------------------------------------------------------------------


async def test_revoke_ends_every_session_in_the_kernel_and_publishes(core: Core) -> None:
    code = await one(core, max_devices=2)
    await core.sessions.login_voucher(view(A), code)
    await core.sessions.login_voucher(view(B), code)
    await core.sessions.authorize(C, IP[C], "terms")  # not on the voucher: stays
    seq = core.bus.last_seq
    v = await core.ops.revoke_voucher(code)
    assert v.revoked and v.state(NOW) == "revoked"
    assert set(core.firewall.authorized) == {(C, IP[C])}
    revoked = {(mac, ip) for mac, ip, _ in core.firewall.revoke_log}
    assert revoked == {(A, IP[A]), (B, IP[B])}
    assert all(r.end_reason == EndReason.VOUCHER_REVOKED
               for r in core.store.rows.values() if r.session.voucher == code)
    events = [s.event for s in core.events(seq)]
    assert sorted((e.mac, e.reason) for e in events if isinstance(e, SessionEnded)) == [
        (A, EndReason.VOUCHER_REVOKED), (B, EndReason.VOUCHER_REVOKED)]
    assert events[-1] == VoucherRevoked(code, 2)


async def test_revoke_an_unused_voucher(core: Core) -> None:
    code = await one(core)
    seq = core.bus.last_seq
    await core.vouchers.revoke(code)
    assert [s.event for s in core.events(seq)] == [VoucherRevoked(code, 0)]
    with pytest.raises(VoucherError) as info:
        await core.sessions.login_voucher(view(A), code)
    assert info.value.reason == "revoked"


async def test_revoke_unknown_changes_nothing(core: Core) -> None:
    await one(core)
    before = await core.snapshot()
    with pytest.raises(VoucherError) as info:
        await core.vouchers.revoke("AAAAA-BBBBB")
    assert info.value.reason == "unknown"
    assert await core.snapshot() == before


# -- redeeming (inside a login) ---------------------------------------------------------


@pytest.mark.parametrize(("name", "max_devices", "steps", "reason"), [
    ("unknown", 1, [], "unknown"),
    ("revoked", 1, ["revoke"], "revoked"),
    ("expired", 1, [A, "wait 3601"], "expired"),
    ("in_use", 1, [A], "in_use"),
    ("in_use after two", 2, [A, B], "in_use"),
])
async def test_redeem_refusals(core: Core, name: str, max_devices: int, steps: list[str],
                               reason: str) -> None:
    code = "AAAAA-BBBBB" if name == "unknown" else await one(core, 3600, max_devices)
    for step in steps:
        if step == "revoke":
            await core.vouchers.revoke(code)
        elif step.startswith("wait "):
            core.clock.advance(int(step.split()[1]))
        else:
            await core.sessions.login_voucher(view(step), code)
    await core.sessions.sweep()
    before = await core.snapshot()
    with pytest.raises(VoucherError) as info:
        await core.sessions.login_voucher(view(C), code)
    assert info.value.reason == reason
    assert await core.snapshot() == before
    assert (C, IP[C]) not in core.firewall.authorized


async def test_expired_voucher_refuses_its_own_device_too(core: Core) -> None:
    code = await one(core, 600)
    await core.sessions.login_voucher(view(A), code)
    core.clock.advance(600)
    with pytest.raises(VoucherError) as info:
        await core.sessions.login_voucher(view(A), code)
    assert info.value.reason == "expired"


async def test_first_use_starts_the_clock(core: Core) -> None:
    code = await one(core, 3600, max_devices=2, plan="school")
    core.clock.advance(86400)  # an unused voucher does not age
    first = core.clock.now()
    s1 = await core.sessions.login_voucher(view(A), code)
    assert (s1.expires, s1.plan, s1.voucher, s1.source) == (first + 3600, "school", code,
                                                            "voucher")
    core.clock.advance(1000)
    s2 = await core.sessions.login_voucher(view(B), code)  # a second phone: what is left
    assert s2.expires == first + 3600
    core.clock.advance(1000)
    s3 = await core.sessions.login_voucher(view(A), code)  # the same phone again
    assert s3.expires == first + 3600
    [v] = await core.vouchers.list("test")
    assert (v.first_used, v.devices, v.state(core.clock.now())) == (first, (A, B), "active")
    core.clock.advance(1601)
    assert v.state(core.clock.now()) == "expired"


async def test_voucher_session_ends_at_expiry_in_the_kernel(core: Core) -> None:
    code = await one(core, 600)
    await core.sessions.login_voucher(view(A), code)
    core.clock.advance(601)
    await core.sessions.sweep()
    assert core.firewall.authorized == {}
    assert core.store.end_reason(A) == EndReason.EXPIRED


# -- release (a villager changed phones) -------------------------------------------------


async def test_release_one_device_frees_its_slot_and_keeps_the_clock(core: Core) -> None:
    code = await one(core, duration=3600, max_devices=1)
    await core.sessions.login_voucher(view(A), code)
    with pytest.raises(VoucherError) as info:  # positive control: the slot is taken
        await core.sessions.login_voucher(view(B), code)
    assert info.value.reason == "in_use"
    core.clock.advance(600)
    seq = core.bus.last_seq
    v = await core.vouchers.release(code, A)
    assert v.devices == () and v.first_used == NOW  # time used is not given back
    assert (A, IP[A]) not in core.firewall.authorized
    events = [s.event for s in core.events(seq)]
    assert SessionEnded(A, IP[A], EndReason.VOUCHER_RELEASED) in events
    session = await core.sessions.login_voucher(view(B), code)
    assert session.expires == NOW + 3600


async def test_release_every_device_leaves_other_vouchers_alone(core: Core) -> None:
    code = await one(core, max_devices=2)
    other = await one(core)
    await core.sessions.login_voucher(view(A), code)
    await core.sessions.login_voucher(view(B), code)
    await core.sessions.login_voucher(view(C), other)
    v = await core.ops.release_voucher(code, None)
    assert v.devices == ()
    assert set(core.firewall.authorized) == {(C, IP[C])}


async def test_release_unknown_changes_nothing(core: Core) -> None:
    await one(core)
    before = await core.snapshot()
    with pytest.raises(VoucherError) as info:
        await core.vouchers.release("ABCDE-FGHJK", None)
    assert info.value.reason == "unknown"
    assert await core.snapshot() == before


@pytest.mark.parametrize("step", ["redeem_voucher", "start_session"])
async def test_a_store_failure_during_a_voucher_login_changes_nothing(
    core: Core, step: str
) -> None:
    code = await one(core)
    before = await core.snapshot()
    core.store.fail_on[step] = StoreError("disk I/O error")
    with pytest.raises(StoreError):
        await core.sessions.login_voucher(view(A), code)
    assert await core.snapshot() == before  # the voucher is not bound, its clock not started
    core.store.fail_on.clear()
    await core.sessions.login_voucher(view(A), code)  # positive control


@pytest.mark.parametrize("end", ["logout", "deauth"])
async def test_ending_a_voucher_session_frees_its_device_slot(core: Core, end: str) -> None:
    code = await one(core, duration=3600, max_devices=1)
    await core.sessions.login_voucher(view(A), code)
    with pytest.raises(VoucherError) as info:  # positive control: one device at once
        await core.sessions.login_voucher(view(B), code)
    assert info.value.reason == "in_use"
    if end == "logout":
        await core.sessions.logout(ClientView(IP[A], A, None))
    else:
        await core.ops.deauthorize(A)
    core.clock.advance(600)
    session = await core.sessions.login_voucher(view(B), code)
    assert session.expires == NOW + 3600  # the voucher's clock kept running
    with pytest.raises(VoucherError):  # and the slot is B's now
        await core.sessions.login_voucher(view(A), code)
