"""MQTT 3.1.1: the gateway's link forced to 3.1.1, and "auto" falling back to it, against a
real Mosquitto on loopback (no root needed).

- ``protocol = "3.1.1"`` over TLS with a device certificate: the status goes online, a
  telemetry report arrives, a signed command is answered on ``cmd/res`` (3.1.1 carries no
  response topic: the operator's ``fleet send`` matches the answer by its id), and after
  kill -9 of the gateway process the broker publishes its Will (offline); a clean stop
  publishes the offline status itself (3.1.1 discards the Will at a DISCONNECT).
- ``protocol = "auto"`` through :class:`Stub311`, a broker that refuses MQTT 5 (a 3.1.1
  CONNACK with return code 1, or a plain close) and relays 3.1.1 to Mosquitto: the gateway
  falls back, works, and after a broker restart connects with 3.1.1 at once (remembered).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config.telemetry import Telemetry
from gateway.fleet.cli import BrokerAccess, exchange
from gateway.fleet.table import unpack
from gateway.telemetry import commands as c
from gateway.telemetry.topics import Topics
from tests.integration.mosquitto import Broker, Consumer, Received
from tests.integration.mqtt311_stub import Refusal, Stub311
from tests.integration.test_mqtt_link import gateway, tls_settings

pytestmark = [pytest.mark.integration]

HERE = Path(__file__).resolve().parent
SCHEMAS = HERE.parents[1] / "docs" / "schemas"
SCHEMA = {leaf: json.loads((SCHEMAS / f"{name}.schema.json").read_text())
          for leaf, name in (("status", "status"), ("telemetry", "telemetry"), ("event", "event"),
                             ("cmd/res", "command-response"))}


def leaf(m: Received, site: str) -> str:
    return m.topic.removeprefix(f"desanet/v1/{site}/")


def valid(m: Received, site: str) -> list[dict[str, Any]]:
    """The message's payload, checked against its schema, as the consumers read it."""
    kind = leaf(m, site)
    if kind == "cmd/res":
        jsonschema.validate(m.json, SCHEMA[kind])
        return [m.json]
    if kind == "telemetry" and m.payload[:1] != b"{":
        return unpack(m.payload, site, kind)  # compressed: the schema is of what it unpacks to
    jsonschema.validate(m.json, SCHEMA[kind])
    return unpack(m.payload, site, kind)


def wait(consumer: Consumer, site: str, kind: str, what: str, after: int = 0,
         match: Callable[[dict[str, Any]], bool] = lambda body: True) -> dict[str, Any]:
    found = consumer.wait_for(lambda m: leaf(m, site) == kind and any(map(match, valid(m, site))),
                              20, what, after)
    return valid(found, site)[0]


