"""The whole chain in the lab: `desanet lab up` runs the region's broker, the gateway reports
to it, `desanet fleet watch` shows it, and the broker's ACL holds a device to its own subtree.

The broker is the lab's own (lab/desanet_lab/broker.py: Mosquitto in the WAN namespace,
TLS with the lab's CA, ACLs as in production). MQTT clients run in the WAN namespace as
processes: `desanet fleet watch` through `ip netns exec`, and tests/integration/mqtt_probe.py
for a second gateway's certificate and the operator's.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from desanet_lab import LabInfo, LabSpec, lab_device_cert, lab_down, netns
from desanet_lab import plan as p
from tests.integration.conftest import (
    LAB_TOOLS,
    LabFactory,
    desanet_argv,
    desanet_json,
    require_root,
    require_tools,
    unique_prefix,
    wait_until,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS)]

PREFIX = unique_prefix("fl")
SITE = p.LAB_SITE_ID
OTHER = "desa-b"
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    return make_lab(LabSpec(prefix=PREFIX, clients=1, dhcp=False))


def lab_status() -> dict[str, Any]:
    done = subprocess.run([*desanet_argv(), "lab", "status", "--prefix", PREFIX, "--json"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def watch_once(lab: LabInfo, broker: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(["ip", "netns", "exec", lab.wan, *desanet_argv(), "fleet", "watch",
                           "--broker", broker["url"], "--ca", broker["ca"],
                           "--cert", broker["operator_cert"], "--key", broker["operator_key"],
                           "--once", "--json", "--timeout", "10"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def test_lab_status_names_the_broker_and_the_operator_files(lab: LabInfo) -> None:
    b = lab_status()["broker"]
    assert (b["address"], b["port"], b["host"], b["site_id"]) == (p.MQTT_V4, 8883, "mqtt.lab", SITE)
    assert b["running"] is True and b["namespace"] == lab.wan
    for key in ("ca", "operator_cert", "operator_key", "gateway_cert", "gateway_key"):
        assert Path(b[key]).is_file(), key
    assert Path(b["operator_key"]).stat().st_mode & 0o077 == 0  # a private key is private
    hint = next(c for c in lab_status()["try"] if "fleet watch" in c)
    assert f"--broker {b['url']} --ca {b['ca']} --cert {b['operator_cert']}" in hint
    acl = Path(b["acl"]).read_text()
    assert "pattern readwrite desanet/v1/%u/#" in acl


def test_the_gateway_reports_online_and_fleet_watch_shows_it(lab: LabInfo) -> None:
    b = lab_status()["broker"]

    def online_row() -> dict[str, Any] | None:
        doc = watch_once(lab, b)
        assert doc["complete"] is True
        return next((s for s in doc["sites"] if s["site"] == SITE and s["online"]), None)
    row = wait_until(online_row, 60, f"{SITE} online in `desanet fleet watch --once --json`",
                     interval=1.0)
    tel = desanet_json(lab.control_socket, "status")["telemetry"]
    assert tel["connected"] is True
    assert row["session"] == tel["session"]
    assert row["config_version"] == desanet_json(lab.control_socket, "status")["config"]["version"]


def test_a_signed_command_reaches_the_gateway_through_the_labs_broker(lab: LabInfo) -> None:
    b = lab_status()["broker"]
    hint = next(c for c in lab_status()["try"] if "fleet send" in c)
    assert f"--key {b['command_key']}" in hint and f"--key-file {b['operator_key']}" in hint
    wait_until(lambda: desanet_json(lab.control_socket, "status")["telemetry"]["connected"], 60,
               "the gateway connected to the broker")
    done = subprocess.run(["ip", "netns", "exec", lab.wan, *desanet_argv(), "fleet", "send", SITE,
                           "status", "--broker", b["url"], "--key", b["command_key"],
                           "--ca", b["ca"], "--cert", b["operator_cert"],
                           "--key-file", b["operator_key"], "--json", "--timeout", "20s"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    answer = json.loads(done.stdout)
    assert answer["result"]["ready"] is True, answer


def test_reboot_from_the_operator_restarts_the_lab_gateway_with_a_new_session(
        lab: LabInfo) -> None:
    """In the lab a reboot is the daemon stopped and started again (desanet_lab/reboot.py),
    never the machine: the operator sees the answer, then the gateway back, newly started."""
    b = lab_status()["broker"]
    wait_until(lambda: desanet_json(lab.control_socket, "status")["telemetry"]["connected"], 60,
               "the gateway connected to the broker")
    session = desanet_json(lab.control_socket, "status")["telemetry"]["session"]
    pidfile = Path(lab.state_dir) / "gateway.pid"
    old_pid = pidfile.read_text().strip()
    done = subprocess.run(["ip", "netns", "exec", lab.wan, *desanet_argv(), "fleet", "send", SITE,
                           "reboot", "--broker", b["url"], "--key", b["command_key"],
                           "--ca", b["ca"], "--cert", b["operator_cert"],
                           "--key-file", b["operator_key"], "--json", "--timeout", "20s"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    assert json.loads(done.stdout)["result"] == {"rebooting": True}

    def back() -> bool:
        if pidfile.read_text().strip() == old_pid:
            return False
        try:
            status = desanet_json(lab.control_socket, "status")
        except AssertionError:  # the control socket is not there yet
            return False
        return bool(status["ready"] and status["telemetry"]["session"] > session)
    wait_until(back, 90, "the gateway back after the reboot with a new session")
    assert not netns.pid_alive(int(old_pid))  # the old daemon is gone, not left beside


class Probe:
    """tests/integration/mqtt_probe.py in the lab's WAN with one certificate."""

    def __init__(self, lab: LabInfo, cert: Path, key: Path, out: Path) -> None:
        b = lab_status()["broker"]
        self.out = out
        out.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.wan, sys.executable, str(HERE / "mqtt_probe.py"),
             b["address"], str(b["port"]), b["ca"], str(cert), str(key), str(out)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.wait_for(lambda x: x.get("connected") == "Success", "the CONNACK")

    def lines(self) -> list[dict[str, Any]]:
        """The probe's records so far: whole lines only (it may be writing the last one)."""
        if not self.out.exists():
            return []
        whole = self.out.read_bytes().split(b"\n")[:-1]  # the last piece has no newline yet
        return [json.loads(line) for line in whole if line]

    def wait_for(self, match: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"the probe exited with {self.proc.returncode}: {err}")
            return next((x for x in self.lines() if match(x)), None)
        hit: dict[str, Any] = wait_until(found, 20, what, interval=0.05)
        return hit

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def received(self, topic: str) -> list[str]:
        return [x["payload"] for x in self.lines() if x.get("topic") == topic]

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def probes(lab: LabInfo, tmp_path: Path) -> Iterator[tuple[Probe, Probe]]:
    """(the operator, a second gateway ``desa-b`` with a certificate of the lab's CA)."""
    b = lab_status()["broker"]
    other = lab_device_cert(OTHER, prefix=PREFIX)
    op = Probe(lab, Path(b["operator_cert"]), Path(b["operator_key"]), tmp_path / "op.jsonl")
    try:
        dev = Probe(lab, other.cert, other.key, tmp_path / "b.jsonl")
        try:
            yield op, dev
        finally:
            dev.close()
    finally:
        op.close()


