"""TelemetryService's periodic reports against the in-memory broker: they go through the
outbox in one sequence with the events, the first is full, later ones carry what moved."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import jsonschema

from gateway.clock import FakeClock
from gateway.config.telemetry import Telemetry
from gateway.core.events import EventBus, ServiceHealthChanged
from gateway.errors import StoreError
from gateway.kernel import DatabaseWorker
from gateway.store.telemetry_outbox import AsyncTelemetryOutbox, TelemetryOutbox
from gateway.telemetry.fake import FakeBroker
from gateway.telemetry.metrics import Readings, SystemReadings
from gateway.telemetry.service import TelemetryService
from tests.unit.test_telemetry_service import EVENT, SITE, Events, until

TELEMETRY = f"desanet/v1/{SITE}/telemetry"
SCHEMA = json.loads((Path(__file__).parents[2] / "docs/schemas/telemetry.schema.json").read_text())


class Gateway:
    """Readings as the daemon composes them; each call is one sample."""

    def __init__(self) -> None:
        self.calls = 0
        self.logins = 0
        self.authorized = 3
        self.fail_next = 0

    async def readings(self) -> Readings:
        self.calls += 1
        if self.fail_next:
            self.fail_next -= 1
            raise StoreError("the lease file is unreadable (test)")
        status: dict[str, Any] = {"sessions_active": self.authorized,
                                  "uplink": {"state": "up", "latency_ms": 600},
                                  "portal": {"logins": self.logins, "voucher_failures": 0},
                                  "clients": [{"mac": "02:00:00:00:00:01", "ip": "10.42.0.9"}]}
        return Readings(SystemReadings(cpu=10.0, memory=40.0, uptime=1000 + self.calls,
                                       interfaces={"eth0": (100 * self.calls, 10 * self.calls)}),
                        status)


async def test_reports_share_the_events_sequence_and_send_what_moved(tmp_path: Path) -> None:
    worker = DatabaseWorker()
    box = TelemetryOutbox(tmp_path / "telemetry.db")
    broker = FakeBroker()
    bus = EventBus(FakeClock())
    gateway = Gateway()
    sleeps: list[float] = []
    go = asyncio.Event()

    async def sleep(delay: float) -> None:
        sleeps.append(delay)
        if delay == 60:
            await go.wait()  # one sample per step of the test
            go.clear()
        else:
            await asyncio.sleep(0.01)

    tel = Telemetry(enabled=True, broker="mqtt://broker.example", site_id=SITE, start_delay_max=0,
                    status_interval=0, telemetry_interval=300, telemetry_sample_interval=60,
                    telemetry_full_every=3, telemetry_send_interval=0)  # batches: test_telemetry_batch
    svc = TelemetryService(lambda: tel, AsyncTelemetryOutbox(box, worker), broker.connect,
                           Events(bus), lambda: "0123456789ab", "9.9.9", FakeClock(),
                           rng=random.Random(1), sleep=sleep, readings=gateway.readings)

    def sent() -> list[tuple[str, dict[str, Any]]]:
        return [(p.topic, json.loads(p.payload)) for p in broker.published
                if p.topic in (EVENT, TELEMETRY)]

    def reports() -> list[dict[str, Any]]:
        return [body for topic, body in sent() if topic == TELEMETRY]

    async def samples(n: int) -> None:
        for _ in range(n):
            calls = gateway.calls
            go.set()
            await until(lambda: gateway.calls == calls + 1, "a sample")  # noqa: B023

    await svc.start()
    try:
        await until(lambda: gateway.calls == 1, "the sample at start")
        bus.publish(ServiceHealthChanged("dukcapil", "online"))
        gateway.logins = 2
        await samples(5)  # 300 s / 60 s: the first report, full
        await until(lambda: len(reports()) == 1, "the first report")
        first = reports()[0]
        assert first["f"] is True
        assert (first["cpu"], first["mem"], first["ca"], first["ul"], first["li"]) == (10, 40, 3, 1, 2)
        assert first["rx"] == {"eth0": 500} and first["upt"] == 1006
        assert first["session"] == 1 and sent()[0][0] == EVENT
        assert [body["seq"] for _, body in sent()] == [1, 2]  # the event, then the report

        gateway.logins, gateway.authorized = 5, 6
        bus.publish(ServiceHealthChanged("dukcapil", "offline"))
        await until(lambda: len(sent()) == 3, "the second event")
        await samples(5)
        await until(lambda: len(reports()) == 2, "the second report")
        envelope = {k: reports()[1][k] for k in ("v", "site", "session", "seq", "time")}
        assert reports()[1] == {**envelope, "ca": 6}  # what moved; counters wait for a full one
        assert [body["seq"] for _, body in sent()] == [1, 2, 3, 4]

        gateway.fail_next = 1  # a sample that cannot be read is skipped, the loop goes on
        await samples(5)  # nothing moved: no third report
        await samples(5)  # the fourth interval's is full again
        await until(lambda: len(reports()) == 3, "the full report")
        again = reports()[2]
        assert again["f"] is True and again["seq"] == 5  # nothing was sent in between
        assert (again["li"], again["rx"], again["ca"]) == (3, {"eth0": 1500}, 6)
        for body in reports():
            jsonschema.validate(body, SCHEMA)
            assert "10.42.0.9" not in json.dumps(body) and "02:00" not in json.dumps(body)
        await until(lambda: box.count() == 0, "every report acknowledged and gone")
    finally:
        await svc.stop()
        box.close()
        worker.shutdown()
