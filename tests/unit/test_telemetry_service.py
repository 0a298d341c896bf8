"""TelemetryService against the in-memory broker: status, order, PUBACKs, losses, backoff."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import FakeClock
from gateway.config.telemetry import Telemetry
from gateway.core.events import ChangeSource, ConfigApplied, EventBus, ServiceHealthChanged, Stamped
from gateway.kernel import DatabaseWorker
from gateway.store.telemetry_outbox import AsyncTelemetryOutbox, TelemetryOutbox
from gateway.telemetry.fake import FakeBroker, Published
from gateway.telemetry.service import TelemetryService, reconnect_delay

SITE = "s1"
STATUS, EVENT = f"desanet/v1/{SITE}/status", f"desanet/v1/{SITE}/event"
DEADLINE = 5.0


class Events:
    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    async def wait_events(self, seq: int, timeout: float) -> list[Stamped]:
        return await self.bus.wait_since(seq, timeout)


@dataclass
class Rig:
    svc: TelemetryService
    broker: FakeBroker
    bus: EventBus
    box: TelemetryOutbox
    sleeps: list[float]
    version: list[str]
    settings: list[Telemetry]

    def emit(self, n: int, start: int = 0) -> None:
        for i in range(start, start + n):
            self.bus.publish(ServiceHealthChanged(f"svc{i}", "up"))

    def sent(self, topic: str = EVENT, link: int | None = None) -> list[dict[str, Any]]:
        return [json.loads(p.payload) for p in self.broker.published
                if p.topic == topic and (link is None or p.link == link)]

    def statuses(self) -> list[Published]:
        return [p for p in self.broker.published if p.topic == STATUS]


async def until(check: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not check():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    worker = DatabaseWorker()
    box = TelemetryOutbox(tmp_path / "telemetry.db")
    broker = FakeBroker()
    bus = EventBus(FakeClock())
    sleeps: list[float] = []
    version = ["0123456789ab"]

    async def sleep(delay: float) -> None:
        sleeps.append(delay)
        await asyncio.sleep(0.01)

    tel = Telemetry(enabled=True, broker="mqtt://broker.example", site_id=SITE, start_delay_max=30,
                    reconnect_min=5, reconnect_max=60, reconnect_jitter=0.5, status_interval=0)
    settings = [tel]
    svc = TelemetryService(lambda: settings[0], AsyncTelemetryOutbox(box, worker), broker.connect,
                           Events(bus), lambda: version[0], "9.9.9", FakeClock(),
                           rng=random.Random(7), sleep=sleep)
    await svc.start()
    try:
        yield Rig(svc, broker, bus, box, sleeps, version, settings)
    finally:
        await svc.stop()
        box.close()
        worker.shutdown()


async def test_status_on_connect_then_events_in_order_and_acked_ones_leave(rig: Rig) -> None:
    await until(lambda: len(rig.statuses()) == 1, "the status")
    status = rig.statuses()[0]
    assert status.retain and json.loads(status.payload) == {
        "v": 1, "online": True, "site": SITE, "version": "9.9.9", "config_version": "0123456789ab",
        "boot_time": rig.svc.boot_time, "session": 1}
    assert 0 <= rig.sleeps[0] <= 30  # the random start delay
    will = rig.broker.links[0].settings
    assert (will.will_topic, json.loads(will.will_payload)["online"]) == (STATUS, False)
    assert will.client_id == f"desanet-{SITE}" and will.keepalive == 1800
    rig.emit(30)  # more than the window of 20 in flight
    await until(lambda: len(rig.sent()) == 30, "30 events")
    assert [m["seq"] for m in rig.sent()] == list(range(1, 31))
    assert [m["service"] for m in rig.sent()] == [f"svc{i}" for i in range(30)]
    await until(lambda: rig.box.count() == 0, "the outbox to empty")


async def test_broker_down_events_wait_then_go_in_order_with_jittered_backoff(rig: Rig) -> None:
    await until(lambda: rig.svc.connected, "the first connection")
    rig.broker.up = False
    rig.broker.links[0].drop()
    rig.emit(5)
    await until(lambda: rig.broker.attempts >= 6, "several refused attempts")
    assert rig.sent() == [] and rig.box.count() == 5
    delays = rig.sleeps[1:6]
    for k, delay in enumerate(delays, start=1):  # lost: 5 s; then 10, 20, 40, 60 (cap) ...
        base = min(60, 5 * 2 ** (k - 1))
        assert base * 0.5 <= delay <= base, (k, delay)
    assert rig.svc.status_json()["backlog"] == 5 and not rig.svc.status_json()["connected"]
    rig.broker.up = True
    await until(lambda: len(rig.sent()) == 5, "the backlog")
    await until(lambda: rig.svc.status_json()["backlog"] == 0, "the backlog count to reach 0")
    assert rig.svc.status_json()["connected"] and rig.svc.status_json()["session"] == 1
    assert [m["seq"] for m in rig.sent()] == [1, 2, 3, 4, 5]
    last_status = rig.statuses()[-1]
    first_event = next(p for p in rig.broker.published if p.topic == EVENT)
    assert rig.broker.published.index(last_status) < rig.broker.published.index(first_event)


async def test_a_lost_connection_sends_the_unacked_again_in_order_and_ignores_late_acks(rig: Rig) -> None:
    await until(lambda: rig.svc.connected, "the first connection")
    rig.broker.auto_ack = False
    rig.emit(4)
    await until(lambda: len(rig.sent()) == 4, "4 events in flight")
    first = rig.broker.links[0]
    assert len(first.unacked) == 4  # the status was acknowledged before
    first.ack(first.unacked[0])  # seq 1
    await until(lambda: rig.box.count() == 3, "seq 1 acknowledged")
    first.drop()
    rig.broker.auto_ack = True
    await until(lambda: len(rig.sent(link=1)) == 3, "the rest on the next connection")
    assert [m["seq"] for m in rig.sent(link=1)] == [2, 3, 4]
    first.ack(first.unacked[1])  # a late PUBACK of the old connection changes nothing
    await until(lambda: rig.box.count() == 0, "all acknowledged on the new connection")
    assert first.closed_with_will is False  # a lost link is not a goodbye


async def test_a_refused_puback_keeps_the_message_and_starts_over(rig: Rig) -> None:
    await until(lambda: rig.svc.connected, "the first connection")
    rig.broker.refuse_next = 1
    rig.emit(1)
    await until(lambda: len(rig.broker.links) == 2 and len(rig.sent(link=1)) == 1, "a second try")
    assert rig.sent(link=0)[0]["seq"] == rig.sent(link=1)[0]["seq"] == 1
    await until(lambda: rig.box.count() == 0, "acknowledged the second time")


async def test_a_config_change_sends_the_status_again(rig: Rig) -> None:
    await until(lambda: len(rig.statuses()) == 1, "the status")
    rig.version[0] = "ba9876543210"
    rig.bus.publish(ConfigApplied("ba9876543210", "0123456789ab", ChangeSource.CLI))
    await until(lambda: len(rig.statuses()) == 2, "the status again")
    assert json.loads(rig.statuses()[1].payload)["config_version"] == "ba9876543210"


async def test_a_clean_stop_leaves_with_the_will(rig: Rig) -> None:
    await until(lambda: rig.svc.connected, "the first connection")
    await rig.svc.stop()
    assert rig.broker.links[0].closed_with_will is True


@pytest.mark.parametrize(("attempt", "low", "high"), [
    (1, 5, 5), (2, 10, 10), (3, 20, 20), (7, 320, 320), (8, 600, 600), (100, 600, 600)])
def test_reconnect_delay_doubles_to_the_cap_with_jitter(attempt: int, low: float, high: float) -> None:
    rng = random.Random(1)
    found = [reconnect_delay(attempt, 5, 600, 0.5, rng) for _ in range(200)]
    assert all(low * 0.5 <= d <= high for d in found)
    assert max(found) - min(found) > high * 0.3  # really spread, not one value
    assert reconnect_delay(attempt, 5, 600, 0.0, rng) == high


async def test_new_settings_say_goodbye_and_connect_with_them(rig: Rig) -> None:
    await until(lambda: rig.svc.connected, "the first connection")
    rig.settings[0] = rig.settings[0].model_copy(update={"site_id": "s2"})
    rig.bus.publish(ConfigApplied("ba9876543210", "0123456789ab", ChangeSource.CLI))
    await until(lambda: len(rig.broker.links) == 2 and rig.svc.connected, "a connection as s2")
    assert rig.broker.links[0].closed_with_will is True  # s1 is offline now
    second = rig.broker.links[1].settings
    assert second.client_id == "desanet-s2" and second.will_topic == "desanet/v1/s2/status"
    await until(lambda: any(p.topic == "desanet/v1/s2/status" for p in rig.broker.published),
                "the status of s2")


async def test_disabled_at_runtime_goes_offline_and_stays_away(rig: Rig) -> None:
    await until(lambda: rig.svc.connected, "the first connection")
    rig.settings[0] = rig.settings[0].model_copy(update={"enabled": False})
    rig.bus.publish(ConfigApplied("ba9876543210", "0123456789ab", ChangeSource.CLI))
    await until(lambda: rig.broker.links[0].closed_with_will is True, "the goodbye")
    rig.emit(3)  # still queued durably, for when it is enabled again
    await until(lambda: rig.box.count() >= 3, "events queued")
    assert len(rig.broker.links) == 1 and not rig.svc.connected
    rig.settings[0] = rig.settings[0].model_copy(update={"enabled": True})
    rig.bus.publish(ConfigApplied("0123456789ab", "ba9876543210", ChangeSource.CLI))
    await until(lambda: rig.box.count() == 0, "the queue sent once enabled again")
    assert len(rig.broker.links) == 2


async def test_a_loss_reported_before_connect_returns_is_not_missed(rig: Rig) -> None:
    await until(lambda: rig.svc.connected, "the first connection")
    rig.broker.drop_at_connect = 1
    rig.broker.links[0].drop()
    rig.emit(2)
    await until(lambda: len(rig.broker.links) == 3 and rig.box.count() == 0,
                "a third connection that sends the events")
    assert [m["seq"] for m in rig.sent(link=2)] == [1, 2]


@pytest.mark.parametrize(("data", "line"), [
    (None, "  telemetry:       off"),
    ({"enabled": False}, "  telemetry:       off"),
    ({"enabled": True, "connected": True, "broker": "mqtts://m.example:8883", "site_id": "s1",
      "session": 4, "backlog": 0},
     "  telemetry:       connected to mqtts://m.example:8883 as s1, session 4, 0 message(s) waiting"),
    ({"enabled": True, "connected": False, "broker": "mqtt://m.example", "site_id": "s1",
      "session": 4, "backlog": 12},
     "  telemetry:       NOT connected to mqtt://m.example as s1, session 4, 12 message(s) waiting"),
])
def test_the_status_line(data: dict[str, Any] | None, line: str) -> None:
    from gateway.cli_format import telemetry_status_line

    assert telemetry_status_line(data) == line
