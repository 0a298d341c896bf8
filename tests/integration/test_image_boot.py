"""Boot the amd64 gateway image under QEMU: first boot, power cut, A/B update with fallback.

The disk is images/mkdisk's, from the run's one images/build (imagekit), with a
provisioning bundle of provisioning/'s on the ESP. What a village depends on:
the daemon reaches READY from a flashed card by itself, the portal answers on
the LAN, the bundle's secrets are gone from the FAT partition, a power cut in
the middle of writes loses nothing that was committed and leaves the data
partition clean, a bad update comes back to the old version by itself, and a
good one stays. Accelerator: KVM when it is real (seconds per boot); with only
software emulation (TCG, minutes per boot) the tests are in the slow tier.
DESANET_TEST_ROOTFS=path/rootfs.tar boots that rootfs instead of building one.
Under TCG on a busy 2-core host one boot to READY took 5-8 min, the first test
about 25 min, and the update test over an hour (the 873 MiB bundle streams over
SSH into the emulated guest at under 1 MB/s); with KVM each is a few minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.telemetry.commands import public_key_text
from gateway.update import slots
from provisioning import bundle as pbundle
from provisioning import ca as fleetca
from provisioning.villages import parse_villages
from tests.integration import imagekit
from tests.integration.conftest import ROOT, require_root, require_tools, wait_until
from tests.integration.qemuvm import (
    PORTAL,
    Namespace,
    Ssh,
    Vm,
    boot_timeout,
    kvm_usable,
    tools_missing,
)

pytestmark = [
    pytest.mark.integration, require_root, require_tools("mmdebstrap", *tools_missing()),
    pytest.mark.skipif(not kvm_usable() and not os.environ.get("DESANET_SLOW"),
                       reason="no usable KVM here (software emulation takes minutes per boot): "
                              "slow tier, set DESANET_SLOW=1"),
]
if not kvm_usable():
    pytestmark.append(pytest.mark.slow)

SITE = "jabar-sukamaju"
CSV = ("site_id,name,village,region,timezone,ssid,passphrase,plans,uplink,broker\n"
       f'{SITE},Hotspot Desa Sukamaju,Desa Sukamaju,"Kab. Garut, Jawa Barat",WIB,'
       "Sukamaju Net,generate,,20mbit/5mbit,mqtts://mqtt.example.go.id:8883\n")
READY = r"desanet-boot-check: daemon READY"
CMDLINE = "net.ifnames=0 console=tty0 console=ttyS0,115200"  # mkdisk's default
# Under software emulation udev's coldplug alone can take minutes on a busy host: longer
# job timeouts (devices, the daemon's start), so a slow machine is not a failed boot.
TCG_TIMEOUTS = "systemd.default_timeout_start_sec=600"
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


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    work = tmp_path_factory.mktemp("boot", numbered=True)
    given = os.environ.get("DESANET_TEST_ROOTFS")  # a rootfs.tar built before (e.g. a release)
    rootfs = Path(given) if given else imagekit.built_image("amd64") / "rootfs.tar"
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
         "--cmdline", CMDLINE if kvm_usable() else CMDLINE + " " + TCG_TIMEOUTS])
    return Made(work, rootfs, disk, work / "tech", f"{host_pub[0]} {host_pub[1]}",
                work / "update.key", work / "update.key.pub")


@pytest.fixture
def vm(made: Made) -> Iterator[tuple[Vm, Ssh, Namespace]]:
    ns = Namespace(os.urandom(3).hex())
    machine = Vm(made.disk, made.work, ns)
    try:
        yield machine, Ssh(ns, made.tech_key, made.host_pub, made.work), ns
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
    wait_until(lambda: ssh.run("true", timeout=60).returncode == 0, 120, "SSH to answer")


def power(ssh: Ssh, action: str) -> None:
    """reboot / poweroff: queued (--no-block), so SSH returns; a connection cut by it is fine."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        ssh.run(f"systemctl --no-block {action}", timeout=60)


def vouchers(ssh: Ssh) -> set[str]:
    listed = json.loads(ssh.ok("desanet vouchers list --json"))
    rows = listed["vouchers"] if isinstance(listed, dict) else listed
    return {v["code"] for v in rows}


