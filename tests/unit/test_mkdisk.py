"""images/mkdisk on a tiny stand-in root: the GPT, the ESP, the slot's files, the entries."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.telemetry.commands import public_key_text
from gateway.update import slots

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "mtype", "debugfs")
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason=f"needs {', '.join(TOOLS)} (bash .ci/setup)")


def fake_root(root: Path) -> Path:
    files = {"boot/vmlinuz-6.1.0-9-amd64": "kernel", "boot/initrd.img-6.1.0-9-amd64": "initrd",
             "usr/lib/systemd/systemd-bless-boot": "", "usr/lib/os-release":
             'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nIMAGE_VERSION="old"\n',
             "usr/lib/systemd/boot/efi/systemd-bootx64.efi": "MZ loader",
             "etc/fstab": "LABEL=desanet-data  /data  ext4  noatime  0  2\n"}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


UPDATE_PUB = "ed25519:" + "A" * 43 + "=\n"  # 32 bytes: the form mkdisk checks


def mkdisk(tmp: Path, *extra: str, keys: bool = True) -> subprocess.CompletedProcess[str]:
    """images/mkdisk on the stand-in root; a trusted update key unless ``extra`` names one."""
    root = tmp / "rootfs"
    if not root.exists():
        fake_root(root)
    if keys and "--update-key" not in extra:
        (tmp / "fleet-update.pub").write_text(UPDATE_PUB)
        extra = (*extra, "--update-key", str(tmp / "fleet-update.pub"))
    return subprocess.run([sys.executable, str(ROOT / "images/mkdisk"), "--rootfs",
                           str(root), "--out", str(tmp / "disk.img"),
                           "--slot-size", "32M", "--esp-size", "40M", "--data-size", "16M",
                           *extra], capture_output=True, text=True, check=False)


def debugfs_cat(disk: Path, offset: int, path: str) -> str:
    return subprocess.run(["debugfs", "-R", f"cat {path}", f"{disk}?offset={offset}"],
                          capture_output=True, text=True, check=True).stdout


def test_layout_entries_and_boot_layer(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "ssh").mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    (bundle / "ssh/authorized_keys").write_text("ssh-ed25519 AAAA tech\n")
    (tmp_path / "u.pub").write_text(UPDATE_PUB)
    proc = mkdisk(tmp_path, "--bundle", str(bundle), "--version", "7",
                  "--update-key", str(tmp_path / "u.pub"))
    assert proc.returncode == 0, proc.stderr
    disk = tmp_path / "disk.img"
    table = json.loads(subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    parts = {p["name"]: p for p in table["partitions"]}
    assert list(parts) == ["esp", "root-a", "root-b", "desanet-data"]
    assert parts["esp"]["type"] == slots.ESP_TYPE
    assert parts["root-a"]["uuid"].lower() == slots.part_uuid("a")
    assert parts["root-b"]["uuid"].lower() == slots.part_uuid("b")
    esp = f"{disk}@@{parts['esp']['start'] * 512}"

    def mtype(path: str) -> str:
        return subprocess.run(["mtype", "-i", esp, f"::{path}"], capture_output=True,
                              text=True, check=True, env={"MTOOLS_SKIP_CHECK": "1"}).stdout

    assert mtype("EFI/BOOT/BOOTX64.EFI") == "MZ loader"
    assert mtype("EFI/desanet/a/vmlinuz") == "kernel"
    assert mtype("desanet/ssh/authorized_keys") == "ssh-ed25519 AAAA tech\n"
    assert "default desanet-*" in mtype("loader/loader.conf")
    assert "editor no" in mtype("loader/loader.conf")
    entry = mtype("loader/entries/desanet-a.conf")  # the factory slot: no tries counter
    assert entry == slots.entry_text("a", "7", "net.ifnames=0 console=tty0 console=ttyS0,115200")
    assert f"root=PARTUUID={slots.part_uuid('a')} ro" in entry

    root_a = parts["root-a"]["start"] * 512
    osrel = debugfs_cat(disk, root_a, "/usr/lib/os-release")
    assert 'IMAGE_VERSION="7"' in osrel and "old" not in osrel
    fstab = debugfs_cat(disk, root_a, "/etc/fstab")
    assert "LABEL=desanet-data  /data" in fstab and "UUID=1234-ABCD  /boot/efi  vfat" in fstab
    assert debugfs_cat(disk, root_a, "/usr/lib/desanet/update-keys/u.pub").startswith("ed25519:")
    unit = debugfs_cat(disk, root_a, "/usr/lib/systemd/system/desanet-boot-check.service")
    assert "RequiredBy=boot-complete.target" in unit
    data = subprocess.run(["debugfs", "-R", "stats", f"{disk}?offset="
                           f"{parts['desanet-data']['start'] * 512}"],
                          capture_output=True, text=True, check=True).stdout
    assert "Filesystem volume name:   desanet-data" in data


def test_a_root_without_bless_boot_is_refused_with_the_package_named(tmp_path: Path) -> None:
    (fake_root(tmp_path / "rootfs") / "usr/lib/systemd/systemd-bless-boot").unlink()
    proc = mkdisk(tmp_path)
    assert proc.returncode == 1
    assert "systemd-boot package" in proc.stderr
    assert not (tmp_path / "disk.img").exists()


def test_a_root_too_big_for_the_slot_is_refused(tmp_path: Path) -> None:
    big = fake_root(tmp_path / "rootfs") / "big"
    big.write_bytes(bytes(40 << 20))
    proc = mkdisk(tmp_path)
    assert proc.returncode == 1 and "--slot-size" in proc.stderr


def partitions(disk: Path) -> dict[str, dict[str, object]]:
    table = json.loads(subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    return {p["name"]: p for p in table["partitions"]}


@pytest.mark.skipif(shutil.which("systemd-repart") is None, reason="needs systemd-repart")
def test_the_image_grows_only_the_data_partition_to_the_card(tmp_path: Path) -> None:
    """The image's repart.d, run as the booted gateway runs it, on a card larger than the
    image: desanet-data reaches the end, the ESP and both root slots stay as they were."""
    assert mkdisk(tmp_path).returncode == 0
    disk = tmp_path / "disk.img"
    repart = ["systemd-repart", "--dry-run=no", "--no-pager",
              f"--definitions={ROOT / 'images/rootfs/usr/lib/repart.d'}", str(disk)]

    def run_repart() -> None:
        proc = subprocess.run(repart, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr

    def grown_to(card: int, before: dict[str, dict[str, object]]) -> int:
        run_repart()
        after = partitions(disk)
        for name in ("esp", "root-a", "root-b"):
            assert after[name] == before[name], name
        data, old = after["desanet-data"], before["desanet-data"]
        assert (data["start"], data["uuid"], data["type"]) == (old["start"], old["uuid"],
                                                               old["type"])
        end = (int(str(data["start"])) + int(str(data["size"]))) * 512
        assert card - (2 << 20) < end <= card, f"desanet-data ends at {end}, the card at {card}"
        return int(str(data["size"])) * 512

    image = grown_to(disk.stat().st_size, partitions(disk))  # the image's own slack only
    with disk.open("r+b") as f:
        f.truncate(disk.stat().st_size + (64 << 20))  # flashed onto a bigger card
    assert grown_to(disk.stat().st_size, partitions(disk)) == image + (64 << 20)


def test_update_keys_that_would_leave_the_image_unupdatable_or_leak_are_refused(
        tmp_path: Path) -> None:
    # None at all: the image could never take an update; nothing is written.
    proc = mkdisk(tmp_path, keys=False)
    assert proc.returncode != 0 and "--update-key: none given" in proc.stderr
    assert not (tmp_path / "disk.img").exists()
    # The private half given by mistake: it would sit, world-readable, on every gateway.
    fleet_key = Ed25519PrivateKey.generate()
    private = fleet_key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    (tmp_path / "update.key").write_bytes(private)
    proc = mkdisk(tmp_path, "--update-key", str(tmp_path / "update.key"))
    assert proc.returncode != 0 and "update.key: this is a PRIVATE key" in proc.stderr
    assert not (tmp_path / "disk.img").exists()
    (tmp_path / "junk.pub").write_text("ssh-ed25519 AAAA tech\n")
    proc = mkdisk(tmp_path, "--update-key", str(tmp_path / "junk.pub"))
    assert proc.returncode != 0 and "junk.pub" in proc.stderr and "ed25519:" in proc.stderr
    assert not (tmp_path / "disk.img").exists()
    # Positive control: the public key's own file makes the disk.
    (tmp_path / "update.pub").write_text(public_key_text(fleet_key.public_key()) + "\n")
    proc = mkdisk(tmp_path, "--update-key", str(tmp_path / "update.pub"))
    assert proc.returncode == 0, proc.stderr
