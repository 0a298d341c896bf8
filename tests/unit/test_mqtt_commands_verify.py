"""Signed commands: every refusal of gateway/telemetry/commands.py, and the positive control."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.telemetry import commands as c

NOW = 1_800_000_000
SITE = "jabar-sukamaju"
OPERATOR = Ed25519PrivateKey.generate()
STRANGER = Ed25519PrivateKey.generate()
KEYS = [Ed25519PrivateKey.generate().public_key(), OPERATOR.public_key()]


def body(**over: object) -> str:
    data: dict[str, object] = {"v": 1, "id": "cmd-00000001", "site": SITE, "issued": NOW - 10,
                               "expires": NOW + 600, "name": "deauth",
                               "args": {"mac": "02:00:00:00:00:01"}}
    data.update(over)
    return json.dumps({k: v for k, v in data.items() if v is not DROP})


DROP = object()


def signed(text: str, key: Ed25519PrivateKey = OPERATOR) -> bytes:
    return c.sign(text, key)


def raw(outer: object) -> bytes:
    return json.dumps(outer).encode()


def test_a_signed_command_for_this_site_within_its_validity_is_accepted() -> None:
    cmd = c.verify(signed(body()), KEYS, SITE, NOW)
    assert cmd == c.Command("cmd-00000001", SITE, NOW - 10, NOW + 600, "deauth",
                            {"mac": "02:00:00:00:00:01"})


@pytest.mark.parametrize("issued,expires,now", [
    (NOW + c.CLOCK_SKEW, NOW + 600, NOW),          # issued ahead, within the skew
    (NOW - 600, NOW - c.CLOCK_SKEW, NOW),          # expired, within the skew
])
def test_clock_skew_is_allowed_at_both_ends(issued: int, expires: int, now: int) -> None:
    assert c.verify(signed(body(issued=issued, expires=expires)), KEYS, SITE, now).id


Case = tuple[str, Callable[[], bytes], str, str | None]
CASES: list[Case] = [
    ("not JSON", lambda: b"{nope", c.MALFORMED, "body"),
    ("not an object", lambda: b"[1]", c.MALFORMED, "body"),
    ("too big", lambda: b" " * (c.MAX_REQUEST + 1), c.MALFORMED, "body"),
    ("body not a string", lambda: raw({"v": 1, "body": {"id": "x"}, "sig": "AA=="}), c.MALFORMED,
     "body"),
    ("no sig", lambda: raw({"v": 1, "body": body()}), c.UNSIGNED, "sig"),
    ("empty sig", lambda: raw({"v": 1, "body": body(), "sig": ""}), c.UNSIGNED, "sig"),
    ("sig not base64", lambda: raw({"v": 1, "body": body(), "sig": "@@@"}), c.MALFORMED, "sig"),
    ("sig too short", lambda: raw({"v": 1, "body": body(), "sig": "AAAA"}), c.MALFORMED, "sig"),
    ("unknown key", lambda: signed(body(), STRANGER), c.BAD_SIGNATURE, "sig"),
    ("body changed after signing", lambda: raw({**json.loads(signed(body())),
                                                "body": body(name="status")}),
     c.BAD_SIGNATURE, "sig"),
    ("signature of another body", lambda: raw({"v": 1, "body": body(),
                                               "sig": json.loads(signed(body(id="cmd-2222222")))["sig"]}),
     c.BAD_SIGNATURE, "sig"),
    ("other site", lambda: signed(body(site="jabar-lain")), c.OTHER_SITE, "site"),
    ("not yet valid", lambda: signed(body(issued=NOW + c.CLOCK_SKEW + 1, expires=NOW + 900)),
     c.NOT_YET_VALID, "issued"),
    ("expired", lambda: signed(body(issued=NOW - 900, expires=NOW - c.CLOCK_SKEW - 1)), c.EXPIRED,
     "expires"),
    ("unknown command", lambda: signed(body(name="format_disk")), c.UNKNOWN_COMMAND, "name"),
    ("body not JSON", lambda: signed("{oops"), c.MALFORMED, "body"),
    ("body a list", lambda: signed("[]"), c.MALFORMED, "body"),
    ("wrong version", lambda: signed(body(v=2)), c.MALFORMED, "v"),
    ("id missing", lambda: signed(body(id=DROP)), c.MALFORMED, "id"),
    ("id too short", lambda: signed(body(id="x")), c.MALFORMED, "id"),
    ("site missing", lambda: signed(body(site=DROP)), c.MALFORMED, "site"),
    ("issued a string", lambda: signed(body(issued="now")), c.MALFORMED, "issued"),
    ("expires a bool", lambda: signed(body(expires=True)), c.MALFORMED, "expires"),
    ("expires before issued", lambda: signed(body(issued=NOW, expires=NOW - 1)), c.MALFORMED,
     "expires"),
    ("lives too long", lambda: signed(body(issued=NOW, expires=NOW + c.MAX_LIFETIME + 1)),
     c.MALFORMED, "expires"),
    ("name missing", lambda: signed(body(name=DROP)), c.MALFORMED, "name"),
    ("args a list", lambda: signed(body(args=[1])), c.MALFORMED, "args"),
    ("unknown field", lambda: signed(body(extra=1)), c.MALFORMED, "extra"),
]


@pytest.mark.parametrize("what,make,reason,fld", CASES, ids=[x[0] for x in CASES])
def test_refusals_name_their_reason_and_field(what: str, make: Callable[[], bytes], reason: str,
                                              fld: str | None) -> None:
    with pytest.raises(c.CommandRefused) as info:
        c.verify(make(), KEYS, SITE, NOW)
    assert (info.value.reason, info.value.field) == (reason, fld), str(info.value)
    assert str(info.value)


def test_a_refusal_carries_the_claimed_id_for_correlation() -> None:
    with pytest.raises(c.CommandRefused) as info:
        c.verify(signed(body(), STRANGER), KEYS, SITE, NOW)
    assert (info.value.id, info.value.name) == ("cmd-00000001", "deauth")


def test_no_provisioned_key_refuses_every_signed_command() -> None:
    with pytest.raises(c.CommandRefused) as info:
        c.verify(signed(body()), [], SITE, NOW)
    assert info.value.reason == c.BAD_SIGNATURE


@pytest.mark.parametrize("text,problem", [
    ("ssh-ed25519 AAAA", "does not start"),
    ("ed25519:@@", "not base64"),
    ("ed25519:" + base64.b64encode(b"x" * 31).decode(), "32 bytes"),
])
def test_public_key_text_errors(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        c.parse_public_key(text)


def test_public_key_text_round_trips() -> None:
    key = OPERATOR.public_key()
    assert c.parse_public_key(c.public_key_text(key)).public_bytes_raw() == key.public_bytes_raw()


# -- docs/schemas and the worked examples of docs/mqtt.md "Commands" ---------------------------

DOCS = __import__("pathlib").Path(__file__).resolve().parents[2] / "docs"
REQUEST_SCHEMA = json.loads((DOCS / "schemas" / "command-request.schema.json").read_text())
RESPONSE_SCHEMA = json.loads((DOCS / "schemas" / "command-response.schema.json").read_text())


def test_a_signed_request_validates_against_its_schema() -> None:
    import jsonschema

    outer = json.loads(signed(body()))
    jsonschema.validate(outer, REQUEST_SCHEMA)
    jsonschema.validate(json.loads(outer["body"]), REQUEST_SCHEMA["$defs"]["body"])
    with pytest.raises(jsonschema.ValidationError):  # the schema is not a rubber stamp
        jsonschema.validate(json.loads(body(name="deauth", args={})), REQUEST_SCHEMA["$defs"]["body"])


def test_the_worked_command_examples_in_docs_mqtt_validate_and_verify() -> None:
    import re

    import jsonschema

    text = (DOCS / "mqtt.md").read_text()
    section = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", section, re.S)]
    requests = [b for b in blocks if "sig" in b]
    bodies = [b for b in blocks if "issued" in b]  # the bodies of the later examples
    responses = [b for b in blocks if "ok" in b]
    assert len(requests) == 1 and len(responses) == 5
    jsonschema.validate(requests[0], REQUEST_SCHEMA)
    key = c.parse_public_key(re.findall(r'command_keys = \["(ed25519:[^"]+)"\]', section)[0])
    inner = json.loads(requests[0]["body"])
    cmd = c.verify(json.dumps(requests[0]).encode(), [key], inner["site"], inner["issued"])
    body_schema = {**REQUEST_SCHEMA["$defs"]["body"], "$defs": REQUEST_SCHEMA["$defs"]}
    for one in [inner, *bodies]:
        jsonschema.validate(one, body_schema)
    names = {b["id"]: b["name"] for b in [inner, *bodies]}
    assert {"config.set", "vouchers.create"} <= set(names.values())
    for answer in responses:
        jsonschema.validate(answer, RESPONSE_SCHEMA)
        assert names.get(answer["id"], answer["name"]) == answer["name"]
    assert {a["name"] for a in responses if a["ok"]} >= {"deauth", "config.set",
                                                          "vouchers.create", "reboot"}
    assert cmd.id in {a["id"] for a in responses}
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))
    assert set(c.REASONS) | {"failed"} <= documented


# -- telemetry.command_keys in the config --------------------------------------------------------

def test_command_keys_are_read_from_the_config_and_bad_ones_name_their_field() -> None:
    from gateway.config import parse_config_text
    from gateway.errors import ConfigError
    from tests.unit.test_telemetry import BASE

    good = c.public_key_text(OPERATOR.public_key())
    tel = parse_config_text(BASE + f'command_keys = ["{good}"]\n').telemetry
    assert tel.command_keys == (good,)
    assert parse_config_text(BASE).telemetry.command_keys == ()
    with pytest.raises(ConfigError) as info:
        parse_config_text(BASE + f'command_keys = ["{good}", "ssh-ed25519 AAAA"]\n')
    assert any(line.startswith("telemetry.command_keys[1]: ") for line in info.value.problems), \
        info.value.problems


DEEP = "[" * 20_000 + "]" * 20_000


@pytest.mark.parametrize("payload,field", [
    (DEEP.encode(), "body"),  # the request itself, before any signature check
    (raw({"body": DEEP, "sig": "AA=="}), "sig"),  # the unverified body read for its id
    (signed(body(args={"mac": "@"}).replace('"@"', DEEP)), "body"),  # signed, deep inside
], ids=["request", "unsigned-body", "signed-body"])
def test_json_nested_too_deep_is_refused_not_raised(payload: bytes, field: str) -> None:
    """json.loads raises RecursionError (not ValueError) on deep nesting: it escaped verify,
    the command went unanswered and the daemon logged a traceback per message."""
    assert len(payload) <= c.MAX_REQUEST
    with pytest.raises(c.CommandRefused) as info:
        c.verify(payload, KEYS, SITE, NOW)
    assert (info.value.reason, info.value.field) == (c.MALFORMED, field)


def test_nesting_a_command_may_need_is_read() -> None:
    # positive control: arguments nested a few hundred levels still verify
    text = body(args={"mac": "@"}).replace('"@"', "[" * 300 + "]" * 300)
    assert c.verify(signed(text), KEYS, SITE, NOW).id == "cmd-00000001"
