"""Periodic telemetry against a real Mosquitto in the lab's WAN (time-compressed intervals).

The same set-up as tests/integration/test_mqtt.py (the lab's real daemon, the broker in
the WAN namespace, TLS with a device certificate, a persistent MQTT 5 consumer), in a lab
of its own: reports every 10 s would change what the backlog tests there count.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from desanet_lab import LabInfo, LabSpec
from desanet_lab import plan as p
from tests.integration.conftest import (
    LAB_TOOLS,
    LabFactory,
    desanet_json,
    ensure_gateway,
    require_root,
    require_tools,
    unique_prefix,
)
from tests.integration.mosquitto import Broker, Consumer, Pki, Received, free_port, make_pki

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS, "mosquitto")]

PREFIX = unique_prefix("mt")
SITE = "lab-mt"
STATUS = f"desanet/v1/{SITE}/status"
EVENT = f"desanet/v1/{SITE}/event"
TELEMETRY = f"desanet/v1/{SITE}/telemetry"
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
SCHEMA = {STATUS: json.loads((SCHEMAS / "status.schema.json").read_text()),
          EVENT: json.loads((SCHEMAS / "event.schema.json").read_text()),
          TELEMETRY: json.loads((SCHEMAS / "telemetry.schema.json").read_text())}
PORT, TLS_PORT = free_port(), free_port()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), host=p.WAN_ISP_V4, device=SITE)


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory, pki: Pki) -> LabInfo:
    telemetry = {"enabled": True, "broker": f"mqtts://{p.WAN_ISP_V4}:{TLS_PORT}", "site_id": SITE,
                 "ca_file": str(pki.ca), "cert_file": str(pki.device_cert),
                 "key_file": str(pki.device_key),
                 "start_delay_max": "0s", "reconnect_min": "1s", "reconnect_max": "2s",
                 "keepalive": "30s",
                 # time-compressed: a report every 10 s, every 2nd one full
                 "telemetry_interval": "10s", "telemetry_sample_interval": "5s",
                 "telemetry_full_every": 2,
                 # each report on its own (batches: tests/integration/test_mqtt_batch.py)
                 "telemetry_send_interval": "0s"}
    return make_lab(LabSpec(prefix=PREFIX, clients=1, dhcp=False, start_gateway=False,
                            extra={"telemetry": telemetry}))


@pytest.fixture(scope="module")
def broker(lab: LabInfo, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with Broker(tmp_path_factory.mktemp("broker"), PORT, host=p.WAN_ISP_V4, ns=lab.wan,
                tls_port=TLS_PORT, pki=pki) as b:
        yield b


@pytest.fixture(scope="module")
def consumer(broker: Broker) -> Iterator[Consumer]:
    with broker.consumer("desanet/v1/#") as c:
        yield c


def valid(m: Received) -> dict[str, Any]:
    body: dict[str, Any] = m.json
    jsonschema.validate(body, SCHEMA[m.topic])
    return body


def test_telemetry_reports_arrive_validate_and_share_the_events_sequence(
        lab: LabInfo, broker: Broker, consumer: Consumer) -> None:
    ensure_gateway(lab)
    online = consumer.wait_for(lambda m: m.topic == STATUS and valid(m)["online"], 30,
                               "the gateway online")
    session = online.json["session"]
    seen = len(consumer.messages())
    desanet_json(lab.control_socket, "vouchers", "create", "--count", "2", "--duration", "1h")

    def is_full(m: Received) -> bool:
        return m.topic == TELEMETRY and m.json.get("f") is True and m.json["session"] >= session
    full = valid(consumer.wait_for(is_full, 60, "a full telemetry report", after=seen))
    status = desanet_json(lab.control_socket, "status")
    assert full["site"] == SITE and full["session"] == status["telemetry"]["session"]
    for key in ("mem", "dsk", "upt", "ld", "ul", "ca", "li", "fv", "bl", "rc", "dr"):
        assert key in full, key
    assert set(full["rx"]) == {p.LAN_INTERFACE, p.WAN_INTERFACE}  # the config's two, no other
    later = len(consumer.messages())
    consumer.wait_for(lambda m: m.topic == TELEMETRY and m.json["seq"] > full["seq"], 60,
                      "the next telemetry report", after=later)
    # one sequence for events and reports: a seq is never used by two different messages
    by_seq: dict[int, dict[str, Any]] = {}
    for m in consumer.messages()[seen:]:
        if m.topic in (EVENT, TELEMETRY):
            body = valid(m)
            assert by_seq.setdefault(body["seq"], body) == body
    reports = [b for b in by_seq.values() if "type" not in b]
    assert len(reports) >= 2 and any(b.get("type") == "voucher_batch_created" for b in by_seq.values())
    wire = json.dumps(reports)
    client = lab.client(1)
    for secret in (status["lan_ip"], client.mac, client.mac.replace(":", ""), *client.addresses):
        assert secret not in wire
