"""The cert.install command: a renewed certificate for the gateway's own key is installed,
kept once connected, and rolled back when no connection comes; anything else is refused
and leaves the certificate alone."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.clock import FakeClock
from gateway.config.telemetry import Telemetry
from gateway.telemetry import commands as c
from gateway.telemetry import payloads
from gateway.telemetry.dispatch import Dispatcher, Reply
from gateway.telemetry.mqtt import Incoming
from gateway.telemetry.seen import SeenCommands
from gateway.telemetry.topics import Topics
from provisioning import ca as fleetca

SITE = "s1"
TOPICS = Topics("desanet/v1", SITE)
KEY = Ed25519PrivateKey.generate()
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
REQUEST = json.loads((SCHEMAS / "command-request.schema.json").read_text())
RESPONSE = json.loads((SCHEMAS / "command-response.schema.json").read_text())


class Box:
    def __init__(self, tmp: Path, trial: float = 600.0, with_settings: bool = True,
                 cert_clock: Callable[[], float] = time.monotonic) -> None:
        self.ca = fleetca.init_ca(tmp / "ca", "test fleet CA")
        self.key = fleetca.new_device_key()
        mqtt = tmp / "mqtt"
        mqtt.mkdir()
        self.cert_file, key_file = mqtt / "device.crt", mqtt / "device.key"
        self.old = fleetca.cert_pem(fleetca.issue_certificate(self.ca, SITE, self.key.public_key()))
        self.cert_file.write_bytes(self.old)
        key_file.write_bytes(fleetca.key_pem(self.key))
        (mqtt / "ca.crt").write_bytes(fleetca.cert_pem(self.ca.cert))
        self.tel = Telemetry(enabled=True, broker="mqtts://b.example:8883", site_id=SITE,
                             ca_file=str(mqtt / "ca.crt"), cert_file=str(self.cert_file),
                             key_file=str(key_file), command_keys=[c.public_key_text(KEY.public_key())])
        self.clock = FakeClock(int(fleetca.now().timestamp()))
        self.dispatcher = Dispatcher(object(), SeenCommands(tmp / "seen.json"),  # type: ignore[arg-type]
                                     lambda: self.tel.command_keys, lambda: TOPICS, self.clock,
                                     lambda e: None, lambda: None,
                                     telemetry=(lambda: self.tel) if with_settings else None,
                                     cert_trial=trial, cert_clock=cert_clock)
        self.n = 0

    def renewed(self, site: str = SITE, key: Any = None, ca: fleetca.Ca | None = None) -> str:
        public = (key or self.key).public_key()
        return fleetca.cert_pem(fleetca.issue_certificate(ca or self.ca, site, public)).decode()

    async def send(self, pem: str) -> Reply:
        self.n += 1
        now = self.clock.now()
        body = c.body_json(f"cert-{self.n:04d}", SITE, "cert.install", {"cert": pem}, now - 1, now + 600)
        if self.n == 1:  # what the operator sends matches the published request schema
            jsonschema.validate(json.loads(body), {"$defs": REQUEST["$defs"], "$ref": "#/$defs/body"})
        reply = await self.dispatcher.handle(Incoming(TOPICS.cmd_req, c.sign(body, KEY), None, None))
        jsonschema.validate(json.loads(payloads.encode(reply.body)), RESPONSE)
        return reply


async def test_a_renewed_certificate_is_installed_and_kept_once_connected(tmp_path: Path) -> None:
    box = Box(tmp_path)
    new = box.renewed()
    reply = await box.send(new)
    assert reply.body["ok"] is True, reply.body
    assert reply.body["result"]["days_left"] >= 700
    assert box.cert_file.read_text() == new
    assert (tmp_path / "mqtt" / "device.crt.prev").read_bytes() == box.old
    assert reply.after is not None and reply.after.reconnect and reply.after.on_connected
    await reply.after.on_connected()
    assert not (tmp_path / "mqtt" / "device.crt.prev").exists()
    assert box.cert_file.read_text() == new
    assert not box.dispatcher.cert_trials


async def test_without_a_connection_the_previous_certificate_comes_back(tmp_path: Path) -> None:
    box = Box(tmp_path, trial=0.01)
    reply = await box.send(box.renewed())
    assert reply.body["ok"] is True
    trials = set(box.dispatcher.cert_trials)  # the trial may be over already
    if trials:
        await asyncio.wait_for(asyncio.gather(*trials), 10)
    assert not box.dispatcher.cert_trials
    assert box.cert_file.read_bytes() == box.old
    assert not (tmp_path / "mqtt" / "device.crt.prev").exists()
    assert not (tmp_path / "mqtt" / "device.crt.trial").exists()
    assert reply.after is not None and reply.after.on_connected is not None
    await reply.after.on_connected()  # a later connection, with the old one: nothing to keep
    assert box.cert_file.read_bytes() == box.old


@pytest.mark.parametrize(("make", "reason", "detail"), [
    (lambda box, tmp: box.renewed(key=fleetca.new_device_key()), "failed", "key_mismatch"),
    (lambda box, tmp: box.renewed(ca=fleetca.init_ca(tmp / "other", "test fleet CA")),
     "failed", "untrusted"),
    (lambda box, tmp: box.renewed(site="s2"), "failed", "other_site"),
    (lambda box, tmp: "not a certificate", "malformed", None),
    (lambda box, tmp: box.renewed() + box.renewed(), "malformed", None),
])
async def test_a_wrong_certificate_is_refused_and_changes_nothing(tmp_path: Path, make: Any,
                                                                  reason: str, detail: str | None) -> None:
    box = Box(tmp_path)
    reply = await box.send(make(box, tmp_path))
    assert reply.body["ok"] is False and reply.body["reason"] == reason, reply.body
    if detail:
        assert (reply.body["kind"], reply.body["detail"]) == ("refused", detail)
    else:
        assert reply.body["field"] == "args.cert"
    assert box.cert_file.read_bytes() == box.old
    assert not (tmp_path / "mqtt" / "device.crt.prev").exists()
    assert reply.after is None and not box.dispatcher.cert_trials
    # positive control: the right certificate on the same box goes in
    assert (await box.send(box.renewed())).body["ok"] is True


async def test_a_gateway_without_settings_refuses(tmp_path: Path) -> None:
    box = Box(tmp_path, with_settings=False)
    reply = await box.send(box.renewed())
    assert (reply.body["ok"], reply.body.get("detail")) == (False, "unavailable")
    assert box.cert_file.read_bytes() == box.old
