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
