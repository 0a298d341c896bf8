"""`desanet provision ...` as a regional team runs it: exit codes and what is printed."""

from __future__ import annotations

import argparse
import os
import re
import shlex
from pathlib import Path

import pytest

from gateway.cli import build_parser, main
from provisioning.ca import read_record
from provisioning.cli import ID_HELP, WORKFLOW
from tests.unit.provkit import CSV, HEADER, Fleet, make_fleet


def test_check_prints_every_problem_with_row_and_column_and_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "v.csv"
    bad.write_text(HEADER + "Bad Id,N,V,R,WIB,S,,,5mbit/1mbit,mqtts://b:8883\n"
                   "ok-2,N,V,R,MARS,S2,short,,5mbit/1mbit,mqtts://b:8883\n")
    assert main(["provision", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "3 problem(s); nothing was written" in err
    assert "row 2, column site_id" in err and "row 3, column timezone" in err \
        and "row 3, column passphrase" in err
    good = tmp_path / "good.csv"
    good.write_text(CSV)
    assert main(["provision", "check", str(good)]) == 0
    assert "2 village(s), every row valid" in capsys.readouterr().out


def test_check_reports_csv_and_generated_config_problems_in_one_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Row 2: a CSV-level problem (timezone). Row 3: valid cells, but the gateway refuses
    # its config (a plan faster than the uplink). Row 4: fine. Both in one run.
    mixed = tmp_path / "v.csv"
    mixed.write_text(HEADER + "a-1,N,V,R,MARS,S1,,,5mbit/1mbit,mqtts://b.example:8883\n"
                     "b-2,N,V,R,WIB,S2,,big=50mbit/1mbit,5mbit/1mbit,mqtts://b.example:8883\n"
                     "c-3,N,V,R,WIB,S3,,,5mbit/1mbit,mqtts://b.example:8883\n")
    assert main(["provision", "check", str(mixed)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert "2 problem(s); nothing was written" in lines[0]
    assert lines[1].startswith("  row 2, column timezone")
    assert lines[2].startswith("  row 3, column plans: the generated gateway.toml is refused")
    # batch refuses with the same list, and writes nothing
    fleet = make_fleet(tmp_path / "f")
    (tmp_path / "op.pub").write_text(fleet.keys[0].text + "\n")
    (tmp_path / "tech.pub").write_text(fleet.authorized)
    batch = ["provision", "batch", str(mixed), "--ca", str(fleet.ca.dir), "--command-key",
             str(tmp_path / "op.pub"), "--authorized-keys", str(tmp_path / "tech.pub")]
    assert main([*batch, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines()[1:] == lines[1:]
    assert not (tmp_path / "out").exists()
    # Positive control: row 4 alone is valid; build-bundle of it is not held up by the
    # config of another row (only the CSV's own problems are every row's business).
    mixed.write_text(HEADER + "c-3,N,V,R,WIB,S3,,,5mbit/1mbit,mqtts://b.example:8883\n"
                     "b-2,N,V,R,WIB,S2,,big=50mbit/1mbit,5mbit/1mbit,mqtts://b.example:8883\n")
    assert main(["provision", "build-bundle", *batch[2:], "--site", "c-3", "--out",
                 str(tmp_path / "one")]) == 0
    capsys.readouterr()
    assert main(["provision", "check", str(mixed)]) == 2
    assert "1 problem(s)" in capsys.readouterr().err


def test_ca_init_batch_and_import_from_the_command_line(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    fleet = make_fleet(tmp_path / "f")  # for its operator and technician keys only
    (tmp_path / "op.pub").write_text(fleet.keys[0].text + "\n")
    (tmp_path / "tech.pub").write_text(fleet.authorized)
    (tmp_path / "v.csv").write_text(CSV)
    assert main(["provision", "ca", "init", "--dir", str(tmp_path / "ca")]) == 0
    assert os.stat(tmp_path / "ca" / "ca.key").st_mode & 0o777 == 0o600
    assert main(["provision", "ca", "init", "--dir", str(tmp_path / "ca")]) == 1  # never twice
    args = ["provision", "batch", str(tmp_path / "v.csv"), "--ca", str(tmp_path / "ca"),
            "--command-key", str(tmp_path / "op.pub"), "--authorized-keys",
            str(tmp_path / "tech.pub"), "--out", str(tmp_path / "out")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 bundle(s)" in out and "SHA256:" in out
    assert main(args) == 1  # the out directory is never reused
    assert "not an empty directory" in capsys.readouterr().err
    bundle = str(tmp_path / "out" / "ntb-lembah" / "desanet")
    where = ["--etc", str(tmp_path / "etc"), "--ssh-dir", str(tmp_path / "ssh"),
             "--record", str(tmp_path / "rec.json")]
    assert main(["provision", "import", bundle, *where]) == 0
    assert "ntb-lembah: imported" in capsys.readouterr().out
    assert main(["provision", "import", bundle, *where]) == 0
    assert "already imported" in capsys.readouterr().out
    assert main(["provision", "import", str(tmp_path / "nothing"), *where]) == 1
    assert "manifest.json is missing" in capsys.readouterr().err
    other = str(tmp_path / "out" / "jabar-sukamaju" / "desanet")
    assert main(["provision", "import", other, *where]) == 1  # another village's bundle
    err = capsys.readouterr().err
    assert "'ntb-lembah'" in err and "'jabar-sukamaju'" in err and "--replace-site" in err
    assert main(["provision", "import", other, *where, "--replace-site"]) == 0
    assert "revoke ntb-lembah" in capsys.readouterr().out
    assert main(["provision", "renew", "ntb-lembah", "--ca", str(tmp_path / "ca"), "--out",
                 str(tmp_path / "new.crt")]) == 0
    assert "cert.install cert=@" in capsys.readouterr().out
    assert main(["provision", "list", "--ca", str(tmp_path / "ca")]) == 0
    listed = capsys.readouterr().out
    assert listed.count("ntb-lembah") == 2 and "renew" in listed


def fleet_and_batch(tmp_path: Path) -> tuple[Fleet, list[str]]:
    """A fleet, its keys and the CSV on disk, and `provision batch` argv without --out."""
    fleet = make_fleet(tmp_path / "f")
    (tmp_path / "op.pub").write_text(fleet.keys[0].text + "\n")
    (tmp_path / "tech.pub").write_text(fleet.authorized)
    (tmp_path / "v.csv").write_text(CSV)
    return fleet, ["provision", "batch", str(tmp_path / "v.csv"), "--ca", str(fleet.ca.dir),
                   "--command-key", str(tmp_path / "op.pub"),
                   "--authorized-keys", str(tmp_path / "tech.pub")]


def test_a_file_that_cannot_be_written_is_one_line_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet, batch = fleet_and_batch(tmp_path)
    wall = tmp_path / "a-file"  # a file where a directory should be: fails even for root
    wall.write_text("x\n")
    ca = ["--ca", str(fleet.ca.dir)]
    issued = fleet.ca.dir / "issued.json"

    def refused(argv: list[str]) -> None:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 1 and str(wall) in err and "Traceback" not in err, argv
        assert err.count("\n") == 1 and err.startswith("error: "), err

    record = issued.read_bytes()
    refused([*batch, "--out", str(wall / "out")])
    assert issued.read_bytes() == record  # no certificate issued for bundles not written
    # Positive control: the same batch into a directory that can be written.
    assert main([*batch, "--out", str(tmp_path / "out")]) == 0
    record = issued.read_bytes()
    refused(["provision", "renew", "ntb-lembah", *ca, "--out", str(wall / "x.crt")])
    refused(["provision", "crl", *ca, "--out", str(wall / "crl.pem")])
    refused(["provision", "ca", "broker-cert", *ca, "--name", "mqtt.example", "--out-dir",
             str(wall / "broker")])
    refused(["provision", "ca", "init", "--dir", str(wall / "ca")])
    assert issued.read_bytes() == record
    bundle = str(tmp_path / "out" / "ntb-lembah" / "desanet")
    where = ["--etc", str(tmp_path / "box" / "etc"), "--record", str(tmp_path / "box" / "r.json")]
    refused(["provision", "import", bundle, *where, "--ssh-dir", str(wall / "ssh")])
    assert not (tmp_path / "box").exists()
    assert main(["provision", "import", bundle, *where, "--ssh-dir",
                 str(tmp_path / "box" / "ssh")]) == 0


def _workflow_commands(text: str) -> list[list[str]]:
    """Each numbered "N. desanet ..." step's arguments (continuations joined, comments cut)."""
    steps = re.findall(r"^\s*\d+\.\s+desanet (.*)$", text.replace("\\\n", " "), re.M)
    return [shlex.split(step.split("  (")[0]) for step in steps]


def test_the_help_walks_through_every_step_and_each_step_parses(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["provision", "--help"])
    shown = capsys.readouterr().out
    steps = _workflow_commands(WORKFLOW)
    names = [" ".join(argv[:3] if argv[1] == "ca" else argv[:2]) for argv in steps]
    # without the broker's certificate no gateway ever connects: it comes before any bundle
    assert names == ["provision ca init", "provision ca broker-cert", "fleet keygen",
                     "provision check", "provision batch"]
    assert "provision ca broker-cert --ca ca-jabar" in shown
    parser = build_parser()
    for argv in steps:  # every option the help shows exists
        assert parser.parse_args(argv).func is not None


def test_batch_again_refuses_sites_that_hold_a_certificate_unless_reissue(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet, batch = fleet_and_batch(tmp_path)
    ca = str(fleet.ca.dir)
    common = batch[2:]  # the CSV, the CA and the keys: batch and build-bundle take the same
    assert main(["provision", "batch", *common, "--out", str(tmp_path / "b1")]) == 0
    capsys.readouterr()
    assert main(["provision", "batch", *common, "--out", str(tmp_path / "b2")]) == 1
    err = capsys.readouterr().err
    assert "jabar-sukamaju, ntb-lembah" in err and "--reissue" in err
    assert main(["provision", "build-bundle", *common, "--site", "ntb-lembah", "--out",
                 str(tmp_path / "one")]) == 1
    assert "ntb-lembah" in capsys.readouterr().err
    assert not (tmp_path / "b2").exists() and not (tmp_path / "one").exists()
    assert main(["provision", "list", "--ca", ca]) == 0
    assert capsys.readouterr().out.count("ntb-lembah") == 1  # no duplicate identities
    old = {e["site"]: e["serial"] for e in read_record(fleet.ca.dir)}
    # Positive control: --reissue on purpose, with the old serials to revoke printed.
    assert main(["provision", "build-bundle", *common, "--site", "ntb-lembah", "--out",
                 str(tmp_path / "one"), "--reissue"]) == 0
    out = capsys.readouterr().out
    assert f"desanet provision revoke ntb-lembah --ca {ca} --serial {old['ntb-lembah']}" in out
    assert "jabar-sukamaju --ca" not in out and f"provision crl --ca {ca}" in out
    assert main(["provision", "batch", *common, "--out", str(tmp_path / "b3"), "--reissue"]) == 0
    assert f"revoke jabar-sukamaju --ca {ca} --serial {old['jabar-sukamaju']}" in \
        capsys.readouterr().out


def test_every_provision_subcommand_explains_itself_in_indonesian_then_english() -> None:
    provision = next(a for a in build_parser()._actions
                     if isinstance(a, argparse._SubParsersAction)).choices["provision"]
    leaves: list[tuple[str, argparse.ArgumentParser]] = []
    for name, sub in _subparsers(provision).items():
        inner = _subparsers(sub)
        leaves += list(inner.items()) if inner else [(name, sub)]
    assert {name for name, _ in leaves} == set(ID_HELP)  # none without its Indonesian
    for name, sub in leaves:
        text = sub.format_help()
        first_id, english = ID_HELP[name].split()[0], text.index("\n\n") + 2
        assert text[english:].startswith(first_id), name  # Bahasa Indonesia first
        assert all(len(line) <= 80 for line in (sub.description or "").splitlines()), name


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