def topic(site: str, leaf: str) -> str:
    return f"{p.MQTT_PREFIX}/{site}/{leaf}"


def test_another_gateway_cannot_read_the_first_ones_commands(probes: tuple[Probe, Probe]) -> None:
    op, dev = probes
    mine, theirs = topic(OTHER, "cmd/req"), topic(SITE, "cmd/req")
    op.send(sub=[f"{p.MQTT_PREFIX}/#"])
    op.wait_for(lambda x: "suback" in x, "the operator's SUBACK")
    dev.send(sub=[theirs, mine])
    # Mosquitto grants the subscription and filters at delivery: what arrives is the test.
    dev.wait_for(lambda x: "suback" in x, "desa-b's SUBACK")
    # One publisher, one subscriber connection: the broker keeps the order, so once the
    # second command is in, the first would have been too.
    op.send(pub=theirs, payload="for desa-lab")
    op.send(pub=mine, payload="for desa-b")
    dev.wait_for(lambda x: x.get("topic") == mine, "desa-b's own command (positive control)")
    op.wait_for(lambda x: x.get("topic") == theirs, "the operator reading desa-lab's command")
    assert dev.received(mine) == ["for desa-b"]
    assert dev.received(theirs) == []


def test_another_gateway_cannot_publish_under_the_first_ones_subtree(
        probes: tuple[Probe, Probe]) -> None:
    op, dev = probes
    forged, own = topic(SITE, "event"), topic(OTHER, "event")
    op.send(sub=[f"{p.MQTT_PREFIX}/+/event"])
    op.wait_for(lambda x: "suback" in x, "the operator's SUBACK")
    dev.send(pub=forged, payload="forged by desa-b")
    dev.send(pub=own, payload="desa-b's own")
    op.wait_for(lambda x: x.get("topic") == own, "desa-b's own event (positive control)")
    assert op.received(own) == ["desa-b's own"]
    assert "forged by desa-b" not in op.received(forged)
    refused = dev.wait_for(lambda x: x.get("topic") == forged and "puback" in x, "the PUBACK")
    assert refused["puback"] == "Not authorized"


def test_lab_down_stops_the_broker_and_removes_its_files(lab: LabInfo) -> None:
    # Last in this module: the module's lab is gone afterwards (its teardown is idempotent).
    b = lab_status()["broker"]
    assert b["running"] and netns.pid_alive(b["pid"])
    lab_down(PREFIX)
    wait_until(lambda: not netns.pid_alive(b["pid"]), 10, "mosquitto to stop")
    assert not Path(b["config"]).parent.exists()
    assert not Path(b["ca_key"]).exists()
