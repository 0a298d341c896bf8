"""Telemetry batches against a real Mosquitto (docs/mqtt.md "Batches"; no root needed).

The gateway's telemetry link runs as a process (tests/integration/mqtt_gateway.py, time
sped up 10 times: a report every real second, a batch every 6): reports leave several to
a PUBLISH, compressed, each valid against its schema once unpacked; after kill -9 with
reports waiting for their batch, the restarted gateway sends them, marked historical,
and a consumer reading through ``unpack`` (the fleet table) applies every seq exactly
once, with none missing.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import jsonschema
import pytest

from gateway.fleet.table import FleetTable, unpack
from gateway.telemetry.batch import BATCH_VERSION
from tests.integration.mosquitto import Broker, Received
from tests.integration.test_mqtt_311 import gateway_process, settings, wait

pytestmark = [pytest.mark.integration]

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
SINGLE = json.loads((SCHEMAS / "telemetry.schema.json").read_text())
BATCH = json.loads((SCHEMAS / "telemetry-batch.schema.json").read_text())
SITE = "batched"
TELEMETRY = f"desanet/v1/{SITE}/telemetry"


def inflated(m: Received) -> dict[str, object]:
    """A telemetry payload as JSON (a compressed one inflated), checked against its schema."""
    import zlib

    body: dict[str, object] = json.loads(m.payload if m.payload[:1] == b"{"
                                         else zlib.decompress(m.payload))
    jsonschema.validate(body, BATCH if body["v"] == BATCH_VERSION else SINGLE)
    return body


def test_batches_compressed_and_exactly_once_across_a_kill(mosquitto: Broker, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    tel = settings(mosquitto.url, SITE, Ed25519PrivateKey.generate(), telemetry_send_interval=60)
    state = tmp_path / "gw"
    with mosquitto.consumer("desanet/v1/#") as consumer:
        with gateway_process(tel, state) as proc:
            wait(consumer, SITE, "status", "online", match=lambda b: b["online"])
            first = consumer.wait_for(lambda m: m.topic == TELEMETRY, 30, "the first batch")
            body = inflated(first)
            assert body["v"] == BATCH_VERSION and len(body["reports"]) >= 2  # type: ignore[arg-type]
            assert first.payload[:1] != b"{"  # full reports in it: compression pays
            # kill -9 while the next reports wait for their batch (6 s between batches)
            os.kill(proc.pid, signal.SIGKILL)
        with sqlite3.connect(state / "telemetry.db") as db:  # what waited at the kill
            held = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        seen = len(consumer.messages())
        with gateway_process(tel, state):
            wait(consumer, SITE, "status", "online again", after=seen,
                 match=lambda b: b["online"] and b["session"] == 2)
            if held:  # sent at once after the restart, marked historical
                consumer.wait_for(lambda m: m.topic == TELEMETRY and any(
                    r.get("hist") for r in unpack(m.payload, SITE, "telemetry")), 20,
                    "the reports held at the kill", seen)
            consumer.wait_for(lambda m: m.topic == TELEMETRY and any(
                r["session"] == 2 and not r.get("hist") for r in unpack(m.payload, SITE, "telemetry")),
                30, "a live report of the new session", seen)
    table, seqs = FleetTable(), []
    for m in consumer.messages():
        if m.topic == TELEMETRY:
            inflated(m)
            for report in unpack(m.payload, SITE, "telemetry"):
                jsonschema.validate(report, SINGLE)
                seqs.append(report["seq"])
        table.apply(m.topic, m.payload, m.retain, 0.0)
    row = table.sites[SITE]
    assert row.rejected == 0 and row.session == 2  # (offline again: killed at the end)
    applied = sorted(set(seqs))
    assert applied == list(range(1, row.seq + 1))  # none missing
    assert row.duplicates == len(seqs) - len(applied)  # every copy dropped, once each
