"""One table of session and voucher cases, run against the real store and the fake.

Every case runs on ``AsyncStore`` over a real SQLite file (on the database
worker thread) and on ``MemoryStore``: the fake the service tests use cannot
drift from the store the daemon uses. A seeded random walk then drives both
with the same operations and compares every answer.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.errors import StoreError, VoucherError
from gateway.kernel import DatabaseWorker
from gateway.model import Session, Voucher
from gateway.ports import SessionStorePort
from gateway.store import Store
from gateway.store.db import AsyncStore
from gateway.store.fake import MemoryStore

NOW = 1_700_000_000
A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
V1, V2 = "AAAAA-BBBBB", "CCCCC-DDDDD"


def sess(mac: str = A, ip: str = "10.42.0.5", started: int = NOW, expires: int = NOW + 100,
         voucher: str | None = None, plan: str | None = None) -> Session:
    return Session(mac, ip, started, expires, 60, "voucher" if voucher else "terms", voucher, plan)


def vouch(code: str = V1, duration: int = 3600, created: int = NOW, batch: str = "b",
          max_devices: int = 1) -> Voucher:
    return Voucher(code, duration, None, created, batch, max_devices)


@pytest.fixture(params=["sqlite", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SessionStorePort]:
    if request.param == "memory":
        yield MemoryStore()
        return
    worker = DatabaseWorker()
    real = AsyncStore(Store(tmp_path / "s.db"), worker)
    try:
        yield real
    finally:
        await real.close()
        worker.shutdown()


async def reason_of(call: Awaitable[object]) -> str:
    with pytest.raises(VoucherError) as info:
        await call
    return info.value.reason


# -- the cases ------------------------------------------------------------------------


async def one_open_session_per_mac(st: SessionStorePort) -> None:
    await st.start_session(sess(ip="10.42.0.5"))
    await st.start_session(sess(ip="10.42.0.6", started=NOW + 1))
    assert [s.ip for s in await st.active_sessions(NOW + 1)] == ["10.42.0.6"]
    assert await st.count_active(NOW + 1) == 1
    ended = await st.end_session(A, NOW + 2, "logout")
    assert ended is not None and ended.ip == "10.42.0.6"
    assert await st.active_sessions(NOW + 2) == []
    assert await st.end_session(A, NOW + 2, "logout") is None


async def active_means_open_and_unexpired(st: SessionStorePort) -> None:
    await st.start_session(sess(expires=NOW + 10))
    assert await st.active_session(A, NOW + 9) == sess(expires=NOW + 10)
    assert await st.active_session(A, NOW + 10) is None
    assert await st.count_active(NOW + 10) == 0
    assert await st.active_sessions(NOW + 10) == []
    # past its expiry but not yet swept: still open, so it can be ended
    assert await st.end_session(A, NOW + 20, "deauth") == sess(expires=NOW + 10)


async def replacing_ends_an_expired_open_session(st: SessionStorePort) -> None:
    await st.start_session(sess(expires=NOW + 10))
    await st.start_session(sess(ip="10.42.0.6", started=NOW + 50, expires=NOW + 100))
    assert await st.expire_sessions(NOW + 60) == []  # the old one was replaced, not expired
    assert [s.ip for s in await st.active_sessions(NOW + 60)] == ["10.42.0.6"]


async def expire_returns_due_sessions_oldest_first(st: SessionStorePort) -> None:
    await st.start_session(sess(C, "10.42.0.7", started=NOW + 2, expires=NOW + 10))
    await st.start_session(sess(A, "10.42.0.5", started=NOW, expires=NOW + 50))
    await st.start_session(sess(B, "10.42.0.6", started=NOW + 1, expires=NOW + 100))
    assert [s.mac for s in await st.expire_sessions(NOW + 50)] == [A, C]
    assert await st.expire_sessions(NOW + 50) == []
    assert [s.mac for s in await st.active_sessions(NOW + 50)] == [B]
    assert await st.end_session(A, NOW + 60, "logout") is None  # already ended
    assert await st.prune_ended(NOW + 11) == 1  # C ended at its expiry, not when swept


async def active_sessions_are_oldest_first(st: SessionStorePort) -> None:
    await st.start_session(sess(C, "10.42.0.7", started=NOW + 5))
    await st.start_session(sess(B, "10.42.0.6", started=NOW))
    await st.start_session(sess(A, "10.42.0.5", started=NOW))  # same start: insertion order
    assert [s.mac for s in await st.active_sessions(NOW + 5)] == [B, A, C]


async def ip_taken_by_another_mac_only(st: SessionStorePort) -> None:
    await st.start_session(sess(A, "10.42.0.5"))
    assert not await st.ip_taken("10.42.0.5", A, NOW)
    assert await st.ip_taken("10.42.0.5", B, NOW)
    assert not await st.ip_taken("10.42.0.6", B, NOW)
    assert not await st.ip_taken("10.42.0.5", B, NOW + 100)  # expired
    await st.end_session(A, NOW, "logout")
    assert not await st.ip_taken("10.42.0.5", B, NOW)


async def change_plan_of_active_session_only(st: SessionStorePort) -> None:
    await st.start_session(sess(A, expires=NOW + 10))
    changed = await st.change_plan(A, "school", NOW)
    assert changed == sess(A, expires=NOW + 10, plan="school")
    assert await st.active_session(A, NOW) == changed
    assert await st.change_plan(A, None, NOW + 10) is None  # expired
    assert await st.change_plan(B, "school", NOW) is None  # no session
    ended = await st.end_session(A, NOW + 20, "logout")
    assert ended is not None and ended.plan == "school"


async def prune_forgets_only_old_ended_sessions(st: SessionStorePort) -> None:
    await st.start_session(sess(A, expires=NOW + 10))
    await st.start_session(sess(B, "10.42.0.7", expires=NOW + 1000))
    await st.start_session(sess(C, "10.42.0.8", expires=NOW + 1000))
    await st.start_session(sess(C, "10.42.0.9", started=NOW + 3, expires=NOW + 1000))
    await st.end_session(A, NOW + 5, "logout")
    assert await st.prune_ended(NOW + 3) == 0  # the replaced one ended exactly then: kept
    assert await st.prune_ended(NOW + 5) == 1  # the replaced one
    assert await st.prune_ended(NOW + 6) == 1  # the logged-out one
    assert [s.mac for s in await st.active_sessions(NOW)] == [B, C]


async def vouchers_are_listed_in_order(st: SessionStorePort) -> None:
    await st.add_vouchers([vouch("ZZZZZ-ZZZZZ", created=NOW, batch="b1"),
                           vouch("MMMMM-MMMMM", created=NOW + 1, batch="b2"),
                           vouch("EEEEE-EEEEE", created=NOW + 1, batch="b1")])
    assert [v.code for v in await st.vouchers()] == ["ZZZZZ-ZZZZZ", "EEEEE-EEEEE", "MMMMM-MMMMM"]
    # within a batch: by serial, i.e. in the order they were made
    assert [v.code for v in await st.vouchers("b1")] == ["ZZZZZ-ZZZZZ", "EEEEE-EEEEE"]
    assert await st.vouchers("nope") == []


async def adding_vouchers_is_all_or_none(st: SessionStorePort) -> None:
    await st.add_vouchers([vouch(V1)])
    with pytest.raises(StoreError):
        await st.add_vouchers([vouch(V2), vouch(V1)])
    with pytest.raises(StoreError):
        await st.add_vouchers([vouch(V2), vouch(V2)])
    assert [v.code for v in await st.vouchers()] == [V1]


async def added_vouchers_start_unused(st: SessionStorePort) -> None:
    used = Voucher(V1, 3600, "school", NOW, "b", 2, first_used=NOW, revoked=True, devices=(A,))
    await st.add_vouchers([used])
    assert await st.vouchers() == [Voucher(V1, 3600, "school", NOW, "b", 2, serial=1)]


async def batches_are_numbered_and_named(st: SessionStorePort) -> None:
    # sheet: serials 1..N continue a batch; a batch has one name, a new one renames it.
    made = await st.add_vouchers([replace(vouch(V1), batch_name="Posyandu Mei"), vouch(V2)])
    assert [(v.serial, v.batch_name) for v in made] == [(1, "Posyandu Mei"), (2, "Posyandu Mei")]
    more = await st.add_vouchers([vouch("EEEEE-EEEEE"), vouch("FFFFF-FFFFF", batch="other")])
    assert [(v.serial, v.batch_name) for v in more] == [(3, "Posyandu Mei"), (1, "")]
    await st.add_vouchers([replace(vouch("GGGGG-GGGGG"), batch_name="Posyandu Juni")])
    listed = await st.vouchers("b")
    assert [(v.serial, v.batch_name) for v in listed] == [(n, "Posyandu Juni") for n in (1, 2, 3, 4)]
    assert [v for v in await st.vouchers() if v.code == V2] == [listed[1]]
    with pytest.raises(StoreError):  # all or none: no serial is used up by a failed add
        await st.add_vouchers([vouch("HHHHH-HHHHH"), vouch(V1)])
    again = await st.add_vouchers([vouch("HHHHH-HHHHH")])
    assert again[0].serial == 5


async def redeem_rules(st: SessionStorePort) -> None:
    await st.add_vouchers([vouch(V1), vouch(V2, max_devices=2)])
    v = await st.redeem_voucher(V1, A, NOW + 10)
    assert (v.first_used, v.devices, v.state(NOW + 10)) == (NOW + 10, (A,), "active")
    again = await st.redeem_voucher(V1, A, NOW + 20)  # the same device may log in again
    assert again.first_used == NOW + 10 and again.devices == (A,)
    assert await reason_of(st.redeem_voucher(V1, B, NOW + 20)) == "in_use"
    await st.redeem_voucher(V2, C, NOW)
    both = await st.redeem_voucher(V2, A, NOW + 1)
    assert both.devices == (A, C) and both.first_used == NOW  # sorted; first use kept
    assert await reason_of(st.redeem_voucher(V2, B, NOW + 2)) == "in_use"
    assert await reason_of(st.redeem_voucher(V1, A, NOW + 10 + 3600)) == "expired"
    assert await reason_of(st.redeem_voucher("ZZZZZ-ZZZZZ", A, NOW)) == "unknown"
    assert [v.devices for v in await st.vouchers()] == [(A,), (A, C)]


async def revoke_ends_the_vouchers_sessions(st: SessionStorePort) -> None:
    await st.add_vouchers([vouch(V1, max_devices=2), vouch(V2)])
    await st.redeem_voucher(V1, A, NOW)
    await st.redeem_voucher(V1, B, NOW)
    await st.redeem_voucher(V2, C, NOW)
    await st.start_session(sess(B, "10.42.0.6", started=NOW + 1, voucher=V1))
    await st.start_session(sess(A, "10.42.0.5", started=NOW, voucher=V1))
    await st.start_session(sess(C, "10.42.0.7", started=NOW, voucher=V2))
    voucher, ended = await st.revoke_voucher(V1, NOW + 5)
    assert voucher.revoked and voucher.state(NOW + 5) == "revoked" and voucher.devices == (A, B)
    assert [s.mac for s in ended] == [A, B]
    assert [s.mac for s in await st.active_sessions(NOW + 5)] == [C]
    assert await reason_of(st.redeem_voucher(V1, A, NOW + 6)) == "revoked"
    assert (await st.revoke_voucher(V1, NOW + 7))[1] == []  # twice: nothing more to end
    assert await reason_of(st.revoke_voucher("ZZZZZ-ZZZZZ", NOW)) == "unknown"


async def revoked_before_use_says_revoked(st: SessionStorePort) -> None:
    await st.add_vouchers([vouch(V1)])
    voucher, ended = await st.revoke_voucher(V1, NOW)
    assert (voucher.state(NOW), voucher.first_used, ended) == ("revoked", None, [])
    assert await reason_of(st.redeem_voucher(V1, A, NOW)) == "revoked"


async def closed_store_raises_store_error(st: SessionStorePort) -> None:
    await st.close()
    with pytest.raises(StoreError):
        await st.active_sessions(NOW)
    with pytest.raises(StoreError):
        await st.vouchers()


CASES: list[Callable[[SessionStorePort], Awaitable[None]]] = [
    one_open_session_per_mac,
    active_means_open_and_unexpired,
    replacing_ends_an_expired_open_session,
    expire_returns_due_sessions_oldest_first,
    active_sessions_are_oldest_first,
    ip_taken_by_another_mac_only,
    change_plan_of_active_session_only,
    prune_forgets_only_old_ended_sessions,
    vouchers_are_listed_in_order,
    adding_vouchers_is_all_or_none,
    added_vouchers_start_unused,
    batches_are_numbered_and_named,
    redeem_rules,
    revoke_ends_the_vouchers_sessions,
    revoked_before_use_says_revoked,
    closed_store_raises_store_error,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
async def test_contract(store: SessionStorePort,
                        case: Callable[[SessionStorePort], Awaitable[None]]) -> None:
    await case(store)


# -- the same random walk on both -----------------------------------------------------


async def answer(call: Awaitable[object]) -> object:
    try:
        return await call
    except VoucherError as exc:
        return ("VoucherError", exc.reason)
    except StoreError:
        return "StoreError"


@pytest.mark.parametrize("seed", range(5))
async def test_random_walk_gives_the_same_answers(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    macs = [f"02:00:00:00:00:{i:02x}" for i in range(6)]
    ips = [f"10.42.0.{i}" for i in range(10, 14)]
    codes = ["AAAAA-AAAAA", "BBBBB-BBBBB", "CCCCC-CCCCC"]
    worker = DatabaseWorker()
    real = AsyncStore(Store(tmp_path / "s.db"), worker)
    fake = MemoryStore()
    now = NOW
    try:
        for step in range(300):
            now += rng.choice([0, 0, 1, 5, 30])
            mac, ip, code = rng.choice(macs), rng.choice(ips), rng.choice(codes)
            op = rng.randrange(13)
            voucher, expires = rng.choice([None, code]), now + rng.choice([10, 60, 300])
            plan, max_devices = rng.choice([None, "school"]), rng.choice([1, 2])
            revoke, batch = rng.random() < 0.2, rng.choice([None, "b"])
            results = []
            for s in (real, fake):
                st: SessionStorePort = s
                match op:
                    case 0 | 1:
                        call: Awaitable[object] = st.start_session(
                            sess(mac, ip, now, expires, voucher))
                    case 2:
                        call = st.end_session(mac, now, "logout")
                    case 3:
                        call = st.active_session(mac, now)
                    case 4:
                        call = st.active_sessions(now)
                    case 5:
                        call = st.count_active(now)
                    case 6:
                        call = st.ip_taken(ip, mac, now)
                    case 7:
                        call = st.change_plan(mac, plan, now)
                    case 8:
                        call = st.expire_sessions(now)
                    case 9:
                        call = st.prune_ended(now - 60)
                    case 10:
                        call = st.add_vouchers([Voucher(code, 120, None, now, "b", max_devices)])
                    case 11:
                        call = st.redeem_voucher(code, mac, now)
                    case _:
                        call = st.revoke_voucher(code, now) if revoke else st.vouchers(batch)
                results.append(await answer(call))
            assert results[0] == results[1], f"step {step}, op {op}"
    finally:
        await real.close()
        worker.shutdown()


# -- a whole login in one transaction --------------------------------------------------


class Full(Exception):
    pass


async def test_login_records_and_returns_what_it_replaced(store: SessionStorePort) -> None:
    first = sess(A, "10.42.0.5")
    await store.start_session(first)
    seen: list[tuple[Session | None, int]] = []
    current, new = await store.login(A, NOW + 1, None, lambda c, n: seen.append((c, n)),
                                     lambda v: sess(A, "10.42.0.6", started=NOW + 1))
    assert seen == [(first, 1)] and current == first
    assert await store.active_sessions(NOW + 1) == [new]


async def test_login_with_a_voucher_redeems_it_in_the_same_transaction(
    store: SessionStorePort
) -> None:
    await store.add_vouchers([vouch(V1)])
    _, new = await store.login(B, NOW, V1, lambda c, n: None,
                               lambda v: sess(B, voucher=v.code if v else None))
    assert new.voucher == V1
    assert [v.devices for v in await store.vouchers()] == [(B,)]


@pytest.mark.parametrize("refusal", ["admit", "voucher"])
async def test_a_refused_login_changes_nothing(store: SessionStorePort, refusal: str) -> None:
    await store.add_vouchers([vouch(V1, max_devices=1)])
    await store.login(A, NOW, V1, lambda c, n: None, lambda v: sess(A, voucher=V1))
    before = (await store.active_sessions(NOW), await store.vouchers())

    def admit(current: Session | None, active: int) -> None:
        if refusal == "admit":
            raise Full

    with pytest.raises(Full if refusal == "admit" else VoucherError):
        await store.login(B, NOW, V1, admit, lambda v: sess(B, "10.42.0.7", voucher=V1))
    assert (await store.active_sessions(NOW), await store.vouchers()) == before


async def test_ending_a_voucher_session_unbinds_that_device(store: SessionStorePort) -> None:
    await store.add_vouchers([vouch(V1, max_devices=2)])
    for mac in (A, B):
        await store.login(mac, NOW, V1, lambda c, n: None, lambda v, m=mac: sess(m, voucher=V1))
    await store.end_session(A, NOW + 5, "logout")
    assert [v.devices for v in await store.vouchers()] == [(B,)]
