"""The Raspberry Pi's A/B boot on real U-Boot: Debian's u-boot-rpi on QEMU's raspi3b.

The card is made by images/mkdisk --board rpi from a stand-in root whose
"kernels" are not kernels: U-Boot runs the card's boot.scr, which picks a slot
from desanet-boot.txt / desanet-tries.txt (counting a trial down on the FAT
partition), tries to boot it, fails, and resets; QEMU resets the board and the
next boot begins. So one run shows the sequence of slots a Pi would boot while
each new root keeps failing, and what the script wrote to the card. The state
files are written by the gateway's own code (gateway/update/ubootstate.py) and
copied onto the card with mtools, as `desanet update install|bless` would on a
running Pi. What this does not show: the Pi's own firmware (QEMU loads U-Boot
directly) and a Linux boot (the slow tier, tests/integration/test_image.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.update import slots, ubootstate
from tests.integration import bootkit as kit
from tests.integration.conftest import wait_until
from tests.integration.imagekit import built_image
from tests.integration.qemuvm import PORTAL, SSH_PORT, Namespace, SerialConsole, Ssh
from tests.unit.test_mkdisk_rpi import pi_root

ROOT = Path(__file__).resolve().parents[2]
PI_FILES = Path(os.environ.get("DESANET_RPI_FILES", "/var/cache/desanet-ci/rpi"))
UBOOT, DTB = PI_FILES / "u-boot.bin", PI_FILES / "bcm2837-rpi-3-b.dtb"
MT = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
BOOT_LINE = r"desanet-boot: slot ([ab]) \(good ([ab]), trial ([ab]?), tries left (\d+)\)"
ONE_BOOT = 120.0  # deadline per U-Boot boot (a second or two when the host is quiet)


def setup_missing() -> list[str]:
    tools = ["qemu-system-aarch64", "mkimage", "mcopy", "sfdisk", "mkfs.vfat", "mkfs.ext4"]
    missing = [t for t in tools if subprocess.run(["which", t], capture_output=True,
                                                  check=False).returncode != 0]
    return missing + [str(p) for p in (UBOOT, DTB) if not p.exists()]


@pytest.fixture
def card(tmp_path: Path) -> Path:
    missing = setup_missing()
    assert not missing, f"missing {', '.join(missing)}: run bash .ci/setup"
    pi_root(tmp_path / "rootfs")
    disk = tmp_path / "sd.img"
    proc = subprocess.run([sys.executable, str(ROOT / "images/mkdisk"), "--rootfs",
                           str(tmp_path / "rootfs"), "--out", str(disk), "--arch", "arm64",
                           "--board", "rpi", "--uboot", str(UBOOT), "--version", "1",
                           "--slot-size", "32M", "--esp-size", "40M", "--data-size", "16M"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    with disk.open("r+b") as f:
        f.truncate(128 << 20)  # QEMU's SD card wants a power-of-two size; a card is bigger
    return disk


def boot_offset(disk: Path) -> int:
    out = subprocess.run(["sfdisk", "-d", str(disk)], capture_output=True, text=True,
                         check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith(f"{disk}1 "))
    return int(line.split("start=")[1].split(",")[0]) * 512


def put_state(disk: Path, work: Path, change: str, *args: object) -> None:
    """Run ubootstate's ``change`` on a copy of the card's state files and copy them back."""
    state = work / "state"
    state.mkdir(exist_ok=True)
    at = f"{disk}@@{boot_offset(disk)}"
    for name in (ubootstate.BOOT_FILE, ubootstate.TRIES_FILE):
        subprocess.run(["mcopy", "-o", "-n", "-i", at, f"::{name}", str(state / name)],
                       env=MT, check=True)
    getattr(ubootstate, change)(state, *args)
    for name in (ubootstate.BOOT_FILE, ubootstate.TRIES_FILE):
        subprocess.run(["mcopy", "-o", "-i", at, str(state / name), f"::{name}"], env=MT,
                       check=True)


def read_state(disk: Path, work: Path) -> ubootstate.BootState:
    state = work / "read"
    state.mkdir(exist_ok=True)
    at = f"{disk}@@{boot_offset(disk)}"
    for name in (ubootstate.BOOT_FILE, ubootstate.TRIES_FILE):
        subprocess.run(["mcopy", "-o", "-n", "-i", at, f"::{name}", str(state / name)],
                       env=MT, check=True)
    return ubootstate.read(state)


class Board:
    """A Raspberry Pi 3 under QEMU with the card; the mini UART (U-Boot's console) read."""

    def __init__(self, disk: Path, work: Path, extra: list[str] | None = None,
                 netns: str | None = None) -> None:
        self.disk, self.work, self.extra = disk, work, extra or []
        self.prefix = ["ip", "netns", "exec", netns] if netns else []
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SerialConsole:
        sock_path = self.work / "pi-serial.sock"
        sock_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(sock_path))
        listener.listen(1)
        self.proc = subprocess.Popen(
            [*self.prefix, "qemu-system-aarch64", "-M", "raspi3b", "-m", "1G", "-kernel", str(UBOOT),
             "-dtb", str(DTB), "-drive", f"file={self.disk},if=sd,format=raw",
             "-display", "none", "-monitor", "none", "-serial", "null",
             "-chardev", f"socket,id=ser,path={sock_path}", "-serial", "chardev:ser",
             *self.extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=(self.work / "qemu-pi.err").open("ab"))
        listener.settimeout(60)
        try:
            conn, _ = listener.accept()
        finally:
            listener.close()
        conn.settimeout(None)
        self.console = SerialConsole(conn, self.work / "pi-serial.log")
        return self.console

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.console.close()


def boots(console: SerialConsole, count: int) -> Iterator[tuple[str, str, str, int]]:
    """The next ``count`` slot choices the boot script announces: (slot, good, trial, left)."""
    since = 0
    for n in range(count):
        m = console.wait_for(BOOT_LINE, ONE_BOOT, f"U-Boot's boot number {n + 1}", since)
        since = m.end()
        yield m.group(1), m.group(2), m.group(3), int(m.group(4))


def test_a_trial_slot_is_tried_three_times_then_the_good_slot_boots(
        card: Path, tmp_path: Path) -> None:
    # Positive control first: a new card boots slot a, with the kernel options for slot a.
    with Board(card, tmp_path) as console:
        assert next(boots(console, 1)) == ("a", "a", "", 0)
        args = console.wait_for(r"desanet-boot: bootargs (.*)", ONE_BOOT, "the bootargs")
    assert f"root=PARTUUID={slots.RPI_DISK_ID}-02 " in args.group(1)
    assert "desanet.slot=a desanet.loader=uboot" in args.group(1)
    assert "desanet.trial=1" not in args.group(1)

    put_state(card, tmp_path, "start_trial", "a", "b", 3)  # `desanet update install`
    with Board(card, tmp_path) as console:
        seen = list(boots(console, 4))
        args = console.wait_for(r"desanet-boot: bootargs (.*desanet\.slot=b.*)", ONE_BOOT,
                                "slot b's bootargs")
    assert seen == [("b", "a", "b", 2), ("b", "a", "b", 1), ("b", "a", "b", 0),
                    ("a", "a", "b", 0)]
    assert f"root=PARTUUID={slots.RPI_DISK_ID}-03 " in args.group(1)
    assert "desanet.trial=1" in args.group(1)
    state = read_state(card, tmp_path)
    assert state == ubootstate.BootState("a", "b", 0)
    assert state.describe("a")[1] == "  slot b: failed"  # what `desanet update status` says


def test_a_blessed_trial_stays_and_is_not_counted_any_more(card: Path, tmp_path: Path) -> None:
    put_state(card, tmp_path, "start_trial", "a", "b", 3)
    with Board(card, tmp_path) as console:
        assert next(boots(console, 1)) == ("b", "a", "b", 2)
    # Linux came up on b and its boot check passed: `desanet update bless`.
    put_state(card, tmp_path, "bless", "b")
    with Board(card, tmp_path) as console:
        seen = list(boots(console, 2))
    assert seen == [("b", "b", "", 0)] * 2  # no trial: the tries file is not even read
    assert read_state(card, tmp_path) == ubootstate.BootState("b", None, 2)


def test_a_tries_file_spoilt_by_a_power_cut_boots_the_good_slot(
        card: Path, tmp_path: Path) -> None:
    put_state(card, tmp_path, "start_trial", "a", "b", 3)
    junk = tmp_path / ubootstate.TRIES_FILE
    junk.write_bytes(b"desanet_tr\xff\xff\xff")  # U-Boot's fatwrite cut half-way
    subprocess.run(["mcopy", "-o", "-i", f"{card}@@{boot_offset(card)}", str(junk),
                    f"::{ubootstate.TRIES_FILE}"], env=MT, check=True)
    with Board(card, tmp_path) as console:
        assert list(boots(console, 2)) == [("a", "a", "b", 0)] * 2


# -- Debian's arm64 gateway booted on the emulated Pi (slow tier) ------------------------------

# QEMU's raspi3b resets the board as soon as the kernel arms the BCM2835 watchdog (it does
# not emulate the countdown), so emulated boots leave its driver out; on a Pi it stays.
PI_CMDLINE = ("net.ifnames=0 console=tty0 console=ttyS1,115200 "
              "modprobe.blacklist=bcm2835_wdt " + kit.TCG_TIMEOUTS)
PI_BOOT = 2400.0  # U-Boot reads ~70 MB of kernel + initrd at <1 MB/s, then a TCG boot
# Two USB Ethernet adapters (the Pi 3's own is not emulated): eth0 the WAN on QEMU's user
# network with SSH forwarded, eth1 the LAN on the namespace's tap. Globally administered
# MACs, so the kernel names them eth* as on the box.
PI_NICS = ["-netdev", f"user,id=wan,hostfwd=tcp:127.0.0.1:{SSH_PORT}-:22",
           "-device", "usb-net,netdev=wan,mac=00:16:3e:00:0a:01",
           "-netdev", "tap,id=lan,ifname=lan0,script=no,downscript=no",
           "-device", "usb-net,netdev=lan,mac=00:16:3e:00:0b:01"]


def pi_rootfs() -> Path:
    given = os.environ.get("DESANET_TEST_ROOTFS_ARM64")  # an arm64 rootfs.tar built before
    return Path(given) if given else built_image("arm64") / "rootfs.tar"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("DESANET_SLOW"),
                    reason="slow tier: set DESANET_SLOW=1 (arm64 image, Pi boots under TCG)")
