"""TelemetryService and what follows a command's answer, against the in-memory broker: the
answer goes out on the connection the request came in on before any reconnect; a reconnect
asked for runs ``on_connected`` only once the new connection's subscription is acknowledged;
new [telemetry] settings cut a reconnect backoff short."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from gateway.config.telemetry import Telemetry
from gateway.core.events import ChangeSource, ConfigApplied, EventBus, Stamped
from gateway.kernel import DatabaseWorker
from gateway.store.telemetry_outbox import AsyncTelemetryOutbox, TelemetryOutbox
from gateway.telemetry.dispatch import After, Reply
from gateway.telemetry.fake import FakeBroker
from gateway.telemetry.mqtt import Incoming
from gateway.telemetry.service import TelemetryService
from gateway.telemetry.topics import Topics

SITE = "s1"
TOPICS = Topics("desanet/v1", SITE)
DEADLINE = 5.0


class Events:
    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    async def wait_events(self, seq: int, timeout: float) -> list[Stamped]:
        return await self.bus.wait_since(seq, timeout)


@dataclass
class Commands:
    """Stands in for the dispatcher: answers every request with ``after``, once let go."""

    after: After | None = None
    go: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, msg: Incoming) -> Reply:
        await self.go.wait()
        return Reply(TOPICS.cmd_res, {"id": "cmd-1", "ok": True}, None, self.after)


@dataclass
class Rig:
    svc: TelemetryService
    broker: FakeBroker
    bus: EventBus
    settings: list[Telemetry]
    commands: Commands
    sleeping: list[float]

    def change_settings(self, **changes: object) -> None:
        self.settings[0] = self.settings[0].model_copy(update=changes)
        self.bus.publish(ConfigApplied("bbbbbbbbbbbb", "aaaaaaaaaaaa", ChangeSource.MQTT, "x", (),
                                       None))

    def answers(self) -> list[int]:
        """The links the answers went out on."""
        return [p.link for p in self.broker.published if p.topic == TOPICS.cmd_res]


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
    sleeping: list[float] = []

    async def sleep(delay: float) -> None:
        if delay == 0:
            return  # the start delay
        sleeping.append(delay)
        await asyncio.Event().wait()  # a backoff of hours: only new settings end it

    tel = Telemetry(enabled=True, broker="mqtt://broker.example", site_id=SITE, start_delay_max=0,
                    reconnect_min=3600, reconnect_max=3600, reconnect_jitter=0, status_interval=0)
    settings = [tel]
    svc = TelemetryService(lambda: settings[0], AsyncTelemetryOutbox(box, worker), broker.connect,
                           Events(bus), lambda: "0123456789ab", "9.9.9", FakeClock(),
                           rng=random.Random(7), sleep=sleep)
    commands = Commands()
    svc.commands = commands
    await svc.start()
    try:
        await until(lambda: svc.connected, "the first connection")
        yield Rig(svc, broker, bus, settings, commands, sleeping)
    finally:
        await svc.stop()
        box.close()
        worker.shutdown()


def deliver(rig: Rig) -> None:
    rig.broker.links[-1].deliver(Incoming(TOPICS.cmd_req, b"{}"))


async def test_new_settings_wait_for_the_answer_in_progress(rig: Rig) -> None:
    deliver(rig)
    rig.change_settings(keepalive=120)
    await until(lambda: any(json.loads(p.payload).get("type") == "config_applied"
                            for p in rig.broker.published), "the config event sent on link 0")
    assert not rig.broker.links[0].gone  # held for the answer
    rig.commands.go.set()
    await until(lambda: len(rig.broker.links) == 2 and rig.svc.connected, "the new connection")
    assert rig.answers() == [0]  # answered on the connection the request came in on
    assert rig.broker.links[0].closed_with_will is True
    assert rig.broker.links[1].settings.keepalive == 120


async def test_a_reconnect_after_the_answer_runs_on_connected_once_subscribed(rig: Rig) -> None:
    ran: list[int] = []

    async def on_connected() -> None:
        ran.append(len(rig.broker.links))
    rig.commands.after = After(reconnect=True, on_connected=on_connected)
    rig.commands.go.set()
    deliver(rig)
    await until(lambda: bool(ran), "on_connected")
    assert rig.answers() == [0] and ran == [2]  # after the answer, on the new connection
    assert rig.broker.links[0].closed_with_will is True
    assert TOPICS.cmd_req in rig.broker.links[1].subscriptions


async def test_a_refused_subscription_runs_nothing(rig: Rig) -> None:
    ran: list[int] = []

    async def on_connected() -> None:
        ran.append(1)
    rig.broker.refuse_subscriptions = True
    rig.commands.after = After(reconnect=True, on_connected=on_connected)
    rig.commands.go.set()
    deliver(rig)
    await until(lambda: len(rig.broker.links) == 2 and rig.svc.connected, "the new connection")
    # a second reconnect asked for: the job was dropped, not handed on
    rig.commands.after = After(reconnect=True)
    deliver(rig)
    await until(lambda: len(rig.broker.links) == 3 and rig.svc.connected, "the third connection")
    assert ran == []


async def test_new_settings_end_a_reconnect_backoff(rig: Rig) -> None:
    rig.broker.up = False
    rig.broker.links[0].drop()
    await until(lambda: len(rig.sleeping) >= 1, "the backoff of an hour after the loss")
    attempts = rig.broker.attempts
    rig.broker.up = True
    rig.change_settings(broker="mqtt://other.example:1883")
    await until(lambda: rig.svc.connected, "a connection with the new settings")
    assert rig.broker.attempts == attempts + 1
    assert rig.broker.links[-1].settings.host == "other.example"
