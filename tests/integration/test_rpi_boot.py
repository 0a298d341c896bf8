"""The Raspberry Pi's A/B boot on real U-Boot: Debian's u-boot-rpi on QEMU's raspi3b.

The card is made by images/mkdisk --board rpi from a stand-in root whose
"kernels" are not kernels: U-Boot runs the card's boot.scr, which picks a slot
from its state files (EFI/desanet/state/; counting a trial down on the FAT
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
from tests.integration.imagekit import built_image
from tests.integration.qemuvm import SerialConsole
from tests.unit.test_mkdisk import UPDATE_PUB
from tests.unit.test_mkdisk_rpi import pi_root

ROOT = Path(__file__).resolve().parents[2]
PI_FILES = Path(os.environ.get("DESANET_RPI_FILES", "/var/cache/desanet-ci/rpi"))
UBOOT, DTB = PI_FILES / "u-boot.bin", PI_FILES / "bcm2837-rpi-3-b.dtb"
MT = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
BOOT_LINE = r"desanet-boot: slot ([ab]) \(good ([ab]), trial ([ab]?), tries left (\d+)\)"
# The kernel options U-Boot passes, captured only once their line is whole: the console is
# read as it arrives, and a match on half a line once made the test see "root=PA".
BOOTARGS = r"desanet-boot: bootargs ([^\r\n]*)\r?\n"
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
    (tmp_path / "update.pub").write_text(UPDATE_PUB)
    proc = subprocess.run([sys.executable, str(ROOT / "images/mkdisk"), "--rootfs",
                           str(tmp_path / "rootfs"), "--out", str(disk), "--arch", "arm64",
                           "--board", "rpi", "--uboot", str(UBOOT), "--version", "1",
                           "--update-key", str(tmp_path / "update.pub"),
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


STATE_FILES = (ubootstate.BOOT_FILE, ubootstate.BOOT_COPY, ubootstate.TRIES_FILE)


def copy_out(disk: Path, dest: Path) -> None:
    """The card's state files into ``dest`` (same relative paths)."""
    at = f"{disk}@@{boot_offset(disk)}"
    for name in STATE_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mcopy", "-o", "-n", "-i", at, f"::{name}", str(dest / name)],
                       env=MT, check=True)


def copy_in(src: Path, disk: Path, names: tuple[str, ...] = STATE_FILES) -> None:
    at = f"{disk}@@{boot_offset(disk)}"
    for name in names:
        parent = str(Path(name).parent)
        if parent != ".":  # mmd -D s: an existing directory is fine
            subprocess.run(["mmd", "-D", "s", "-i", at, f"::{parent}"], env=MT,
                           capture_output=True, check=False)
        subprocess.run(["mcopy", "-o", "-i", at, str(src / name), f"::{name}"], env=MT,
                       check=True)


def put_state(disk: Path, work: Path, change: str, *args: object) -> None:
    """Run ubootstate's ``change`` on a copy of the card's state files and copy them back."""
    state = work / "state"
    copy_out(disk, state)
    getattr(ubootstate, change)(state, *args)
    copy_in(state, disk)


def read_state(disk: Path, work: Path) -> ubootstate.BootState:
    state = work / "read"
    copy_out(disk, state)
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
        args = console.wait_for(BOOTARGS, ONE_BOOT, "the bootargs")
    assert f"root=PARTUUID={slots.RPI_DISK_ID}-02 " in args.group(1)
    assert "desanet.slot=a desanet.loader=uboot" in args.group(1)
    assert "desanet.trial=1" not in args.group(1)

    put_state(card, tmp_path, "start_trial", "a", "b", 3)  # `desanet update install`
    with Board(card, tmp_path) as console:
        seen = list(boots(console, 4))
        args = console.wait_for(r"desanet-boot: bootargs ([^\r\n]*desanet\.slot=b[^\r\n]*)\r?\n",
                                ONE_BOOT, "slot b's bootargs")
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
    junk = tmp_path / "junk"
    (junk / ubootstate.TRIES_FILE).parent.mkdir(parents=True)
    (junk / ubootstate.TRIES_FILE).write_bytes(b"desanet_tr\xff\xff\xff")  # fatwrite cut
    copy_in(junk, card, (ubootstate.TRIES_FILE,))
    with Board(card, tmp_path) as console:
        assert list(boots(console, 2)) == [("a", "a", "b", 0)] * 2