def test_pi_card_boots_the_gateway_and_a_bad_update_falls_back(tmp_path: Path) -> None:
    missing = setup_missing()
    assert not missing, f"missing {', '.join(missing)}: run bash .ci/setup"
    # Under emulation udev may take minutes to announce the card's partitions; systemd
    # 252 has no kernel option for the device timeout (90 s), so the emulated card gets a
    # longer one in system.conf.d.
    slow = tmp_path / "emulated"
    (slow / "etc/systemd/system.conf.d").mkdir(parents=True)
    (slow / "etc/systemd/system.conf.d/50-emulated.conf").write_text(
        "[Manager]\nDefaultDeviceTimeoutSec=900\n")
    made = kit.flash(tmp_path, pi_rootfs(), cmdline=PI_CMDLINE,
                     board=["--arch", "arm64", "--board", "rpi", "--uboot", str(UBOOT),
                            "--overlay", str(slow)])
    with made.disk.open("r+b") as f:
        f.truncate(4 << 30)  # a power-of-two card, larger than the image
    bad = kit.mkupdate(made, "2", rootfs=kit.root_without_init(made), arch="arm64")
    ns = Namespace(os.urandom(3).hex())
    ssh = Ssh(ns, made.tech_key, made.host_pub, tmp_path)
    try:
        with Board(made.disk, tmp_path, PI_NICS, ns.name) as console:
            console.wait_for(r"desanet-boot: slot a \(good a", PI_BOOT, "U-Boot choosing slot a")
            console.wait_for(kit.READY, PI_BOOT, "the daemon READY on the Pi")
            wait_until(lambda: ssh.run("true", timeout=60).returncode == 0, 300, "SSH")
            assert ssh.ok("systemctl is-active desanet.service").strip() == "active"
            assert "desanet.loader=uboot" in ssh.ok("cat /proc/cmdline")
            assert "slot a: good" in ssh.ok("desanet update status")
            assert ssh.ok("findmnt -no SOURCE /boot/efi").strip().endswith("p1")
            page = ns.run(["curl", "-sS", "-m", "60", "-L", f"http://{PORTAL}/"], timeout=120)
            assert page.returncode == 0 and b"Sukamaju" in page.stdout, page.stderr
            with bad.open("rb") as f:
                out = ssh.ok("desanet update install --tries 2 -", timeout=1800, stdin=f)
            assert "installed: 2 in slot b" in out
            assert "slot b: trial, 2 tries left" in ssh.ok("desanet update status")
            since = console.mark()
            kit.power(ssh, "reboot")
            for left in (1, 0):
                m = console.wait_for(r"desanet-boot: slot b \(good a, trial b, tries left (\d)\)",
                                     PI_BOOT, f"U-Boot trying slot b ({left} left)", since)
                assert int(m.group(1)) == left
                since = console.wait_for(r"Rebooting automatically due to panic= boot argument",
                                         PI_BOOT, "the initramfs giving up on slot b",
                                         m.end()).end()
            console.wait_for(r"desanet-boot: slot a \(good a, trial b", PI_BOOT,
                             "U-Boot back on slot a", since)
            console.wait_for(kit.READY, PI_BOOT, "the daemon READY on slot a again", since)
            wait_until(lambda: ssh.run("true", timeout=60).returncode == 0, 300, "SSH again")
            assert 'IMAGE_VERSION="1"' in ssh.ok("cat /etc/os-release")
            assert "slot b: failed" in ssh.ok("desanet update status")
    finally:
        ns.close()
