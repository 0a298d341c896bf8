"""The MQTT adapter and TelemetryService against a real Mosquitto on loopback (no root needed).

The broker (tests/integration/mosquitto.py, fixture ``mosquitto``) has a plain
listener for the test's consumer and a TLS listener that takes only device
certificates of its own test CA, as a region's broker does.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.clock import SystemClock
from gateway.config.telemetry import Telemetry
from gateway.core.events import EventBus, ServiceHealthChanged, Stamped
from gateway.kernel import DatabaseWorker
from gateway.store.telemetry_outbox import AsyncTelemetryOutbox, TelemetryOutbox
from gateway.telemetry.mqtt import LinkError, LinkSettings, MqttLink, connect
from gateway.telemetry.service import TelemetryService
from tests.integration.mosquitto import Broker, Consumer, Received

pytestmark = [pytest.mark.integration]

SITE = "s1"
STATUS, EVENT = f"desanet/v1/{SITE}/status", f"desanet/v1/{SITE}/event"
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
SCHEMA = {STATUS: json.loads((SCHEMAS / "status.schema.json").read_text()),
          EVENT: json.loads((SCHEMAS / "event.schema.json").read_text())}


class Events:
    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    async def wait_events(self, seq: int, timeout: float) -> list[Stamped]:
        return await self.bus.wait_since(seq, timeout)


async def arrived(consumer: Consumer, match: Callable[[Received], bool], what: str,
                  after: int = 0) -> dict[str, Any]:
    """Wait (off the loop: the consumer reads a file) for a message; validated against its schema."""
    found = await asyncio.to_thread(consumer.wait_for, match, 15, what, after)
    body: dict[str, Any] = found.json
    jsonschema.validate(body, SCHEMA[found.topic])
    return body


def status(online: bool) -> Callable[[Received], bool]:
    return lambda m: m.topic == STATUS and m.json["online"] is online


@asynccontextmanager
async def gateway(tmp_path: Path, tel: Telemetry) -> AsyncIterator[tuple[TelemetryService, EventBus]]:
    worker = DatabaseWorker()
    box = TelemetryOutbox(tmp_path / "telemetry.db")
    bus = EventBus(SystemClock())
    svc = TelemetryService(lambda: tel, AsyncTelemetryOutbox(box, worker), connect, Events(bus),
                           lambda: "0123456789ab", "9.9.9", SystemClock(), rng=random.Random(3))
    await svc.start()
    try:
        yield svc, bus
    finally:
        await svc.stop()
        box.close()
        worker.shutdown()


def tls_settings(broker: Broker, **over: Any) -> Telemetry:
    assert broker.pki is not None and broker.tls_port is not None
    fields: dict[str, Any] = {
        "enabled": True, "broker": f"mqtts://{broker.host}:{broker.tls_port}", "site_id": SITE,
        "ca_file": str(broker.pki.ca), "cert_file": str(broker.pki.device_cert),
        "key_file": str(broker.pki.device_key), "start_delay_max": 0, "reconnect_min": 1,
        "reconnect_max": 2, "status_interval": 0}
    fields.update(over)
    return Telemetry(**fields)


async def test_tls_with_a_device_certificate_online_events_and_a_clean_goodbye(
        mosquitto: Broker, tmp_path: Path) -> None:
    with mosquitto.consumer("desanet/v1/#") as consumer:
        async with gateway(tmp_path, tls_settings(mosquitto)) as (svc, bus):
            online = await arrived(consumer, status(True), "online over TLS")
            assert online["session"] == svc.session == 1
            for i in range(3):
                bus.publish(ServiceHealthChanged(f"svc{i}", "up"))
            for seq in (1, 2, 3):
                body = await arrived(consumer, lambda m, s=seq: m.topic == EVENT and m.json["seq"] == s,
                                     f"event {seq}")
                assert body["service"] == f"svc{seq - 1}"
            seen = len(consumer.messages())
        # the clean stop's DISCONNECT asks the broker to publish the Will
        will = await arrived(consumer, status(False), "the Will at a clean stop", after=seen)
        assert will["session"] == 1


async def test_tls_without_a_device_certificate_is_refused(mosquitto: Broker) -> None:
    assert mosquitto.pki is not None and mosquitto.tls_port is not None
    settings = LinkSettings(host=mosquitto.host, port=mosquitto.tls_port, client_id="desanet-x",
                            keepalive=60, will_topic="desanet/v1/x/status", will_payload=b"{}",
                            tls=True, ca_file=str(mosquitto.pki.ca))
    with pytest.raises(LinkError, match="closed before CONNACK"):
        await MqttLink.open(settings, lambda mid, ok: None, lambda reason: None, timeout=10)


async def test_a_broker_from_another_ca_is_not_trusted(mosquitto: Broker, tmp_path: Path) -> None:
    from tests.integration.mosquitto import make_pki

    other = make_pki(tmp_path / "other")
    assert mosquitto.tls_port is not None
    settings = LinkSettings(host=mosquitto.host, port=mosquitto.tls_port, client_id="desanet-x",
                            keepalive=60, will_topic="desanet/v1/x/status", will_payload=b"{}",
                            tls=True, ca_file=str(other.ca), cert_file=str(other.device_cert),
                            key_file=str(other.device_key))
    with pytest.raises(LinkError, match="certificate verify failed"):
        await MqttLink.open(settings, lambda mid, ok: None, lambda reason: None, timeout=10)


async def test_events_made_while_the_broker_is_down_follow_in_order(
        mosquitto: Broker, tmp_path: Path) -> None:
    with mosquitto.consumer("desanet/v1/#") as consumer:
        async with gateway(tmp_path, tls_settings(mosquitto)) as (svc, bus):
            await arrived(consumer, status(True), "online")
            await asyncio.to_thread(mosquitto.stop)
            for i in range(10):
                bus.publish(ServiceHealthChanged(f"svc{i}", "down"))
            await asyncio.to_thread(mosquitto.start)
            await arrived(consumer, lambda m: m.topic == EVENT and m.json["seq"] == 10, "event 10")
            seqs = [m.json["seq"] for m in consumer.messages() if m.topic == EVENT]
            # QoS 1 may deliver a copy (same seq) after a reconnect; first arrivals are in order
            assert list(dict.fromkeys(seqs)) == list(range(1, 11))
            assert svc.connects >= 2


async def test_a_broker_that_never_answers_times_out_and_leaves_nothing_running() -> None:
    import threading

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes the CONNECT, never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    before = {t.name for t in threading.enumerate()}
    settings = LinkSettings(host="127.0.0.1", port=port, client_id="desanet-x", keepalive=60,
                            will_topic="desanet/v1/x/status", will_payload=b"{}")
    async with server:
        with pytest.raises(LinkError, match="cannot connect"):
            await MqttLink.open(settings, lambda mid, ok: None, lambda reason: None, timeout=0.5)
    leftover = {t.name for t in threading.enumerate() if t.is_alive()} - before
    assert not [n for n in leftover if "paho" in n.lower()], leftover