def test_an_emptied_boot_file_falls_back_to_its_copy(card: Path, tmp_path: Path) -> None:
    """Slot b is good; a power cut left boot.txt empty (vfat's renamed file without its
    size): U-Boot reads the copy and boots b, not the factory default a."""
    put_state(card, tmp_path, "start_trial", "a", "b", 1)
    put_state(card, tmp_path, "bless", "b")
    with Board(card, tmp_path) as console:
        assert next(boots(console, 1)) == ("b", "b", "", 0)  # positive control
    empty = tmp_path / "empty"
    (empty / ubootstate.BOOT_FILE).parent.mkdir(parents=True)
    (empty / ubootstate.BOOT_FILE).write_bytes(b"")
    copy_in(empty, card, (ubootstate.BOOT_FILE,))
    with Board(card, tmp_path) as console:
        assert next(boots(console, 1)) == ("b", "b", "", 0)


# -- Debian's arm64 gateway booted on the emulated Pi (slow tier) ------------------------------

PI_CMDLINE = "net.ifnames=0 console=tty0 console=ttyS1,115200 " + kit.TCG_TIMEOUTS
PI_BOOT = 2400.0  # U-Boot reads ~70 MB of kernel + initrd at <1 MB/s, then a TCG boot
CARD = 4 << 30  # QEMU's SD card: a power of two, larger than the image
PARTITION = {"a": 2, "b": 3}  # the root slots on the MBR card (1 boot, 4 data)


def pi_rootfs() -> Path:
    given = os.environ.get("DESANET_TEST_ROOTFS_ARM64")  # an arm64 rootfs.tar built before
    return Path(given) if given else built_image("arm64") / "rootfs.tar"


def mbr_partition(disk: Path, number: int) -> tuple[int, int]:
    """(offset, size) in bytes of partition ``number`` of an MBR disk image."""
    out = subprocess.run(["sfdisk", "-d", str(disk)], capture_output=True, text=True,
                         check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith(f"{disk}{number} "))
    start = int(line.split("start=")[1].split(",")[0])
    size = int(line.split("size=")[1].split(",")[0])
    return start * 512, size * 512


def install_on_card(made: kit.Made, bundle: Path, tries: int,
                    monkeypatch: pytest.MonkeyPatch, running: str = "a") -> str:
    """``desanet update install`` (the gateway's own code, its U-Boot branch) run on this
    host against the powered-off card, as the Pi running slot ``running`` would: the other
    slot written at its PARTUUID, kernel and initrd and the trial state on the FAT partition.
    The emulated Pi has no network (after U-Boot, Debian's dwc2 driver finds no device on
    QEMU's raspi3b USB; booted without U-Boot it does), so the bundle cannot reach it over
    SSH. Returns the slot written."""
    from gateway.update import install as inst

    target = slots.other(running)
    stage = made.work / "pi-install"
    subprocess.run(["rm", "-rf", str(stage)], check=True)
    boot, parts, keys = stage / "boot", stage / "by-partuuid", stage / "keys"
    for d in (boot, parts, keys):
        d.mkdir(parents=True)
    copy_out(made.disk, boot)
    offset, size = mbr_partition(made.disk, PARTITION[target])
    slot = parts / slots.rpi_part_uuid(target)
    with slot.open("wb") as f:
        f.truncate(size)
    (keys / "update.pub").write_bytes(made.update_pub.read_bytes())
    (stage / "cmdline").write_text(f"root=PARTUUID={slots.rpi_part_uuid(running)} ro "
                                   f"desanet.slot={running} desanet.loader=uboot {PI_CMDLINE}\n")
    (stage / "os-release").write_text('IMAGE_VERSION="1"\n')
    monkeypatch.setattr(inst, "machine_arch", lambda: "arm64")  # this host plays the Pi
    paths = inst.Paths(esp=boot, devices=stage / "none", partuuids=parts,
                       cmdline=stage / "cmdline", keys=[keys], os_release=stage / "os-release")
    with bundle.open("rb") as f:
        assert inst.install(f, paths, tries)[0] == target
    subprocess.run(["dd", f"if={slot}", f"of={made.disk}", "bs=1M", "conv=notrunc,sparse",
                    f"seek={offset}", "oflag=seek_bytes", "status=none"], check=True)
    copy_in(boot, made.disk, (f"EFI/desanet/{target}/vmlinuz", f"EFI/desanet/{target}/initrd.img",
                              *STATE_FILES))
    return target


