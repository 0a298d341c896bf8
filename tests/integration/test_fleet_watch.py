"""`desanet fleet watch` against a real Mosquitto on loopback (no root needed).

The broker (tests/integration/mosquitto.py, fixture ``mosquitto``) has a plain
listener and a TLS one that takes only certificates of its test CA. Gateways
are stood in for by publishing their payloads (the lab test,
tests/integration/test_fleet_lab.py, runs the real daemon).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.integration.mosquitto import Broker, free_port

pytestmark = [pytest.mark.integration]

SITES = 300  # more than Mosquitto's 20 in-flight messages: the end marker must still hold


def watch(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "fleet", "watch", *args],
                          capture_output=True, text=True, timeout=timeout)


def status(site: str, online: bool = True, session: int = 1) -> bytes:
    return json.dumps({"v": 1, "online": online, "site": site, "version": "0.1.0",
                       "config_version": "3f9a1c07b2de", "boot_time": 1764662400,
                       "session": session}).encode()


@contextmanager
def publisher(broker: Broker) -> Iterator[paho.Client]:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="stand-in",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


def publish(client: paho.Client, topic: str, payload: bytes, retain: bool = False) -> None:
    info = client.publish(topic, payload, qos=1, retain=retain)
    info.wait_for_publish(10)
    assert info.is_published()


def test_once_json_has_every_retained_status(mosquitto: Broker) -> None:
    with publisher(mosquitto) as pub:
        for i in range(SITES):
            publish(pub, f"desanet/v1/s{i:03d}/status", status(f"s{i:03d}", online=i % 3 != 0),
                    retain=True)
        publish(pub, "desanet/v1/s000/cmd/req", b"not for the watch", retain=True)
        publish(pub, "other/v1/x/status", status("x"), retain=True)
    done = watch("--broker", mosquitto.url, "--once", "--json", "--timeout", "20")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["complete"] is True and doc["connected"] is True
    assert [s["site"] for s in doc["sites"]] == [f"s{i:03d}" for i in range(SITES)]
    assert doc["online"] == SITES - 100 and doc["offline"] == 100
    assert doc["ignored"] == 0  # cmd/req and other prefixes are not even subscribed to


def test_tls_with_a_client_certificate_and_the_text_table(mosquitto: Broker) -> None:
    assert mosquitto.pki is not None and mosquitto.tls_port is not None
    with publisher(mosquitto) as pub:
        publish(pub, "desanet/v1/desa-a/status", status("desa-a"), retain=True)
    pki = mosquitto.pki
    tls = ["--broker", f"mqtts://{mosquitto.host}:{mosquitto.tls_port}", "--ca", str(pki.ca),
           "--cert", str(pki.device_cert), "--key", str(pki.device_key)]
    done = watch(*tls, "--once")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "1 gateway(s): 1 online, 0 offline" in lines[1]
    assert lines[4].split()[:4] == ["desa-a", "online", "0.1.0", "1"]
    # Negative: without the client certificate the broker refuses the handshake.
    refused = watch(*tls[:4], "--once")
    assert refused.returncode == 1
    # TLS 1.3 ends the handshake before the broker checks the certificate: either message
    assert re.search("cannot connect to mqtts://|closed the connection before accepting it",
                     refused.stderr), refused.stderr


def test_nothing_listening_is_a_clear_error() -> None:
    done = watch("--broker", f"mqtt://127.0.0.1:{free_port()}", "--once", "--timeout", "5")
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot connect to mqtt://127.0.0.1:")


def _next_doc(out: IO[str], deadline: float) -> dict[str, Any]:
    line = out.readline()
    assert line, "the watch ended"
    assert time.monotonic() < deadline, "timed out"
    doc: dict[str, Any] = json.loads(line)
    return doc


def test_live_json_follows_status_telemetry_and_the_will(mosquitto: Broker) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "fleet", "watch", "--broker",
                             mosquitto.url, "--json", "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 30
        while not _next_doc(proc.stdout, deadline)["complete"]:
            pass
        with publisher(mosquitto) as pub:
            publish(pub, "desanet/v1/live/status", status("live", session=7), retain=True)
            tel = {"v": 1, "site": "live", "session": 7, "seq": 1, "time": time.time(), "f": True,
                   "cc": 4, "ca": 2, "ul": 1, "lat": 700, "qf": 1, "bl": 0}
            publish(pub, "desanet/v1/live/telemetry", json.dumps(tel).encode())
            publish(pub, "desanet/v1/live/status", status("live", online=False, session=7),
                    retain=True)
        while True:
            doc = _next_doc(proc.stdout, deadline)
            row = next((s for s in doc["sites"] if s["site"] == "live"), None)
            if row is not None and row["online"] is False:
                break
        assert (row["clients"], row["authorized"], row["uplink"], row["queued_forms"],
                row["backlog"], row["session"]) == (4, 2, "up", 1, 0, 7)
        assert row["last_seen"] is not None
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
