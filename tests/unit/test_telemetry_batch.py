"""Telemetry batches: what may wait, how reports share a PUBLISH, the version 2 payload and
its compression (gateway/telemetry/batch.py), how every consumer unpacks them
(gateway/fleet/table.py ``unpack``), and the service holding reports for the send interval
while events go at once, in seq order (docs/mqtt.md "Batches")."""

from __future__ import annotations

import asyncio
import json
import random
import zlib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.clock import FakeClock
from gateway.config.telemetry import Telemetry
from gateway.core.events import EventBus, ServiceHealthChanged
from gateway.fleet.table import FleetTable, Rejected, unpack
from gateway.kernel import DatabaseWorker
from gateway.store.telemetry_outbox import AsyncTelemetryOutbox, TelemetryOutbox
from gateway.telemetry import batch, payloads
from gateway.telemetry.fake import FakeBroker
from gateway.telemetry.outbox import Message
from tests.unit.test_telemetry_periodic import Gateway
from tests.unit.test_telemetry_service import EVENT, SITE, Events, until

SCHEMAS = Path(__file__).parents[2] / "docs" / "schemas"
SINGLE = json.loads((SCHEMAS / "telemetry.schema.json").read_text())
BATCH = json.loads((SCHEMAS / "telemetry-batch.schema.json").read_text())
EVENT_SCHEMA = json.loads((SCHEMAS / "event.schema.json").read_text())
TELEMETRY = f"desanet/v1/{SITE}/telemetry"
WHO = payloads.Identity(SITE, "9.9.9", 1_700_000_000, 7)
NOW = 1_700_000_600.0


def tm(seq: int, created: float = NOW - 100, session: int = 7, **data: Any) -> Message:
    return Message(seq, "telemetry", session, created, json.dumps(data or {"ca": seq}))


def ev(seq: int, created: float = NOW - 50) -> Message:
    return Message(seq, "event", 7, created, json.dumps({"type": "service_health_changed",
                                                         "service": "dukcapil", "state": "up"}))


# -- what may wait ---------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "hist", "interval", "due"), [
    ([tm(1, NOW - 100), tm(2, NOW - 40)], {}, 300, NOW + 200),  # live reports wait
    ([tm(1, NOW - 300)], {}, 300, None),  # the oldest is due
    ([tm(1), ev(2)], {}, 300, None),  # an event takes the reports before it along
    ([tm(1), tm(2)], {1: True}, 300, None),  # the backlog goes at once
    ([tm(1)], {}, 0, None),  # no batching
    ([], {}, 300, None),
    ([tm(s) for s in range(1, batch.MAX_REPORTS + 1)], {}, 300, None),  # a full batch
    ([tm(s) for s in range(1, batch.MAX_REPORTS)], {}, 300, NOW + 200),
])
def test_what_may_wait(rows: list[Message], hist: dict[int, bool], interval: int,
                       due: float | None) -> None:
    assert batch.held_until(rows, hist, NOW, interval) == due


def test_groups_keep_seq_order_events_alone_and_one_session_per_batch() -> None:
    rows = [tm(1), tm(2), ev(3), tm(4), tm(5, session=8), tm(6, session=8), ev(7), ev(8)]
    assert [[r.seq for r in g] for g in batch.groups(rows)] == [[1, 2], [3], [4], [5, 6], [7], [8]]
    many = [tm(s) for s in range(1, 2 * batch.MAX_REPORTS + 2)]
    assert [len(g) for g in batch.groups(many)] == [batch.MAX_REPORTS, batch.MAX_REPORTS, 1]


# -- the payload -----------------------------------------------------------------------------


def test_a_lone_report_and_an_event_are_version_1_as_before() -> None:
    one = json.loads(batch.encode(WHO, [tm(4)], {4: True}, compress=True))
    assert one == {"v": 1, "site": SITE, "session": 7, "seq": 4, "time": NOW - 100, "ca": 4,
                   "hist": True}
    jsonschema.validate(one, SINGLE)
    event = json.loads(batch.encode(WHO, [ev(5)], {}, compress=True))
    jsonschema.validate(event, EVENT_SCHEMA)


