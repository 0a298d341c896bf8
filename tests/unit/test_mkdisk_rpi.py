"""images/mkdisk --board rpi on a stand-in root: the MBR card a Raspberry Pi boots."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.update import slots, ubootstate
from tests.unit.test_mkdisk import debugfs_cat, fake_root, mkdisk

TOOLS = ("sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "mtype", "debugfs", "mkimage", "blkid")
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason=f"needs {', '.join(TOOLS)} (bash .ci/setup)")
MT = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def pi_root(root: Path) -> Path:
    fake_root(root)
    files = {"usr/lib/raspi-firmware/start4.elf": "fw", "usr/lib/raspi-firmware/bootcode.bin":
             "rom", "usr/lib/linux-image-6.1.0-9-arm64/broadcom/bcm2711-rpi-4-b.dtb": "dtb4",
             "usr/lib/linux-image-6.1.0-9-arm64/broadcom/bcm2837-rpi-3-b.dtb": "dtb3",
             "usr/lib/linux-image-6.1.0-9-arm64/broadcom/bcm2835-rpi-b.dtb": "32-bit Pi 1",
             "usr/lib/u-boot/rpi_arm64/u-boot.bin": "U-Boot"}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def fat_read(disk: Path, offset: int, path: str) -> str:
    return subprocess.run(["mtype", "-i", f"{disk}@@{offset}", f"::{path}"], env=MT,
                          capture_output=True, text=True, check=True).stdout


def fat_names(disk: Path, offset: int) -> set[str]:
    out = subprocess.run(["mdir", "-b", "-i", f"{disk}@@{offset}", "::/"], env=MT,
                         capture_output=True, text=True, check=True).stdout
    return {line.strip().removeprefix("::/") for line in out.splitlines() if line.strip()}


def test_pi_card_layout_firmware_u_boot_and_state(tmp_path: Path) -> None:
    pi_root(tmp_path / "rootfs")
    proc = mkdisk(tmp_path, "--arch", "arm64", "--board", "rpi", "--version", "3")
    assert proc.returncode == 0, proc.stderr
    disk = tmp_path / "disk.img"
    table = json.loads(subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    assert table["label"] == "dos" and table["id"] == f"0x{slots.RPI_DISK_ID}"
    parts = table["partitions"]
    assert [p["type"] for p in parts] == ["c", "83", "83", "83"]
    assert parts[0]["start"] * 512 % (4 << 20) == 0  # aligned to SD erase blocks
    boot = parts[0]["start"] * 512
    names = fat_names(disk, boot)
    assert {"bootcode.bin", "start4.elf", "bcm2711-rpi-4-b.dtb", "bcm2837-rpi-3-b.dtb",
            "u-boot.bin", "boot.scr", "config.txt"} <= names
    assert not any(n.startswith("desanet-") for n in names)  # state lives in a subdirectory
    assert "bcm2835-rpi-b.dtb" not in names  # 32-bit boards cannot run an arm64 root
    config = fat_read(disk, boot, "config.txt")
    assert "kernel=u-boot.bin" in config and "arm_64bit=1" in config
    assert fat_read(disk, boot, "EFI/desanet/a/vmlinuz") == "kernel"
    assert fat_read(disk, boot, ubootstate.BOOT_FILE) == ubootstate.render("a", None)
    assert fat_read(disk, boot, ubootstate.BOOT_COPY) == ubootstate.render("a", None)
    assert fat_read(disk, boot, ubootstate.TRIES_FILE) == "desanet_tries=0\n"
    # boot.scr: a U-Boot script image with this card's disk id and the Pi's console.
    scr = tmp_path / "boot.scr"
    scr.write_bytes(subprocess.run(["mtype", "-i", f"{disk}@@{boot}", "::boot.scr"], env=MT,
                                   capture_output=True, check=True).stdout)
    listing = subprocess.run(["mkimage", "-l", str(scr)], capture_output=True, text=True,
                             check=True).stdout
    assert "Script" in listing
    text = scr.read_bytes().decode(errors="replace")
    assert f"root=PARTUUID={slots.RPI_DISK_ID}-${{desanet_part}}" in text
    assert "console=ttyS1,115200" in text and "@" not in text.split("setenv bootargs")[1][:200]
    # The boot partition is found by its fixed volume id, on MBR and GPT alike.
    blkid = subprocess.run(["blkid", "-p", "-O", str(boot), "-s", "UUID", "-o", "value",
                            str(disk)], capture_output=True, text=True, check=True).stdout
    assert blkid.strip() == "1234-ABCD"
    fstab = debugfs_cat(disk, parts[1]["start"] * 512, "/etc/fstab")
    assert "UUID=1234-ABCD  /boot/efi  vfat" in fstab


def test_pi_card_needs_arm64_and_u_boot(tmp_path: Path) -> None:
    pi_root(tmp_path / "rootfs")
    proc = mkdisk(tmp_path, "--board", "rpi")
    assert proc.returncode == 1 and "--arch arm64" in proc.stderr
    (tmp_path / "rootfs/usr/lib/u-boot/rpi_arm64/u-boot.bin").unlink()
    proc = mkdisk(tmp_path, "--arch", "arm64", "--board", "rpi")
    assert proc.returncode == 1 and "u-boot-rpi" in proc.stderr
    assert not (tmp_path / "disk.img").exists()
    # Positive control: the same root with U-Boot given explicitly makes a card.
    uboot = tmp_path / "u-boot.bin"
    uboot.write_text("U-Boot")
    proc = mkdisk(tmp_path, "--arch", "arm64", "--board", "rpi", "--uboot", str(uboot))
    assert proc.returncode == 0, proc.stderr
