"""The gateway image booted under QEMU: a provisioned card, a VM of its own, the steps
a technician takes (tests/integration/test_image.py uses these; qemuvm.py is the VM)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.telemetry.commands import public_key_text
from provisioning import bundle as pbundle
from provisioning import ca as fleetca
from provisioning.villages import parse_villages
from tests.integration.conftest import ROOT, wait_until
from tests.integration.qemuvm import (
    Namespace,
    Ssh,
    Vm,
    boot_timeout,
    kvm_usable,
)

SITE = "jabar-sukamaju"
CSV = ("site_id,name,village,region,timezone,ssid,passphrase,plans,uplink,broker\n"
       f'{SITE},Hotspot Desa Sukamaju,Desa Sukamaju,"Kab. Garut, Jawa Barat",WIB,'
       "Sukamaju Net,generate,,20mbit/5mbit,mqtts://mqtt.example.go.id:8883\n")
READY = r"desanet-boot-check: daemon READY"
CMDLINE = "net.ifnames=0 console=tty0 console=ttyS0,115200"  # mkdisk's default
# Under software emulation udev's coldplug alone can take minutes on a busy host: longer
# job timeouts (devices, the daemon's start), so a slow machine is not a failed boot.
TCG_TIMEOUTS = "systemd.default_timeout_start_sec=600"
CARD_SLACK = 256 << 20
BROKEN_UNIT = "[Service]\nExecStart=\nExecStart=/bin/false\n"  # the daemon never gets READY


@dataclass(frozen=True)
class Made:
    work: Path
    rootfs: Path
    disk: Path
    tech_key: Path
    host_pub: str
    update_key: Path
    update_pub: Path


def run(argv: list[str], timeout: float = 1200) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{argv[:2]}: {proc.stderr[-2000:]}"
    return proc.stdout


def partition(disk: Path, name: str) -> tuple[int, int]:
    table = json.loads(run(["sfdisk", "-J", str(disk)]))["partitiontable"]
    for p in table["partitions"]:
        if p.get("name") == name:
            return p["start"] * 512, p["size"] * 512
    raise AssertionError(f"no partition {name} on {disk}")


def flash(work: Path, rootfs: Path, board: list[str] | None = None,
          cmdline: str | None = None) -> Made:
    """A provisioned card: a bundle for SITE (fleet CA, operator and technician keys), an
    update key, and images/mkdisk's disk with the bundle on its ESP. ``board``: extra mkdisk
    arguments (the Raspberry Pi card), ``cmdline``: its kernel options."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "teknisi",
                    "-f", str(work / "tech")], check=True)
    ca = fleetca.init_ca(work / "ca", "desanet boot-test CA")
    op = Ed25519PrivateKey.generate()
    keys = [pbundle.OperatorKey("op.pub", public_key_text(op.public_key()))]
    pbundle.build(ca, parse_villages(CSV), keys, (work / "tech.pub").read_text(), work / "bundles")
    bundle = work / "bundles" / SITE / "desanet"
    host_pub = (bundle / "ssh/ssh_host_ed25519_key.pub").read_text().split()
    upd = Ed25519PrivateKey.generate()
    (work / "update.key").write_bytes(upd.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (work / "update.key.pub").write_text(public_key_text(upd.public_key()) + "\n")
    disk = work / "disk.img"
    run([sys.executable, str(ROOT / "images/mkdisk"), "--rootfs", str(rootfs), "--out", str(disk),
         "--bundle", str(bundle), "--version", "1", "--update-key", str(work / "update.key.pub"),
         "--cmdline", cmdline or (CMDLINE if kvm_usable() else CMDLINE + " " + TCG_TIMEOUTS),
         *(board or [])])
    return Made(work, rootfs, disk, work / "tech", f"{host_pub[0]} {host_pub[1]}",
                work / "update.key", work / "update.key.pub")


@contextlib.contextmanager
def gateway(made: Made, tmp: Path, stick: Path | None = None) -> Iterator[tuple[Vm, Ssh, Namespace]]:
    """A fresh copy of the flashed card in a VM of its own, with ``stick`` as /dev/vdb.
    The card is CARD_SLACK larger than the image, as a real card is."""
    disk = tmp / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(made.disk), str(disk)], check=True)
    with disk.open("r+b") as f:
        f.truncate(disk.stat().st_size + CARD_SLACK)
    ns = Namespace(os.urandom(3).hex())
    machine = Vm(disk, tmp, ns, stick=stick)
    try:
        yield machine, Ssh(ns, made.tech_key, made.host_pub, tmp), ns
    finally:
        machine.kill()
        ns.close()