def full(seq: int) -> Message:
    return tm(seq, NOW - 300 + seq, f=True, cpu=12, mem=42, dsk=27, upt=86400 + seq, ld=0.4,
              rx={"br-lan": 180000, "eth0": 3210000}, tx={"br-lan": 3150000, "eth0": 210000},
              ul=1, lat=612, cc=9, ca=7, li=3, fv=1, sd=0, hr=0.75, bs=0,
              sv={"online": 2, "offline": 1}, qf=4, bl=0, rc=0)


def test_a_batch_is_version_2_compressed_when_smaller_and_unpacks_to_version_1_reports() -> None:
    group = [full(1), tm(2, NOW - 200), tm(3, NOW - 100, cpu=30)]
    raw = batch.encode(WHO, group, {2: True}, compress=False)
    body = json.loads(raw)
    jsonschema.validate(body, BATCH)
    assert (body["v"], body["session"], [r["seq"] for r in body["reports"]]) == (2, 7, [1, 2, 3])
    assert body["reports"][1] == {"seq": 2, "time": round(NOW - 200), "ca": 2, "hist": True}
    packed = batch.encode(WHO, group, {2: True}, compress=True)
    assert packed[:1] != b"{" and len(packed) < len(raw) and zlib.decompress(packed) == raw
    for wire in (raw, packed):
        reports = unpack(wire, SITE, "telemetry")
        assert [r["seq"] for r in reports] == [1, 2, 3]
        for r in reports:  # what a consumer gets is a valid version 1 report
            jsonschema.validate(r, SINGLE)
        assert reports[2] == {"v": 1, "site": SITE, "session": 7, "seq": 3,
                              "time": round(NOW - 100), "cpu": 30}
    tiny = [tm(1), tm(2)]  # never larger compressed than not
    assert len(batch.encode(WHO, tiny, {}, True)) <= len(batch.encode(WHO, tiny, {}, False))


def test_the_schema_of_a_batchs_report_is_the_single_reports_without_the_envelope() -> None:
    item = BATCH["properties"]["reports"]["items"]["properties"]
    assert set(item) == set(SINGLE["properties"]) - {"v", "site", "session"}
    assert {k: v for k, v in item.items() if k != "time"} == \
        {k: v for k, v in SINGLE["properties"].items() if k not in ("v", "site", "session", "time")}


@pytest.mark.parametrize(("payload", "problem"), [
    (zlib.compress(b"{" + b" " * (2 * 1024 * 1024) + b"}"), "larger than"),  # a zip bomb
    (b"\x78\x9c garbage", "neither JSON nor zlib"),
    (zlib.compress(b'{"v":2,"site":"s1","session":1,"reports":[]}')[:-6], "cut short"),
    (b'{"v":2,"site":"other","session":1,"reports":[{"seq":1,"time":1}]}', "names site"),
    (b'{"v":2,"site":"s1","session":1,"reports":{"seq":1}}', "'reports' is not a list"),
    (b'{"v":2,"site":"s1","session":1,"reports":[{"seq":1,"time":1,"site":"s2"}]}', "envelope"),
    (b'{"v":2,"site":"s1","session":1,"reports":[],"x":1}', "unknown key"),
    (b'{"v":2,"site":"s1","session":"1","reports":[]}', "'session'"),
    (b'{"v":3,"site":"s1","session":1,"seq":1,"time":1}', "payload version 3"),
])
def test_unreadable_batches_are_rejected_with_a_reason(payload: bytes, problem: str) -> None:
    with pytest.raises(Rejected, match=problem):
        unpack(payload, SITE, "telemetry")


def test_a_batch_is_only_telemetry() -> None:
    body = b'{"v":2,"site":"s1","session":1,"reports":[{"seq":1,"time":1}]}'
    assert len(unpack(body, SITE, "telemetry")) == 1  # positive control
    with pytest.raises(Rejected, match="payload version 2"):
        unpack(body, SITE, "event")


def test_the_fleet_table_dedupes_each_report_of_a_batch() -> None:
    table = FleetTable()
    first = batch.encode(WHO, [tm(1, cc=5), tm(2, cc=6)], {}, compress=False)
    table.apply(TELEMETRY, first, False, 10.0)
    row = table.sites[SITE]
    assert (row.seq, row.clients, row.duplicates) == (2, 6, 0)
    table.apply(TELEMETRY, first, False, 11.0)  # a QoS 1 copy after a reconnect
    assert (row.seq, row.clients, row.duplicates) == (2, 6, 2)
    # a batch overlapping what arrived: the new report counts, the old one is a duplicate
    table.apply(TELEMETRY, batch.encode(WHO, [tm(2, cc=6), tm(3, cc=9)], {}, True), False, 12.0)
    assert (row.seq, row.clients, row.duplicates) == (3, 9, 3)


