"""A/B updates on a Raspberry Pi: the install, status and bless through U-Boot's state files.

The boot script that reads these files runs on real U-Boot in
tests/integration/test_rpi_boot.py; here the gateway's side of the contract.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.update import install as inst
from gateway.update import slots, ubootstate
from gateway.update.bundle import BundleError
from tests.unit.test_update import SLOT_SIZE, make_bundle

ROOT = Path(__file__).resolve().parents[2]
CMDLINE = (f"root=PARTUUID={slots.rpi_part_uuid('a')} ro rootwait panic=10 desanet.slot=a "
           "desanet.loader=uboot  net.ifnames=0 console=ttyS1,115200\n")


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def pi(tmp_path: Path, key: Ed25519PrivateKey) -> inst.Paths:
    """A Pi running slot a (good), version 1: boot partition, partitions by PARTUUID."""
    from gateway.telemetry.commands import public_key_text

    boot = tmp_path / "boot"
    boot.mkdir()
    for name, text in ubootstate.initial_files("a").items():
        (boot / name).parent.mkdir(parents=True, exist_ok=True)
        (boot / name).write_text(text)
    byuuid = tmp_path / "by-partuuid"
    byuuid.mkdir()
    for s in ("a", "b"):
        (byuuid / slots.rpi_part_uuid(s)).write_bytes(bytes(SLOT_SIZE))
    (tmp_path / "cmdline").write_text(CMDLINE)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "ops.pub").write_text(public_key_text(key.public_key()) + "\n")
    (tmp_path / "os-release").write_text('IMAGE_VERSION="1"\n')
    return inst.Paths(esp=boot, devices=tmp_path / "no-partlabels", partuuids=byuuid,
                      cmdline=tmp_path / "cmdline", keys=[keys],
                      os_release=tmp_path / "os-release")


def test_install_writes_slot_b_and_starts_its_trial(
        tmp_path: Path, key: Ed25519PrivateKey, pi: inst.Paths) -> None:
    with make_bundle(tmp_path, key).open("rb") as f:
        assert inst.install(f, pi, tries=3) == ("b", "2", "a")
    assert (pi.partuuids / slots.rpi_part_uuid("b")).read_bytes()[:400] == b"ROOT" * 100
    assert (pi.partuuids / slots.rpi_part_uuid("a")).read_bytes() == bytes(SLOT_SIZE)
    assert (pi.esp / "EFI/desanet/b/vmlinuz").read_bytes() == b"kernel"
    assert (pi.esp / ubootstate.BOOT_FILE).read_text() == "desanet_good=a\ndesanet_try=b\n"
    assert (pi.esp / ubootstate.BOOT_COPY).read_text() == "desanet_good=a\ndesanet_try=b\n"
    assert (pi.esp / ubootstate.TRIES_FILE).read_text() == "desanet_tries=3\n"
    assert not (pi.esp / "loader").exists()  # no systemd-boot entries on a Pi
    assert ubootstate.read(pi.esp) == ubootstate.BootState("a", "b", 3)


def test_a_bad_bundle_cancels_the_old_trial_and_starts_none(
        tmp_path: Path, key: Ed25519PrivateKey, pi: inst.Paths) -> None:
    ubootstate.start_trial(pi.esp, "a", "b", 2)  # an earlier update still on trial
    bundle = make_bundle(tmp_path, key, rootfs=b"R" * (SLOT_SIZE + 1))  # too big for the slot
    with bundle.open("rb") as f, pytest.raises(BundleError, match="larger than the slot"):
        inst.install(f, pi)
    # Slot b was being overwritten: it is never offered to U-Boot again.
    assert ubootstate.read(pi.esp) == ubootstate.BootState("a", None, 2)


def test_tries_beyond_one_digit_are_refused_before_anything_is_written(
        tmp_path: Path, key: Ed25519PrivateKey, pi: inst.Paths) -> None:
    with make_bundle(tmp_path, key).open("rb") as f, pytest.raises(BundleError, match="tries"):
        inst.install(f, pi, tries=10)
    assert (pi.partuuids / slots.rpi_part_uuid("b")).read_bytes() == bytes(SLOT_SIZE)
    assert ubootstate.read(pi.esp) == ubootstate.BootState("a", None, 0)


def test_bless_only_marks_the_running_trial(pi: inst.Paths) -> None:
    ubootstate.start_trial(pi.esp, "a", "b", 3)
    assert not ubootstate.bless(pi.esp, "a")  # slot a is not the one on trial
    assert ubootstate.read(pi.esp).trial == "b"
    assert ubootstate.bless(pi.esp, "b")
    assert (pi.esp / ubootstate.BOOT_FILE).read_text() == "desanet_good=b\ndesanet_try=\n"
    assert ubootstate.read(pi.esp) == ubootstate.BootState("b", None, 3)


def test_state_written_by_u_boot_and_damaged_files_read_safely(tmp_path: Path) -> None:
    # U-Boot's `env export -t` ends the tries file with a NUL; a power cut during its
    # fatwrite can leave garbage: that reads as no tries left (the good slot boots).
    for name, text in ubootstate.initial_files("b").items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / ubootstate.BOOT_FILE).write_text("desanet_good=b\ndesanet_try=a\n")
    (tmp_path / ubootstate.TRIES_FILE).write_bytes(b"desanet_tries=2\n\0")
    assert ubootstate.read(tmp_path) == ubootstate.BootState("b", "a", 2)
    (tmp_path / ubootstate.TRIES_FILE).write_bytes(b"desanet_tr\xff\xff")
    assert ubootstate.read(tmp_path) == ubootstate.BootState("b", "a", 0)
    # boot.txt left empty by a power cut (vfat): the copy, written first, says good=b.
    (tmp_path / ubootstate.BOOT_FILE).write_text("")
    assert ubootstate.read(tmp_path) == ubootstate.BootState("b", None, 0)
    (tmp_path / ubootstate.BOOT_COPY).write_text("desanet_good=z\ndesanet_try=c\n")
    assert ubootstate.read(tmp_path) == ubootstate.BootState("a", None, 0)
    (tmp_path / ubootstate.BOOT_COPY).unlink()
    assert ubootstate.read(tmp_path).good == "a"


def test_an_update_while_the_running_slot_is_on_trial_is_refused(
        tmp_path: Path, key: Ed25519PrivateKey, pi: inst.Paths) -> None:
    ubootstate.start_trial(pi.esp, "a", "b", 3)
    pi.cmdline.write_text(CMDLINE.replace("desanet.slot=a", "desanet.slot=b") + " desanet.trial=1")
    with make_bundle(tmp_path, key, version="3").open("rb") as f, \
            pytest.raises(BundleError, match="still on trial"):
        inst.install(f, pi)
    assert (pi.partuuids / slots.rpi_part_uuid("a")).read_bytes() == bytes(SLOT_SIZE)
    assert ubootstate.read(pi.esp) == ubootstate.BootState("a", "b", 3)
    ubootstate.bless(pi.esp, "b")  # positive control: once b is good, a may be replaced
    with make_bundle(tmp_path, key, version="3").open("rb") as f:
        assert inst.install(f, pi)[0] == "a"


def test_status_describes_trial_failed_and_good() -> None:
    assert ubootstate.BootState("a", "b", 2).describe("a") == [
        "  slot a: good", "  slot b: trial, 2 tries left"]
    assert ubootstate.BootState("a", "b", 0).describe("a")[1] == "  slot b: failed"
    assert ubootstate.BootState("a", "b", 0).describe("b")[1] == \
        "  slot b: trial, last try (running now)"
    assert ubootstate.BootState("b", None, 0).describe("b") == ["  slot b: good"]


def test_loader_and_trial_come_from_the_command_line() -> None:
    assert ubootstate.is_uboot(CMDLINE) and not ubootstate.is_trial(CMDLINE)
    assert ubootstate.is_trial(CMDLINE + " desanet.trial=1")
    assert not ubootstate.is_uboot("root=x desanet.slot=a desanet.loader=ubootx")
    assert slots.rpi_part_uuid("b") == f"{slots.RPI_DISK_ID}-03"


def test_boot_check_blesses_only_on_u_boot_and_treats_its_trial_as_a_trial() -> None:
    script = (ROOT / "images/boot/usr/lib/desanet/boot-check").read_text()
    emergency = (ROOT / "images/boot/usr/lib/desanet/emergency-trial").read_text()
    assert "desanet update bless" in script and "desanet.trial=1" in script
    assert "desanet.trial=1" in emergency
    for path in ("images/boot/usr/lib/desanet/boot-check",
                 "images/boot/usr/lib/desanet/emergency-trial"):
        assert subprocess.run(["sh", "-n", str(ROOT / path)], check=False).returncode == 0


def test_update_bless_and_status_commands(pi: inst.Paths, capsys: pytest.CaptureFixture[str],
                                          ) -> None:
    from argparse import Namespace

    from gateway.update import cli

    ubootstate.start_trial(pi.esp, "a", "b", 3)
    assert cli.cmd_bless(Namespace(), pi) == 0  # slot a, not a trial boot: nothing marked
    assert ubootstate.read(pi.esp).trial == "b"
    cli.cmd_status(Namespace(), pi)
    assert "slot b: trial, 3 tries left" in capsys.readouterr().out
    pi.cmdline.write_text(CMDLINE.replace("desanet.slot=a", "desanet.slot=b") + " desanet.trial=1")
    assert cli.cmd_bless(Namespace(), pi) == 0
    assert "slot b: marked good" in capsys.readouterr().out
    assert ubootstate.read(pi.esp) == ubootstate.BootState("b", None, 3)