def boot(machine: Vm, ssh: Ssh, slot: str = "a") -> None:
    """Start (or watch a reboot of) the VM until the daemon is READY and SSH answers."""
    console = machine.console or machine.start()
    since = console.mark()
    console.wait_for(rf"Command line: .*desanet\.slot={slot}\b", boot_timeout(),
                     f"the kernel of slot {slot}", since)
    console.wait_for(READY, boot_timeout(), "the daemon READY", since)
    wait_until(ssh.answers, 180, "SSH to answer")


def power(ssh: Ssh, action: str) -> None:
    """reboot / poweroff: queued (--no-block), so SSH returns; a connection cut by it is fine."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        ssh.run(f"systemctl --no-block {action}", timeout=60)


def vouchers(ssh: Ssh) -> set[str]:
    listed = json.loads(ssh.ok("desanet vouchers list --json"))
    rows = listed["vouchers"] if isinstance(listed, dict) else listed
    return {v["code"] for v in rows}


def mkupdate(made: Made, version: str, overlay: Path | list[Path] | None = None,
             compress: str = "none", rootfs: Path | None = None, arch: str = "amd64") -> Path:
    """A signed update bundle of ``rootfs`` (the image's by default), overlays laid on it."""
    out = made.work / f"v{version}.update"
    argv = [sys.executable, str(ROOT / "images/mkupdate"), "--rootfs", str(rootfs or made.rootfs),
            "--version", version, "--key", str(made.update_key),
            "--update-key", str(made.update_pub), "--compress", compress, "--arch", arch,
            "--out", str(out)]
    overlays = overlay if isinstance(overlay, list) else [overlay] if overlay else []
    for each in overlays:
        argv += ["--overlay", str(each)]
    run(argv)
    return out


def root_without_init(made: Made) -> Path:
    """A slot that cannot start: the image's kernel and initramfs, a root with no init. The
    initramfs finds nothing to run and reboots (panic=10): a failed boot, cheap to ship."""
    root = made.work / "no-init"
    if not root.exists():
        with tarfile.open(made.rootfs) as tar:
            boot = [m for m in tar.getmembers()
                    if m.isfile() and m.name.lstrip("./").startswith(("boot/vmlinuz-",
                                                                      "boot/initrd.img-"))]
            tar.extractall(root, members=boot, filter="data")
        (root / "usr/lib/systemd").mkdir(parents=True)
        (root / "usr/lib/systemd/systemd-bless-boot").touch()  # mkupdate's boot layer asks
        (root / "usr/lib/os-release").write_text('ID=debian\nPRETTY_NAME="no init"\n')
        (root / "etc").mkdir()
    return root


def write_stick(stick: Path, bundles: list[Path]) -> list[int]:
    """Bundles one after another on a raw stick image, each at a MiB boundary; their offsets."""
    offsets, at = [], 0
    with stick.open("wb") as out:
        for bundle in bundles:
            offsets.append(at)
            out.seek(at)
            out.write(bundle.read_bytes())
            at = -(-out.tell() // (1 << 20)) * (1 << 20)
    return offsets


def install_from_stick(ssh: Ssh, tries: int, offset: int = 0) -> str:
    """The bundle at ``offset`` of /dev/vdb (the tar's own end marks where it stops)."""
    if offset == 0:
        return ssh.ok(f"desanet update install --tries {tries} /dev/vdb", timeout=1800)
    return ssh.ok(f"tail -c +{offset + 1} /dev/vdb | desanet update install --tries {tries} -",
                  timeout=1800)