# -- the service: reports wait for the send interval, events do not ----------------------------


async def test_reports_wait_for_their_batch_and_an_event_takes_them_along_in_order(
        tmp_path: Path) -> None:
    worker = DatabaseWorker()
    box = TelemetryOutbox(tmp_path / "telemetry.db")
    broker, clock, gateway = FakeBroker(), FakeClock(), Gateway()
    bus = EventBus(clock)
    go = asyncio.Event()

    async def sleep(delay: float) -> None:
        if delay == 60:  # a sample interval: one per step of the test (a batch's wait is never
            # 60 s here: the reports are 60 s apart and the send interval is 270 s)
            await go.wait()
            go.clear()
            clock.advance(60)
        else:  # the batch's wait and the rest: the test's clock decides, not this
            await asyncio.sleep(0.01)

    tel = Telemetry(enabled=True, broker="mqtt://broker.example", site_id=SITE, start_delay_max=0,
                    status_interval=0, telemetry_interval=60, telemetry_sample_interval=60,
                    telemetry_full_every=1, telemetry_send_interval=270)
    from gateway.telemetry.service import TelemetryService
    svc = TelemetryService(lambda: tel, AsyncTelemetryOutbox(box, worker), broker.connect,
                           Events(bus), lambda: "0123456789ab", "9.9.9", clock,
                           rng=random.Random(1), sleep=sleep, readings=gateway.readings)

    def sent() -> list[tuple[str, list[dict[str, Any]]]]:
        return [(p.topic, unpack(p.payload, SITE, p.topic.rsplit("/", 1)[1]))
                for p in broker.published if p.topic in (EVENT, TELEMETRY)]

    async def reports(n: int) -> None:
        for _ in range(n):
            calls = gateway.calls
            go.set()
            await until(lambda: gateway.calls == calls + 1, "a sample")  # noqa: B023

    await svc.start()
    try:
        await until(lambda: gateway.calls == 1 and svc.connected, "started")
        await reports(3)
        await until(lambda: box.count() == 3, "three reports queued")
        assert sent() == []  # waiting for their batch
        bus.publish(ServiceHealthChanged("dukcapil", "online"))
        await until(lambda: len(sent()) == 2, "the batch, then the event")
        (t1, batched), (t2, event) = sent()
        assert (t1, [r["seq"] for r in batched]) == (TELEMETRY, [1, 2, 3])
        assert (t2, event[0]["seq"]) == (EVENT, 4)
        assert not any(r.get("hist") for r in batched)  # waiting for a batch is not history
        await until(lambda: box.count() == 0, "one PUBACK removed all three")

        await reports(5)  # the oldest has waited 240 s of its 270
        await until(lambda: box.count() == 5, "five reports queued")
        assert len(sent()) == 2
        await reports(1)  # the clock passes 270 s: the batch goes
        await until(lambda: len(sent()) == 3, "the second batch")
        # the sixth report may or may not be made before the batch leaves, by a hair
        assert [r["seq"] for r in sent()[2][1]] in ([5, 6, 7, 8, 9], [5, 6, 7, 8, 9, 10])
    finally:
        await svc.stop()
        box.close()
        worker.shutdown()


def test_the_docs_batch_example_is_valid_and_unpacks_to_valid_reports() -> None:
    import re

    text = (SCHEMAS.parent / "mqtt.md").read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", text, re.S)]
    batches = [b for b in blocks if b.get("v") == batch.BATCH_VERSION]
    assert len(batches) == 1
    jsonschema.validate(batches[0], BATCH)
    raw = json.dumps(batches[0], separators=(",", ":")).encode()
    assert f"({len(raw)} bytes of\nJSON, {len(zlib.compress(raw, batch.LEVEL))} compressed" in text
    reports = unpack(raw, batches[0]["site"], "telemetry")
    assert [r["seq"] for r in reports] == [1207, 1208, 1209, 1210]
    for r in reports:
        jsonschema.validate(r, SINGLE)