def test_first_boot_ready_portal_secrets_gone_and_power_cut_keeps_commits(
        made: Made, vm: tuple[Vm, Ssh, Namespace]) -> None:
    machine, ssh, ns = vm
    boot(machine, ssh)  # StrictHostKeyChecking: the host key is the bundle's
    assert ssh.ok("systemctl is-active desanet.service").strip() == "active"
    assert json.loads(ssh.ok("cat /var/lib/desanet/provisioned.json"))
    left = ssh.ok("find /boot/efi/desanet -type f -printf '%P\\n'").split()
    for secret in ("gateway.toml", "mqtt/device.key", "ssh/ssh_host_ed25519_key"):
        assert secret not in left, f"{secret} still on the ESP: {left}"
    assert "manifest.json" in left  # positive control: the bundle itself is still there
    page = ns.run(["curl", "-sS", "-m", "30", "-L", f"http://{PORTAL}/"], timeout=60)
    assert page.returncode == 0, page.stderr
    assert b"Sukamaju" in page.stdout  # the portal, on the LAN side, with the site's name

    # Writes in flight, then the power cut: every voucher the daemon answered for survives.
    writer = ssh.popen("while :; do desanet vouchers create --count 1 --duration 1d --json "
                       "|| exit 1; done")
    assert writer.stdout is not None
    committed: set[str] = set()
    while len(committed) < 5:
        line = writer.stdout.readline()
        assert line, "the writer stopped"
        committed |= set(re.findall(r'"code":\s*"([^"]+)"', line.decode()))
    machine.kill()  # mid-write: the writer loop is still creating vouchers
    writer.kill()
    writer.wait()

    boot(machine, ssh)
    assert committed <= vouchers(ssh)
    assert "rw" in ssh.ok("findmnt -no OPTIONS /data").split(",")
    assert "EXT4-fs error" not in ssh.ok("journalctl -k -o cat")
    power(ssh, "poweroff")
    machine.wait_stopped(boot_timeout())
    off, size = partition(made.disk, slots.DATA_LABEL)
    data = made.work / "data.img"
    with made.disk.open("rb") as src, data.open("wb") as dst:
        src.seek(off)
        dst.write(src.read(size))
    fsck = subprocess.run(["e2fsck", "-fn", str(data)], capture_output=True, text=True,
                          check=False)
    data.unlink()
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def mkupdate(made: Made, version: str, overlay: Path | None) -> Path:
    out = made.work / f"v{version}.update"
    argv = [sys.executable, str(ROOT / "images/mkupdate"), "--rootfs", str(made.rootfs),
            "--version", version, "--key", str(made.update_key),
            "--update-key", str(made.update_pub), "--out", str(out)]
    run(argv + (["--overlay", str(overlay)] if overlay else []))
    return out


def install(ssh: Ssh, bundle: Path, tries: int) -> str:
    with bundle.open("rb") as f:
        return ssh.ok(f"desanet update install --tries {tries} -", timeout=1800, stdin=f)


def test_bad_update_falls_back_by_itself_and_a_good_one_stays(
        made: Made, vm: tuple[Vm, Ssh, Namespace]) -> None:
    broken = made.work / "broken"
    (broken / "usr/lib/systemd/system/desanet.service.d").mkdir(parents=True, exist_ok=True)
    (broken / "usr/lib/systemd/system/desanet.service.d/99-broken.conf").write_text(BROKEN_UNIT)
    bad, good = mkupdate(made, "2", broken), mkupdate(made, "3", None)
    machine, ssh, _ = vm
    boot(machine, ssh)
    before = vouchers(ssh)
    assert "installed: 2 in slot b" in install(ssh, bad, tries=1)
    console = machine.console
    assert console is not None
    since = console.mark()
    power(ssh, "reboot")
    console.wait_for(r"Command line: .*desanet\.slot=b\b", boot_timeout(), "the trial of b", since)
    console.wait_for(r"trial boot failed; rebooting", boot_timeout(), "the failed trial", since)
    boot(machine, ssh, "a")  # back on the old version without anyone touching it
    assert 'IMAGE_VERSION="1"' in ssh.ok("cat /etc/os-release")
    status = ssh.ok("desanet update status")
    assert "desanet-b+0-1.conf: slot b, failed" in status and "desanet-a.conf" in status
    assert vouchers(ssh) == before  # the data partition went through it all

    assert "installed: 3 in slot b" in install(ssh, good, tries=2)
    power(ssh, "reboot")
    boot(machine, ssh, "b")
    assert 'IMAGE_VERSION="3"' in ssh.ok("cat /etc/os-release")
    wait_until(lambda: "desanet-b.conf: slot b, good" in ssh.ok("desanet update status"), 600,
               "systemd-bless-boot to mark slot b good")
    assert vouchers(ssh) == before
    power(ssh, "reboot")
    boot(machine, ssh, "b")  # blessed: it stays
    assert ssh.ok("ls /boot/efi/loader/entries").split() == ["desanet-a.conf", "desanet-b.conf"]
