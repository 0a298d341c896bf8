"""The bounded backlog against a real Mosquitto on loopback (no root needed).

The gateway's TelemetryService, its real outbox (bounded by the
``[telemetry]`` settings as the daemon wires it) and the paho link, with a
broker that stops for a while: what the consumer receives after the outage is
exactly what the documented drop policy (docs/mqtt.md "Backlog after an
outage") keeps, in ``seq`` order, marked ``hist``, and the drop counts reach
the status. Events come from the event bus; telemetry messages are put in the
outbox as periodic telemetry does (through the service's outbox port).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.clock import SystemClock
from gateway.config.telemetry import Telemetry
from gateway.core.events import EventBus, ServiceHealthChanged
from gateway.fleet.table import unpack
from gateway.kernel import DatabaseWorker
from gateway.store.telemetry_outbox import AsyncTelemetryOutbox, TelemetryOutbox
from gateway.telemetry.mqtt import connect
from gateway.telemetry.outbox import NewMessage, backlog_bound
from gateway.telemetry.service import TelemetryService
from tests.integration.mosquitto import Broker, Consumer, Received
from tests.integration.test_mqtt_link import EVENT, SCHEMA, STATUS, Events, arrived, status, tls_settings

pytestmark = [pytest.mark.integration]

TELEMETRY = EVENT.rsplit("/", 1)[0] + "/telemetry"
BOUND = 100  # the smallest backlog_max_messages the config takes


@dataclass
class Gateway:
    svc: TelemetryService
    bus: EventBus
    outbox: AsyncTelemetryOutbox

    async def make(self, kinds: str) -> None:
        """One message per letter, in order: E an event (through the bus), T telemetry."""
        for i, k in enumerate(kinds):
            before = self.outbox.totals().last_seq
            if k == "E":
                self.bus.publish(ServiceHealthChanged(f"svc{i}", "down"))
            else:
                await self.outbox.add(self.svc.session, [NewMessage(
                    "telemetry", SystemClock().time(), json.dumps({"load": i}))])
            # one at a time, so the outbox holds them in this order
            await wait(lambda b=before: self.outbox.totals().last_seq == b + 1, f"message {i} queued")


def expected_after(kinds: str, held: list[tuple[int, str]], next_seq: int, bound: int
                   ) -> tuple[list[tuple[int, str]], dict[str, int]]:
    """The documented policy as a model: each new message past the bound drops the oldest
    telemetry, and only when none is left the oldest event. Survivors and drops."""
    dropped = {"event": 0, "telemetry": 0}
    for k in kinds:
        held.append((next_seq, "event" if k == "E" else "telemetry"))
        next_seq += 1
        while len(held) > bound:
            victim = next((m for m in held if m[1] == "telemetry"), None) or held[0]
            held.remove(victim)
            dropped[victim[1]] += 1
    return held, dropped


async def wait(check: Any, what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def gateway(tmp_path: Path, tel: Telemetry) -> AsyncIterator[Gateway]:
    worker = DatabaseWorker()
    box = TelemetryOutbox(tmp_path / "telemetry.db", lambda: backlog_bound(tel))  # as the daemon
    bus = EventBus(SystemClock())
    outbox = AsyncTelemetryOutbox(box, worker)
    svc = TelemetryService(lambda: tel, outbox, connect, Events(bus), lambda: "0123456789ab",
                           "9.9.9", SystemClock(), rng=random.Random(5))
    await svc.start()
    try:
        yield Gateway(svc, bus, outbox)
    finally:
        await svc.stop()
        box.close()
        worker.shutdown()


def outbox_messages(consumer: Consumer, after: int) -> list[dict[str, Any]]:
    """Events and telemetry from index ``after`` on, first arrival of each seq, validated."""
    first: dict[int, dict[str, Any]] = {}
    order = []
    for m in consumer.messages()[after:]:
        if m.topic not in (EVENT, TELEMETRY):
            continue
        if m.topic == EVENT:
            jsonschema.validate(m.json, SCHEMA[EVENT])
        for body in carried(m):  # the backlog's telemetry leaves in batches
            body["kind"] = "event" if m.topic == EVENT else "telemetry"
            if body["seq"] not in first:
                first[body["seq"]] = body
                order.append(body)
    return order


def carried(m: Received) -> list[dict[str, Any]]:
    """The messages of one PUBLISH, as every consumer reads them (a batch: several)."""
    return unpack(m.payload, "s1", m.topic.rsplit("/", 1)[1])


async def outage(gw: Gateway, broker: Broker, consumer: Consumer, kinds: str,
                 held: list[tuple[int, str]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Stop the broker, make ``kinds``, start it; what arrived, and the model's drops."""
    await wait(lambda: gw.outbox.totals().count == 0, "an empty outbox before the outage")
    seen = len(consumer.messages())
    await asyncio.to_thread(broker.stop)
    await wait(lambda: not gw.svc.connected, "the gateway to notice")
    start = gw.outbox.totals().last_seq + 1
    await gw.make(kinds)
    survivors, dropped = expected_after(kinds, held, start, BOUND)
    assert gw.outbox.totals().count == len(survivors) == BOUND
    await asyncio.to_thread(broker.start)
    last = survivors[-1][0]
    await asyncio.to_thread(consumer.wait_for, lambda m: m.topic in (EVENT, TELEMETRY)
                            and any(b["seq"] == last for b in carried(m)),
                            15, f"the last survivor, seq {last}", seen)
    await wait(lambda: gw.outbox.totals().count == 0, "the backlog acknowledged")
    got = outbox_messages(consumer, seen)
    assert [(m["seq"], m["kind"]) for m in got] == survivors  # exactly those, in seq order
    assert all(m.get("hist") is True for m in got)
    return got, dropped


async def test_an_outage_past_the_bound_delivers_the_documented_survivors_marked_historical(
        mosquitto: Broker, tmp_path: Path) -> None:
    tel = tls_settings(mosquitto, backlog_max_messages=BOUND)
    with mosquitto.consumer("desanet/v1/#") as consumer:
        async with gateway(tmp_path, tel) as gw:
            await arrived(consumer, status(True), "online")
            held: list[tuple[int, str]] = []
            # 1: telemetry and events, 120 for a bound of 100: the 20 oldest telemetry go
            got, dropped = await outage(gw, mosquitto, consumer, "TE" * 60, held)
            assert dropped == {"event": 0, "telemetry": 20}
            assert gw.svc.status_json()["dropped"] == dropped
            assert sum(m["kind"] == "telemetry" for m in got) == 40
            # 2: events only, past the bound again: no telemetry is left, the oldest events go
            held.clear()
            seen = len(consumer.messages())
            got, more = await outage(gw, mosquitto, consumer, "E" * 110, held)
            assert more == {"event": 10, "telemetry": 0}
            total = {"event": 10, "telemetry": 20}
            assert gw.svc.status_json()["dropped"] == total
            # the status sent at the reconnect told the region what is missing
            body = await arrived(consumer, lambda m: m.topic == STATUS and "dropped" in m.json
                                 and m.json["dropped"] == total, "the status with the drops", after=seen)
            assert body["online"] is True
            # and what is made once connected again is live
            seen = len(consumer.messages())
            gw.bus.publish(ServiceHealthChanged("late", "up"))
            live = await arrived(consumer, lambda m: m.topic == EVENT and m.json["service"] == "late",
                                 "a live event", after=seen)
            assert "hist" not in live and live["seq"] == got[-1]["seq"] + 1
