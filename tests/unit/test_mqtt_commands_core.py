"""config.set, vouchers.create and reboot through the dispatcher into the real core (GatewayOps
on fakes, tests/unit/corekit.py): the arguments are checked like the control API checks them,
each command has its effect once, and what follows an answer (reconnect and confirm, reboot)
is handed to the transport rather than done before the answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.core.events import Event
from gateway.daemon.reboot import ENV, SystemReboot
from gateway.model import ClientView
from gateway.telemetry import commands as c
from gateway.telemetry import payloads, sealed
from gateway.telemetry.dispatch import Dispatcher, Reply
from gateway.telemetry.mqtt import Incoming
from gateway.telemetry.seen import SeenCommands
from gateway.telemetry.topics import Topics
from tests.unit.corekit import Core, build_core, edited

SITE = "s1"
TOPICS = Topics("desanet/v1", SITE)
KEY = Ed25519PrivateKey.generate()
OPERATOR = X25519PrivateKey.generate()
RECIPIENT = sealed.public_key_text(OPERATOR.public_key())
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
RESPONSE = json.loads((SCHEMAS / "command-response.schema.json").read_text())
REQUEST = json.loads((SCHEMAS / "command-request.schema.json").read_text())


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.core: Core = build_core(tmp)
        self.events: list[Event] = []
        self.seen_path = tmp / "commands.json"
        self.dispatcher = Dispatcher(self.core.ops, SeenCommands(self.seen_path),
                                     lambda: [c.public_key_text(KEY.public_key())],
                                     lambda: TOPICS, self.core.clock, self.events.append,
                                     lambda: None)

    def request(self, name: str, args: dict[str, Any], id: str, valid: bool | None) -> bytes:
        """``valid``: whether the documented form (the request schema) accepts it; None
        for what only the gateway can tell (a window's length in "2s")."""
        now = self.core.clock.now()
        body = c.body_json(id, SITE, name, args, now - 1, now + 600)
        if valid is not None:
            assert jsonschema.Draft202012Validator(
                {**REQUEST["$defs"]["body"], "$defs": REQUEST["$defs"]}
            ).is_valid(json.loads(body)) is valid, args
        return c.sign(body, KEY)

    async def send(self, name: str, args: dict[str, Any], id: str = "cmd-0001",
                   valid: bool | None = True) -> Reply:
        reply = await self.dispatcher.handle(Incoming(TOPICS.cmd_req,
                                                      self.request(name, args, id, valid)))
        jsonschema.validate(json.loads(payloads.encode(reply.body)), RESPONSE)
        return reply


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


# -- vouchers.create -----------------------------------------------------------------------------


@pytest.mark.parametrize("args,field", [
    ({"count": 2, "duration": "1d"}, "args.recipient"),
    ({"count": 2, "duration": "1d", "recipient": "ed25519:AAAA"}, "args.recipient"),
    ({"count": "2", "duration": "1d", "recipient": RECIPIENT}, "args.count"),
    ({"count": 2, "recipient": RECIPIENT}, "args.duration"),
    ({"count": 2, "duration": "1d", "recipient": RECIPIENT, "codes": []}, "args.codes"),
])
async def test_vouchers_create_refuses_bad_arguments_naming_the_field(
        rig: Rig, args: dict[str, Any], field: str) -> None:
    reply = await rig.send("vouchers.create", args, valid=False)
    assert (reply.body["ok"], reply.body["reason"], reply.body["field"]) == \
        (False, c.MALFORMED, field), reply.body
    assert await rig.core.ops.vouchers() == []


async def test_vouchers_create_refuses_a_key_nothing_can_be_sealed_to(rig: Rig) -> None:
    # A low-order point (all zero) has the schema's form; sealing to it failed only after
    # the vouchers were made: a failed answer and a batch nobody has the codes of.
    args = {"count": 2, "duration": "1d", "recipient": "x25519:" + "A" * 43 + "="}
    reply = await rig.send("vouchers.create", args, valid=None)
    assert (reply.body["ok"], reply.body.get("field")) == (False, "args.recipient"), reply.body
    assert "low-order" in reply.body["error"]
    assert await rig.core.ops.vouchers() == []


async def test_vouchers_create_seals_the_codes_to_the_operator_only(rig: Rig) -> None:
    args = {"count": 3, "duration": "1d", "max_devices": 2, "name": "Posyandu Mei",
            "recipient": RECIPIENT}
    reply = await rig.send("vouchers.create", args, id="cmd-vouchers-1")
    result = reply.body["result"]
    assert (result["count"], result["duration"], result["max_devices"]) == (3, 86400, 2)
    made = await rig.core.ops.vouchers(result["batch"])
    codes = sorted(v.code for v in made)
    assert len(codes) == 3
    context = c.sealed_context(SITE, "cmd-vouchers-1", "vouchers.create")
    opened = json.loads(sealed.open_box(result["codes_sealed"], OPERATOR, context))
    assert sorted(opened["codes"]) == codes
    with pytest.raises(sealed.SealError):
        sealed.open_box(result["codes_sealed"], X25519PrivateKey.generate(), context)
    # the codes are nowhere in clear: the answer, the events (as published), the record
    published = [json.dumps(payloads.event_data(s.event)) for s in rig.core.events()]
    published += [json.dumps(payloads.event_data(e)) for e in rig.events]
    for text in [payloads.encode(reply.body).decode(), *published, rig.seen_path.read_text()]:
        assert not any(code in text for code in codes), text
    # and they are vouchers: one opens a session
    session = await rig.core.sessions.login_voucher(ClientView("10.42.0.120", "02:00:00:00:00:09",
                                                               None), opened["codes"][0])
    assert session.voucher == opened["codes"][0]


# -- config.set ----------------------------------------------------------------------------------


def _changed_text(rig: Rig) -> str:
    return edited(rig.core.config_path.read_text(), site={"village": "Desa Uji Baru"})


@pytest.mark.parametrize("args,field,schema", [
    ({}, "args.text", False),
    ({"text": 5}, "args.text", False),
    ({"text": "x", "confirm": None}, "args.confirm", False),
    ({"text": "x", "confirm": "2s"}, "args.confirm", None),
    ({"text": "x", "confirm": "3d"}, "args.confirm", None),
    ({"text": "x", "expected_version": "HEAD"}, "args.expected_version", False),
    ({"text": "x", "by": "someone"}, "args.by", False),
])
async def test_config_set_refuses_bad_arguments_naming_the_field(
        rig: Rig, args: dict[str, Any], field: str, schema: bool | None) -> None:
    before = rig.core.config.version
    reply = await rig.send("config.set", args, valid=schema)
    assert (reply.body["reason"], reply.body["field"]) == (c.MALFORMED, field), reply.body
    assert rig.core.config.version == before and reply.after is None


async def test_config_set_refuses_a_stale_edit_and_an_invalid_config_with_field_paths(
        rig: Rig) -> None:
    before = rig.core.config.version
    stale = await rig.send("config.set", {"text": _changed_text(rig),
                                          "expected_version": "0123456789ab"}, id="cmd-stale-1")
    assert (stale.body["reason"], stale.body["kind"]) == ("failed", "conflict"), stale.body
    assert before in stale.body["error"]
    bad = edited(rig.core.config_path.read_text(), dhcp={"range_start": "nonsense"})
    invalid = await rig.send("config.set", {"text": bad}, id="cmd-invalid-1")
    assert (invalid.body["reason"], invalid.body["kind"]) == ("failed", "invalid"), invalid.body
    assert any(p.startswith("dhcp.range_start") for p in invalid.body["problems"]), invalid.body
    assert rig.core.config.version == before and rig.core.config.trial is None
    assert stale.after is None and invalid.after is None


async def test_config_set_applies_a_trial_and_confirms_it_only_when_the_transport_says_up(
        rig: Rig) -> None:
    before = rig.core.config.version
    reply = await rig.send("config.set", {"text": _changed_text(rig), "confirm": "2m",
                                          "expected_version": before}, id="cmd-config-1")
    result = reply.body["result"]
    assert result["previous_version"] == before and result["version"] == rig.core.config.version
    assert result["confirm"] == "on_reconnect" and result["changes"] == ["site.village"]
    assert result["confirm_deadline"] == rig.core.clock.now() + 120
    trial = rig.core.config.trial
    assert trial is not None and trial.by == "mqtt:cmd-config-1"
    # nothing is confirmed by the answer itself: the transport reconnects first
    assert reply.after is not None and reply.after.reconnect and reply.after.on_connected
    again = await rig.send("config.set", {"text": _changed_text(rig)}, id="cmd-config-1")
    assert (again.body["reason"], again.body["first"]) == (c.REPLAYED, reply.body)
    assert again.after is None and rig.core.config.trial is trial  # one effect
    await reply.after.on_connected()
    assert rig.core.config.trial is None
    confirmed = [e for e in rig.core.events() if e.event.type == "config_confirmed"]
    assert [(s.event.to_json()["by"], s.event.to_json()["source"]) for s in confirmed] == \
        [("mqtt:cmd-config-1", "mqtt")]
    applied = [s.event for s in rig.core.events() if s.event.type == "config_applied"]
    assert applied[-1].to_json()["source"] == "mqtt"


async def test_a_late_confirm_after_a_rollback_changes_nothing(rig: Rig) -> None:
    before = rig.core.config.version
    reply = await rig.send("config.set", {"text": _changed_text(rig), "confirm": "5s"})
    rig.core.clock.advance(6)
    await rig.core.config.check_deadline()  # the reconcile loop's timer
    assert rig.core.config.version == before
    assert reply.after is not None and reply.after.on_connected is not None
    await reply.after.on_connected()  # the reconnect came only now, with the old config
    assert rig.core.config.version == before and rig.core.config.trial is None
    assert not [e for e in rig.core.events() if e.event.type == "config_confirmed"]


# -- reboot ------------------------------------------------------------------------------------


class FakeReboot:
    def __init__(self, why: str | None = None) -> None:
        self.why, self.calls = why, 0

    def unavailable(self) -> str | None:
        return self.why

    async def reboot(self) -> None:
        self.calls += 1


async def test_reboot_is_refused_when_nothing_can_reboot(rig: Rig) -> None:
    reply = await rig.send("reboot", {})
    assert (reply.body["reason"], reply.body["kind"], reply.body["detail"]) == \
        ("failed", "refused", "reboot_unavailable"), reply.body
    rig.core.ops.reboot_action = FakeReboot("not a systemd service")
    reply = await rig.send("reboot", {}, id="cmd-0002")
    assert "not a systemd service" in reply.body["error"] and reply.after is None


async def test_reboot_answers_first_and_leaves_the_reboot_to_after_the_answer(rig: Rig) -> None:
    action = FakeReboot()
    rig.core.ops.reboot_action = action
    bad = await rig.send("reboot", {"now": True}, valid=False)
    assert (bad.body["reason"], bad.body["field"]) == (c.MALFORMED, "args.now")
    reply = await rig.send("reboot", {}, id="cmd-reboot-1")
    assert reply.body["result"] == {"rebooting": True} and action.calls == 0
    assert reply.after is not None and reply.after.run is not None
    await reply.after.run()
    assert action.calls == 1
    again = await rig.send("reboot", {}, id="cmd-reboot-1")
    assert again.body["reason"] == c.REPLAYED and again.after is None


# -- the reboot adapter ------------------------------------------------------------------------


async def test_the_reboot_adapter_runs_the_lab_command_and_refuses_outside_systemd(
        tmp_path: Path) -> None:
    mark = tmp_path / "rebooted"
    lab = SystemReboot({ENV: f"touch {mark}"}, pid=100)
    assert lab.unavailable() is None
    await lab.reboot()
    assert mark.exists()
    outside = SystemReboot({"SYSTEMD_EXEC_PID": "99", "INVOCATION_ID": "x"}, pid=100)
    assert ENV in (outside.unavailable() or "") and outside.argv() is None
    inside = SystemReboot({"SYSTEMD_EXEC_PID": "100"}, pid=100)
    argv = inside.argv()
    assert argv is None or argv[-1] == "reboot"  # systemctl reboot, never run here
