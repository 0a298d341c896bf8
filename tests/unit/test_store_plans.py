"""The store's part of plans (Step 11), on the real SQLite store and on the fake alike:
time of use added up, a plan's limits stamped on its vouchers and undone."""

from __future__ import annotations

from dataclasses import replace

from gateway.errors import VoucherError
from gateway.model import Voucher
from gateway.ports import SessionStorePort
from tests.unit.test_store_contract import NOW, V1, V2, A, B, sess, store

__all__ = ["store"]  # the fixture: both stores
C = "02:00:00:00:00:0c"


async def _two(store: SessionStorePort) -> None:
    await store.add_vouchers([Voucher(V1, 86400, "jam", NOW, "b", max_devices=3),
                              Voucher(V2, 3600, None, NOW, "b")])


async def test_used_seconds_add_up(store: SessionStorePort) -> None:
    await _two(store)
    got = await store.add_used_seconds({V1: 5, V2: 0, "ZZZZZ-ZZZZZ": 7})
    assert [(v.code, v.used_seconds) for v in got] == [(V1, 5), (V2, 0)]
    got = await store.add_used_seconds({V1: 3})
    assert [(v.code, v.used_seconds) for v in got] == [(V1, 8)]
    assert await store.add_used_seconds({}) == []
    # only the vouchers of the plans asked for come back; all are counted
    got = await store.add_used_seconds({V1: 1, V2: 4}, ["jam"])
    assert [(v.code, v.used_seconds) for v in got] == [(V1, 9)]
    assert await store.add_used_seconds({V1: 1}, []) == []
    v2 = await store.voucher(V2)
    assert v2 is not None and v2.used_seconds == 4


async def test_stamping_a_plan_moves_its_live_sessions_and_is_undone(
        store: SessionStorePort) -> None:
    await _two(store)
    await store.redeem_voucher(V1, A, NOW)
    await store.start_session(replace(sess(A, voucher=V1, plan="jam"), expires=NOW + 86400))
    before = await store.stamp_plans([("jam", 600, 2), ("other", 60, None)])
    assert before == [(V1, 86400, 3)]
    v = await store.voucher(V1)
    assert v is not None and (v.duration, v.max_devices) == (600, 2)
    live = await store.active_session(A, NOW)
    assert live is not None and live.expires == NOW + 600
    untouched = await store.voucher(V2)
    assert untouched is not None and (untouched.duration, untouched.max_devices) == (3600, 1)
    # the same stamp again changes nothing
    assert await store.stamp_plans([("jam", 600, 2)]) == []
    # two devices now: a third is refused with the number
    await store.redeem_voucher(V1, B, NOW)
    try:
        await store.redeem_voucher(V1, C, NOW)
        raise AssertionError("a third device got in")
    except VoucherError as exc:
        assert (exc.reason, exc.devices) == ("in_use", 2)
    await store.restore_limits(before)
    v = await store.voucher(V1)
    assert v is not None and (v.duration, v.max_devices) == (86400, 3)
    live = await store.active_session(A, NOW)
    assert live is not None and live.expires == NOW + 86400


async def test_stamping_only_the_devices_keeps_the_duration(store: SessionStorePort) -> None:
    await _two(store)
    assert await store.stamp_plans([("jam", None, 1)]) == [(V1, 86400, 3)]
    v = await store.voucher(V1)
    assert v is not None and (v.duration, v.max_devices) == (86400, 1)