def emulated_board(tmp_path: Path) -> Path:
    """What the emulated board lacks, laid over the card's root (and over every update
    booted here) for these tests only: under emulation udev may take minutes to announce
    the card's partitions (systemd 252 has no kernel option for the 90 s device timeout);
    QEMU's raspi3b resets the board the moment the BCM2835 watchdog is armed (it does not
    count down), so systemd leaves it unarmed (the kernel still reboots through it); and
    there is no Ethernet port (QEMU's raspi3b USB works for Linux only without U-Boot
    before it), so a dummy eth0 stands in for the Pi's port: the daemon needs its WAN."""
    slow = tmp_path / "emulated"
    (slow / "etc/systemd/system.conf.d").mkdir(parents=True)
    (slow / "etc/systemd/system.conf.d/90-emulated.conf").write_text(
        "[Manager]\nDefaultDeviceTimeoutSec=900\nRuntimeWatchdogSec=0\n")
    (slow / "etc/systemd/network").mkdir(parents=True)
    (slow / "etc/systemd/network/05-emulated-eth0.netdev").write_text(
        "[NetDev]\nName=eth0\nKind=dummy\n")
    return slow


def pi_card(tmp_path: Path) -> tuple[kit.Made, Path]:
    """The gateway's arm64 card for the emulated Pi, and the overlay it was made with."""
    missing = setup_missing()
    assert not missing, f"missing {', '.join(missing)}: run bash .ci/setup"
    board = emulated_board(tmp_path)
    made = kit.flash(tmp_path, pi_rootfs(), cmdline=PI_CMDLINE,
                     board=["--arch", "arm64", "--board", "rpi", "--uboot", str(UBOOT),
                            "--overlay", str(board)])
    return made, board


SLOW_PI = pytest.mark.skipif(not os.environ.get("DESANET_SLOW"),
                             reason="slow tier: set DESANET_SLOW=1 (arm64 image, Pi boots "
                                    "under TCG)")


