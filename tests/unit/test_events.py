"""EventBus: the replay ring, since / wait_since, and the JSON shape of every event."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.clock import FakeClock
from gateway.core.events import (
    ChangeSource,
    CommandHandled,
    ConfigApplied,
    ConfigConfirmed,
    ConfigRefused,
    ConfigRolledBack,
    EndReason,
    Event,
    EventBus,
    PlanChanged,
    ServiceHealthChanged,
    SessionEnded,
    SessionStarted,
    UplinkChanged,
    VoucherBatchCreated,
    VoucherReleased,
    VoucherRevoked,
)

NOW = 1_700_000_000
MAC, IP = "02:00:00:00:00:0a", "10.42.0.101"


def up(n: int) -> UplinkChanged:
    return UplinkChanged(n % 2 == 0)


def test_sequence_numbers_and_times() -> None:
    clock = FakeClock(NOW)
    bus = EventBus(clock)
    assert bus.last_seq == 0 and bus.since(0) == []
    first = bus.publish(up(0))
    clock.advance(7)
    second = bus.publish(up(1))
    assert (first.seq, first.time, second.seq, second.time) == (1, float(NOW), 2, float(NOW + 7))
    assert bus.last_seq == 2
    assert bus.since(0) == [first, second]
    assert bus.since(1) == [second]
    assert bus.since(2) == []
    assert bus.since(99) == []


def test_the_ring_keeps_the_last_capacity_events() -> None:
    bus = EventBus(FakeClock(NOW), capacity=3)
    for i in range(5):
        bus.publish(up(i))
    assert [s.seq for s in bus.since(0)] == [3, 4, 5]
    assert [s.seq for s in bus.since(3)] == [4, 5]
    assert bus.last_seq == 5


def test_last_of_some_types() -> None:
    bus = EventBus(FakeClock(NOW))
    assert bus.last(ConfigApplied) is None
    applied = bus.publish(ConfigApplied("b" * 12, "a" * 12, ChangeSource.CLI))
    bus.publish(up(0))
    assert bus.last(ConfigApplied, ConfigRolledBack) == applied
    rolled = bus.publish(ConfigRolledBack("a" * 12, "b" * 12, ChangeSource.TIMER, "late"))
    assert bus.last(ConfigApplied, ConfigRolledBack) == rolled
    assert bus.last(ConfigApplied) == applied


async def test_wait_since_returns_at_once_when_events_are_there() -> None:
    bus = EventBus(FakeClock(NOW))
    s = bus.publish(up(0))
    assert await asyncio.wait_for(bus.wait_since(0, 30.0), 1.0) == [s]
    assert await bus.wait_since(1, 0) == []


async def test_wait_since_times_out_with_nothing() -> None:
    bus = EventBus(FakeClock(NOW))
    start = time.monotonic()
    assert await bus.wait_since(0, 0.05) == []
    assert 0.04 <= time.monotonic() - start < 2.0


async def test_a_publish_wakes_every_waiter() -> None:
    bus = EventBus(FakeClock(NOW))
    bus.publish(up(0))
    waiters = [asyncio.create_task(bus.wait_since(1, 30.0)) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters)
    s = bus.publish(up(1))
    got = await asyncio.wait_for(asyncio.gather(*waiters), 2.0)
    assert got == [[s], [s], [s]]


async def test_a_waiter_gets_everything_published_before_it_woke() -> None:
    bus = EventBus(FakeClock(NOW))
    waiter = asyncio.create_task(bus.wait_since(0, 30.0))
    await asyncio.sleep(0)
    a, b = bus.publish(up(0)), bus.publish(up(1))
    assert await asyncio.wait_for(waiter, 2.0) == [a, b]


async def test_waiting_again_after_a_timeout_still_wakes() -> None:
    bus = EventBus(FakeClock(NOW))
    assert await bus.wait_since(0, 0.01) == []
    waiter = asyncio.create_task(bus.wait_since(0, 30.0))
    await asyncio.sleep(0)
    s = bus.publish(up(0))
    assert await asyncio.wait_for(waiter, 2.0) == [s]


async def test_a_cancelled_waiter_does_not_break_the_bus() -> None:
    bus = EventBus(FakeClock(NOW))
    waiter = asyncio.create_task(bus.wait_since(0, 30.0))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    s = bus.publish(up(0))
    assert await bus.wait_since(0, 1.0) == [s]


SHAPES: list[tuple[Event, dict[str, Any]]] = [
    (SessionStarted(MAC, IP, "voucher", "school", "ABCDE-FGHJK", NOW + 3600),
     {"type": "session_started", "mac": MAC, "ip": IP, "source": "voucher", "plan": "school",
      "voucher": "ABCDE-FGHJK", "expires": NOW + 3600}),
    (SessionEnded(MAC, IP, EndReason.IDLE),
     {"type": "session_ended", "mac": MAC, "ip": IP, "reason": "idle"}),
    (PlanChanged(MAC, None), {"type": "plan_changed", "mac": MAC, "plan": None}),
    (ConfigApplied("b" * 12, "a" * 12, ChangeSource.CLI, "budi", ("portal.x: 1 -> 2",), NOW),
     {"type": "config_applied", "version": "b" * 12, "previous_version": "a" * 12,
      "source": "cli", "by": "budi", "changes": ["portal.x: 1 -> 2"], "trial_deadline": NOW}),
    (ConfigConfirmed("b" * 12, ChangeSource.CLI, "ani"),
     {"type": "config_confirmed", "version": "b" * 12, "source": "cli", "by": "ani"}),
    (ConfigRolledBack("a" * 12, "b" * 12, ChangeSource.TIMER, "not confirmed"),
     {"type": "config_rolled_back", "version": "a" * 12, "from_version": "b" * 12,
      "source": "timer", "reason": "not confirmed", "by": ""}),
    (ConfigRefused(ChangeSource.SIGHUP, "step dnsmasq failed", "dnsmasq"),
     {"type": "config_refused", "source": "sighup", "reason": "step dnsmasq failed",
      "step": "dnsmasq", "by": ""}),
    (UplinkChanged(False, NOW, "link"), {"type": "uplink_changed", "up": False, "since": NOW,
                                         "reason": "link", "latency_ms": None}),
    (ServiceHealthChanged("dukcapil", "down"),
     {"type": "service_health_changed", "service": "dukcapil", "state": "down"}),
    (VoucherBatchCreated("posyandu", 10, None, 86400),
     {"type": "voucher_batch_created", "batch": "posyandu", "count": 10, "plan": None,
      "duration": 86400}),
    (VoucherRevoked("ABCDE-FGHJK", 2),
     {"type": "voucher_revoked", "code": "ABCDE-FGHJK", "sessions_ended": 2}),
    (VoucherReleased("ABCDE-FGHJK", "02:00:00:00:00:0a", 1),
     {"type": "voucher_released", "code": "ABCDE-FGHJK", "mac": "02:00:00:00:00:0a",
      "sessions_ended": 1}),
    (CommandHandled("op-0000001", "deauth", "refused", "expired"),
     {"type": "command_handled", "id": "op-0000001", "name": "deauth", "outcome": "refused",
      "reason": "expired"}),
]


@pytest.mark.parametrize(("event", "want"), SHAPES, ids=[s[1]["type"] for s in SHAPES])
def test_to_json_shapes(event: Event, want: dict[str, Any]) -> None:
    bus = EventBus(FakeClock(NOW))
    bus.publish(up(0))
    stamped = bus.publish(event)
    assert event.to_json() == want
    assert stamped.to_json() == {"seq": 2, "time": float(NOW), **want}


def test_every_event_type_has_a_shape_and_a_distinct_name() -> None:
    classes = {type(e) for e, _ in SHAPES}
    # (slots=True leaves the pre-slots class behind in __subclasses__: compare names)
    assert {c.__name__ for c in classes} == {c.__name__ for c in Event.__subclasses__()}
    assert len({c.type for c in classes}) == len(classes)
    # the types the control API documents for /v1/events
    assert {c.type for c in classes} >= {
        "session_started", "session_ended", "config_applied", "config_confirmed",
        "config_rolled_back", "config_refused", "uplink_changed", "service_health_changed",
        "voucher_batch_created", "voucher_revoked", "voucher_released"}
