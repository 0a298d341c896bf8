"""`desanet fleet keygen` and the parts of `fleet send` that need no broker."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from gateway import cli
from gateway.errors import Invalid
from gateway.fleet import cli as fleet
from gateway.telemetry import commands as c


def test_keygen_writes_a_private_key_only_its_owner_reads_and_a_usable_public_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "op.key"
    assert cli.main(["fleet", "keygen", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    public = (tmp_path / "op.key.pub").read_text().strip()
    assert printed["public_key"] == public
    key = fleet.load_key(str(out))
    signed = c.sign(c.body_json("cmd-00000001", "s1", "status", {}, 100, 200), key)
    assert c.verify(signed, [c.parse_public_key(public)], "s1", 150).name == "status"


def test_keygen_never_overwrites_a_key_unless_forced(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "op.key"
    out.write_text("precious")
    out.chmod(0o644)
    assert cli.main(["fleet", "keygen", "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err and out.read_text() == "precious"
    assert cli.main(["fleet", "keygen", "--out", str(out), "--force"]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.read_text() != "precious"


@pytest.mark.parametrize("content,problem", [(b"nope", "not an unencrypted PEM"), (None, "cannot read")])
def test_a_bad_key_file_is_named(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "k"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(fleet.FleetError, match=problem):
        fleet.load_key(str(path))


def test_arguments_from_words_and_json() -> None:
    assert fleet.parse_args_pairs(["mac=02:00:00:00:00:01"], '{"x": 1}') == {
        "mac": "02:00:00:00:00:01", "x": 1}
    with pytest.raises(Invalid):
        fleet.parse_args_pairs(["mac"], None)
    with pytest.raises(Invalid):
        fleet.parse_args_pairs([], "[1]")


def test_send_refuses_a_bad_broker_url_before_connecting(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "op.key"
    fleet.keygen(key)
    code = cli.main(["fleet", "send", "s1", "status", "--broker", "http://x", "--key", str(key)])
    assert code == 2 and "--broker" in capsys.readouterr().err


def test_keygen_writes_a_sealing_key_that_opens_what_a_gateway_seals(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.fleet import sealkeys
    from gateway.telemetry import sealed

    out = tmp_path / "op.key"
    assert cli.main(["fleet", "keygen", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    seal_path = tmp_path / "op.key.x25519"
    assert printed["seal_key"] == str(seal_path) and stat.S_IMODE(seal_path.stat().st_mode) == 0o600
    key = sealkeys.load_seal_key(seal_path)
    recipient = sealed.parse_public_key(printed["seal_public_key"])
    box = sealed.seal(b'{"codes":["ABCDE-FGHJK"]}', recipient,
                      c.sealed_context("s1", "cmd-00000001", "vouchers.create"))
    answer = {"id": "cmd-00000001", "name": "vouchers.create", "ok": True,
              "result": {"count": 1, "codes_sealed": box}}
    opened = sealkeys.open_answer(answer, key, "s1")
    assert opened["result"] == {"count": 1, "codes": ["ABCDE-FGHJK"]}
    replay = {"id": "cmd-00000001", "ok": False, "reason": "replayed", "first": answer}
    assert sealkeys.open_answer(replay, key, "s1")["first"]["result"]["codes"] == ["ABCDE-FGHJK"]
    with pytest.raises(sealkeys.SealKeyError, match="do not open"):
        sealkeys.open_answer(answer, key, "s2")  # another site's context
    # an operator key made before: add a sealing key only, never touching the signing key
    seal_path.unlink()
    before = out.read_text()
    assert cli.main(["fleet", "keygen", "--out", str(out), "--seal-only"]) == 0
    assert seal_path.exists() and out.read_text() == before
    assert cli.main(["fleet", "keygen", "--out", str(out), "--seal-only"]) == 1  # not overwritten


def test_arguments_from_files_json_values_and_numbers(tmp_path: Path) -> None:
    conf = tmp_path / "gateway.toml"
    conf.write_text("[site]\nname = \"x\"\n")
    assert fleet.parse_args_pairs([f"text=@{conf}", "count=10", "plan:=null", "batch=2024",
                                   "confirm=5m"], None) == {
        "text": "[site]\nname = \"x\"\n", "count": 10, "plan": None, "batch": "2024",
        "confirm": "5m"}
    for bad in [f"text=@{tmp_path / 'missing'}", "plan:=nul", ":=1"]:
        with pytest.raises(Invalid):
            fleet.parse_args_pairs([bad], None)