@pytest.mark.slow
@SLOW_PI
def test_pi_card_boots_the_gateway_and_a_bad_update_falls_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made, _ = pi_card(tmp_path)
    image_size = made.disk.stat().st_size
    _, image_data = mbr_partition(made.disk, 4)
    with made.disk.open("r+b") as f:
        f.truncate(CARD)
    with Board(made.disk, tmp_path) as console:
        console.wait_for(r"desanet-boot: slot a \(good a", PI_BOOT, "U-Boot choosing slot a")
        console.wait_for(r"Kernel command line: .*desanet\.slot=a desanet\.loader=uboot",
                         PI_BOOT, "Debian's kernel started by U-Boot")
        # No clock battery, no network: the import raises the clock to the bundle's time.
        console.wait_for(kit.READY, PI_BOOT, "the daemon READY on the Pi")
    # The data partition reaches the end of the card and the filesystem fills it.
    offset, size = mbr_partition(made.disk, 4)
    assert CARD - (4 << 20) < offset + size <= CARD and size > image_data
    stats = subprocess.run(["dumpe2fs", "-h", f"{made.disk}?offset={offset}"],
                           capture_output=True, text=True, check=False).stdout
    blocks = int(next(ln for ln in stats.splitlines() if ln.startswith("Block count:"))
                 .split()[-1])
    assert blocks * 4096 > image_data + (CARD - image_size) * 3 // 4, (blocks, image_data)
    # QEMU was killed (a power cut): replay the journal on a copy, check it, read the record.
    data = tmp_path / "data.img"
    subprocess.run(["dd", f"if={made.disk}", f"of={data}", "bs=1M", "conv=sparse",
                    f"skip={offset}", f"count={size}", "iflag=skip_bytes,count_bytes",
                    "status=none"], check=True)
    replay = subprocess.run(["e2fsck", "-fy", str(data)], capture_output=True, text=True,
                            check=False)
    assert replay.returncode in (0, 1), replay.stdout + replay.stderr  # 1: journal replayed
    fsck = subprocess.run(["e2fsck", "-fn", str(data)], capture_output=True, text=True,
                          check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    record = subprocess.run(["debugfs", "-R", "cat /lib-desanet/provisioned.json", str(data)],
                            capture_output=True, text=True, check=False).stdout
    data.unlink()
    assert '"site": "jabar-sukamaju"' in record  # the bundle was imported

    bad = kit.mkupdate(made, "2", rootfs=kit.root_without_init(made), arch="arm64")
    install_on_card(made, bad, 2, monkeypatch)
    assert read_state(made.disk, tmp_path) == ubootstate.BootState("a", "b", 2)
    with Board(made.disk, tmp_path) as console:
        since = 0
        for left in (1, 0):
            m = console.wait_for(r"desanet-boot: slot b \(good a, trial b, tries left (\d)\)",
                                 PI_BOOT, f"U-Boot trying slot b ({left} left)", since)
            assert int(m.group(1)) == left
            since = console.wait_for(r"Rebooting automatically due to panic= boot argument",
                                     PI_BOOT, "the initramfs giving up on slot b", m.end()).end()
        m = console.wait_for(r"desanet-boot: slot a \(good a, trial b", PI_BOOT,
                             "U-Boot back on slot a", since)
        console.wait_for(kit.READY, PI_BOOT, "the daemon READY on slot a again", m.end())
    state = read_state(made.disk, tmp_path)
    assert state == ubootstate.BootState("a", "b", 0)
    assert state.describe("a")[1] == "  slot b: failed"


@pytest.mark.slow
@SLOW_PI
def test_pi_card_boots_a_good_update_keeps_it_and_a_daemon_never_ready_falls_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made, board = pi_card(tmp_path)
    with made.disk.open("r+b") as f:
        f.truncate(CARD)
    # A good update (the same root, as a new version), installed before the first boot:
    # the card's first start is the trial of slot b, which imports the bundle, gets READY
    # and is marked good by the boot check.
    good = kit.mkupdate(made, "2", board, arch="arm64")
    assert install_on_card(made, good, 2, monkeypatch) == "b"
    with Board(made.disk, tmp_path) as console:
        m = console.wait_for(r"desanet-boot: slot b \(good a, trial b, tries left 1\)",
                             PI_BOOT, "U-Boot trying slot b")
        m = console.wait_for(r"Kernel command line: .*desanet\.slot=b desanet\.loader=uboot "
                             r"desanet\.trial=1", PI_BOOT, "slot b's kernel, on trial", m.end())
        m = console.wait_for(kit.READY, PI_BOOT, "the daemon READY on slot b", m.end())
        console.wait_for(r"slot b: marked good", PI_BOOT, "desanet update bless", m.end())
    blessed = read_state(made.disk, tmp_path)
    assert (blessed.good, blessed.trial) == ("b", None), blessed  # the tries left do not count

    # Then an update whose daemon never gets READY, into slot a from the running b, with
    # one try: the boot check gives up after 3 starts and reboots; U-Boot, the try used,
    # starts b again, which stays good (it was blessed) and gets READY.
    broken = made.work / "no-daemon"
    subprocess.run(["cp", "-a", f"{board}/.", str(broken)], check=True)
    (broken / "usr/lib/systemd/system/desanet.service.d").mkdir(parents=True)
    (broken / "usr/lib/systemd/system/desanet.service.d/99-broken.conf").write_text(
        kit.BROKEN_UNIT)
    never_ready = kit.mkupdate(made, "3", broken, arch="arm64")
    assert install_on_card(made, never_ready, 1, monkeypatch, running="b") == "a"
    assert read_state(made.disk, tmp_path) == ubootstate.BootState("b", "a", 1)
    with Board(made.disk, tmp_path) as console:
        m = console.wait_for(r"desanet-boot: slot a \(good b, trial a, tries left 0\)",
                             PI_BOOT, "U-Boot trying slot a")
        m = console.wait_for(r"desanet-boot-check: daemon not READY after 3 starts", PI_BOOT,
                             "the boot check giving up on the daemon", m.end())
        m = console.wait_for(r"trial boot failed; rebooting", PI_BOOT,
                             "the boot check rebooting the trial", m.end())
        m = console.wait_for(r"desanet-boot: slot b \(good b, trial a, tries left 0\)",
                             PI_BOOT, "U-Boot back on slot b", m.end())
        console.wait_for(kit.READY, PI_BOOT, "the daemon READY on slot b again", m.end())
    state = read_state(made.disk, tmp_path)
    assert state == ubootstate.BootState("b", "a", 0)
    assert state.describe("b")[1] == "  slot a: failed"