@contextmanager
def gateway_process(tel: dict[str, Any], state: Path) -> Iterator[subprocess.Popen[str]]:
    state.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, str(HERE / "mqtt_gateway.py"), json.dumps(tel),
                             str(state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started", \
            proc.stderr.read() if proc.stderr else ""
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for fh in (proc.stdout, proc.stderr):
            if fh is not None:
                fh.close()


def settings(broker_url: str, site: str, key: Ed25519PrivateKey, **over: Any) -> dict[str, Any]:
    tel: dict[str, Any] = {
        "enabled": True, "broker": broker_url, "site_id": site, "start_delay_max": 0,
        "reconnect_min": 1, "reconnect_max": 2, "keepalive": 30,
        "telemetry_interval": 10, "telemetry_sample_interval": 5, "telemetry_full_every": 2,
        "telemetry_send_interval": 0,
        "command_keys": [c.public_key_text(key.public_key())]}
    tel.update(over)
    Telemetry(**tel)  # a valid section
    return tel


def command(broker: Broker, site: str, key: Ed25519PrivateKey, cid: str) -> dict[str, Any]:
    now = int(time.time())
    payload = c.sign(c.body_json(cid, site, "status", {}, now - 5, now + 600), key)
    answer = exchange(BrokerAccess(broker.url), Topics("desanet/v1", site), payload, 20.0)
    assert answer is not None, f"no answer to {cid}{broker.tail()}"
    return answer


def test_forced_311_over_tls_status_telemetry_command_and_the_will_on_kill(
        mosquitto: Broker, tmp_path: Path) -> None:
    site, key = "v311", Ed25519PrivateKey.generate()
    assert mosquitto.pki is not None
    tel = settings(f"mqtts://{mosquitto.host}:{mosquitto.tls_port}", site, key, protocol="3.1.1",
                   ca_file=str(mosquitto.pki.ca), cert_file=str(mosquitto.pki.device_cert),
                   key_file=str(mosquitto.pki.device_key))
    # the test PKI's device certificate is CN "s1": the broker takes the CN as the user name,
    # and this broker has no ACL, so the site id may differ
    with mosquitto.consumer("desanet/v1/#") as consumer, \
            gateway_process(tel, tmp_path / "gw") as proc:
        online = wait(consumer, site, "status", "online over 3.1.1", match=lambda b: b["online"])
        assert online["session"] == 1
        report = wait(consumer, site, "telemetry", "a telemetry report")
        assert report["seq"] >= 1 and report["ca"] == 3
        answer = command(mosquitto, site, key, "cmd-311-status-1")
        assert (answer["ok"], answer["id"]) == (True, "cmd-311-status-1"), answer
        res = consumer.wait_for(lambda m: leaf(m, site) == "cmd/res", 10, "the answer on cmd/res")
        assert res.topic == f"desanet/v1/{site}/cmd/res"  # no response topic in 3.1.1
        valid(res, site)
        seen = len(consumer.messages())
        os.kill(proc.pid, signal.SIGKILL)
        will = wait(consumer, site, "status", "the Will after kill -9", after=seen,
                    match=lambda b: not b["online"])
        assert will["session"] == 1


async def test_forced_311_clean_stop_publishes_offline(mosquitto: Broker, tmp_path: Path) -> None:
    site = "s1"
    with mosquitto.consumer("desanet/v1/#") as consumer:
        async with gateway(tmp_path, tls_settings(mosquitto, protocol="3.1.1")) as (svc, _):
            await asyncio.to_thread(wait, consumer, site, "status", "online",
                                    match=lambda b: b["online"])
            assert svc.status_json()["protocol"] == "3.1.1"  # what `desanet status` shows
            seen = len(consumer.messages())
        stopped = await asyncio.to_thread(wait, consumer, site, "status", "offline at a clean stop",
                                          seen, lambda b: not b["online"])
    assert stopped["session"] == 1


@pytest.mark.parametrize("refusal", ["connack", "close"])
def test_auto_falls_back_to_311_when_the_broker_refuses_5_and_remembers_it(
        mosquitto: Broker, tmp_path: Path, refusal: Refusal) -> None:
    site, key = f"auto-{refusal}", Ed25519PrivateKey.generate()
    with Stub311(mosquitto.port, refusal) as stub, mosquitto.consumer("desanet/v1/#") as consumer:
        tel = settings(f"mqtt://127.0.0.1:{stub.port}", site, key)
        assert Telemetry(**tel).protocol == "auto"  # the default
        with gateway_process(tel, tmp_path / "gw"):
            wait(consumer, site, "status", "online after the fallback", match=lambda b: b["online"])
            assert stub.levels[:2] == [5, 4]  # MQTT 5 refused, then 3.1.1
            wait(consumer, site, "telemetry", "a telemetry report")
            answer = command(mosquitto, site, key, f"cmd-auto-{refusal}")
            assert answer["ok"] is True, answer
            seen = len(consumer.messages())
            mosquitto.stop()
            mosquitto.start()
            wait(consumer, site, "status", "online again after a broker restart", seen,
                 lambda b: b["online"])
            assert stub.levels.count(5) == 1 and stub.levels[-1] == 4, stub.levels


@pytest.mark.parametrize("refusal", ["connack", "close"])
async def test_forced_5_is_refused_by_a_311_broker_and_auto_is_not(
        mosquitto: Broker, refusal: Refusal) -> None:
    from gateway.telemetry.mqtt import LinkSettings, Negotiator, ProtocolRefused

    with Stub311(mosquitto.port, refusal) as stub:
        base = LinkSettings(host="127.0.0.1", port=stub.port, client_id=f"desanet-n-{refusal}",
                            keepalive=60, will_topic="desanet/v1/n/status", will_payload=b"{}")
        negotiate = Negotiator(timeout=10)
        with pytest.raises(ProtocolRefused):
            await negotiate(replace(base, protocol="5"), lambda mid, ok: None, lambda reason: None)
        assert negotiate.chosen == {}
        link = await negotiate(base, lambda mid, ok: None, lambda reason: None)
        try:
            assert getattr(link, "protocol", None) == "3.1.1"
            assert negotiate.chosen == {("127.0.0.1", stub.port): "3.1.1"}
        finally:
            await link.close(will=False)
    assert stub.levels == [5, 5, 4]
