"""A gateway disk image booted under QEMU, for the boot tests (tests/integration/test_image.py).

The VM has the firmware a mini-PC has (OVMF: UEFI, so systemd-boot runs as on
the box), a virtio disk, and two NICs: eth0 (WAN) on QEMU's user network, with
SSH forwarded to 127.0.0.1:2222, and eth1 (LAN) on a tap device. QEMU runs in
a network namespace of the test's own, where the tap is the villagers' side
(10.42.0.2/24) and the forwarded SSH port lives: nothing reaches the host's
network, and two runs never share a name.

The serial console comes to a socket this module listens on before QEMU starts
(QEMU connects as the client), read by a thread; ``wait_for`` blocks on a
condition variable until a line matches or the deadline passes (no polling).
Only whole lines are matched: a pattern never sees half a line (a capture once
read "root=PA" of a line still arriving), nor an escape sequence or a UTF-8
character cut in two by the socket.
A power cut is ``kill()``: SIGKILL to QEMU, the disk file keeps what reached it.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

OVMF = Path("/usr/share/ovmf/OVMF.fd")
NS_PREFIX = "dsnboot-"
SSH_PORT = 2222
LAN_HOST = "10.42.0.2/24"
PORTAL = "10.42.0.1"
_ANSI = re.compile(r"\x1b\[[0-9;?=]*[A-Za-z]|\r")


def kvm_usable() -> bool:
    """Real KVM: /dev/kvm, and not PVM (kvm_pvm runs only PVM-aware guest kernels, no firmware)."""
    forced = os.environ.get("DESANET_QEMU_ACCEL")
    if forced:
        return forced == "kvm"
    return os.access("/dev/kvm", os.R_OK | os.W_OK) and not Path("/sys/module/kvm_pvm").exists()


def accel_args() -> list[str]:
    if kvm_usable():
        return ["-machine", "q35,accel=kvm", "-cpu", "host"]
    return ["-machine", "q35,accel=tcg", "-cpu", "max"]


def boot_timeout() -> float:
    """Deadline for one boot to READY: a KVM boot takes seconds, TCG minutes on a busy host."""
    return 180.0 if kvm_usable() else 900.0


def sweep_namespaces() -> None:
    """Remove namespaces of earlier runs whose pytest is gone (a crashed run's leftovers)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(NS_PREFIX):
            pid = name.removeprefix(NS_PREFIX).split("-")[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


class Namespace:
    """The LAN side: a netns with loopback up and the tap QEMU's eth1 is wired to."""

    def __init__(self, tag: str) -> None:
        sweep_namespaces()
        self.name = f"{NS_PREFIX}{os.getpid()}-{tag}"
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "tuntap", "add", "dev", "lan0", "mode", "tap"],
                    ["ip", "addr", "add", LAN_HOST, "dev", "lan0"],
                    ["ip", "link", "set", "lan0", "up"]):
            self.run(cmd, check=True)

    def run(self, argv: list[str], check: bool = False, timeout: float = 60.0,
            stdin: IO[bytes] | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True,
                              check=check, timeout=timeout,
                              stdin=stdin if stdin is not None else subprocess.DEVNULL)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)


class SerialConsole:
    """Everything the VM prints on ttyS0, ANSI-stripped, with waits on what arrives."""

    def __init__(self, sock: socket.socket, log: Path) -> None:
        self.text = ""  # whole lines only, ANSI-stripped
        self._partial = ""  # what has arrived of the line still being printed
        self._cond = threading.Condition()
        self._closed = False
        self._log = log.open("a", encoding="utf-8", errors="replace")
        self._thread = threading.Thread(target=self._read, args=(sock,), daemon=True)
        self._thread.start()

    def _read(self, sock: socket.socket) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        with sock:
            while chunk := sock.recv(65536):
                self._arrived(decoder.decode(chunk))
        self._arrived(decoder.decode(b"", final=True) + "\n")  # the last line, however short
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _arrived(self, text: str) -> None:
        pending = self._partial + text
        cut = pending.rfind("\n") + 1
        self._partial = pending[cut:]
        if not cut:
            return
        lines = _ANSI.sub("", pending[:cut])
        self._log.write(lines)
        self._log.flush()
        with self._cond:
            self.text += lines
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.text)

    def wait_for(self, pattern: str, timeout: float, what: str, since: int = 0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search(self.text, since)
                if m:
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    tail = self.text[-3000:] + _ANSI.sub("", self._partial)
                    why = "the VM stopped" if self._closed else f"{timeout:g} s passed"
                    raise AssertionError(f"{why} waiting for {what} ({pattern!r}); "
                                         f"console tail:\n{tail}")
                self._cond.wait(left)

    def close(self) -> None:
        self._log.close()


@dataclass
class Vm:
    disk: Path
    workdir: Path
    ns: Namespace
    memory_mb: int = 1024
    # A second disk (/dev/vdb, read-only): an update bundle handed over as a USB stick would
    # be, instead of streamed over SSH (873 MiB into an emulated guest takes many minutes).
    stick: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    console: SerialConsole | None = None

    def start(self) -> SerialConsole:
        assert self.proc is None, "already running"
        sock_path = self.workdir / "serial.sock"
        sock_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(sock_path))
        listener.listen(1)
        argv = ["qemu-system-x86_64", *accel_args(), "-m", str(self.memory_mb), "-smp", "2",
                "-nodefaults", "-vga", "none", "-display", "none", "-no-user-config",
                "-bios", str(OVMF),
                "-drive", f"if=none,id=disk,format=raw,file={self.disk},cache=writeback",
                "-device", "virtio-blk-pci,drive=disk,addr=0x4",
                *(["-drive", f"if=none,id=stick,format=raw,readonly=on,file={self.stick}",
                   "-device", "virtio-blk-pci,drive=stick,addr=0x5"] if self.stick else []),
                "-netdev", f"user,id=wan,hostfwd=tcp:127.0.0.1:{SSH_PORT}-:22",
                "-device", "virtio-net-pci,netdev=wan,mac=52:54:00:00:0a:01,addr=0x2",
                "-netdev", "tap,id=lan,ifname=lan0,script=no,downscript=no",
                "-device", "virtio-net-pci,netdev=lan,mac=52:54:00:00:0b:01,addr=0x3",
                "-chardev", f"socket,id=ser,path={sock_path}", "-serial", "chardev:ser"]
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns.name, *argv],
                                     stdout=subprocess.DEVNULL,
                                     stderr=(self.workdir / "qemu.err").open("ab"),
                                     start_new_session=True)
        listener.settimeout(60)
        try:
            conn, _ = listener.accept()
        except TimeoutError as exc:
            self.kill()
            raise AssertionError("QEMU did not connect to the serial socket: "
                                 + (self.workdir / "qemu.err").read_text()[-2000:]) from exc
        finally:
            listener.close()
        conn.settimeout(None)
        self.console = SerialConsole(conn, self.workdir / "serial.log")
        return self.console

    def kill(self) -> None:
        """The power cut: SIGKILL, no shutdown, no flush beyond what QEMU already wrote."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None
        if self.console is not None:
            self.console.close()
            self.console = None

    def wait_stopped(self, timeout: float) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout=timeout)
        self.proc = None
        if self.console is not None:
            self.console.close()
            self.console = None
        return rc


class Ssh:
    """The technician's way in: root with the bundle's key, the bundle's host key pinned."""

    def __init__(self, ns: Namespace, key: Path, host_pub: str, workdir: Path) -> None:
        self.ns, self.key = ns, key
        self.known = workdir / "known_hosts"
        self.known.write_text(f"[127.0.0.1]:{SSH_PORT} {host_pub}\n")

    def argv(self, command: str) -> list[str]:
        return ["ssh", "-i", str(self.key), "-p", str(SSH_PORT), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known}",
                # A dead VM is noticed within 2 min; a software-emulated one on a busy host
                # can leave keepalives unanswered for 15 s while it streams a slot to disk
                # (that cut a 1.2 GB install short once: "server not responding").
                "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=15",
                "-o", "ServerAliveCountMax=8",
                "root@127.0.0.1", command]

    def run(self, command: str, timeout: float = 120.0,
            stdin: IO[bytes] | None = None) -> subprocess.CompletedProcess[bytes]:
        return self.ns.run(self.argv(command), timeout=timeout, stdin=stdin)

    def ok(self, command: str, timeout: float = 120.0, stdin: IO[bytes] | None = None) -> str:
        proc = self.run(command, timeout, stdin)
        assert proc.returncode == 0, (f"ssh {command!r}: rc {proc.returncode}: "
                                      f"{proc.stderr.decode(errors='replace')[-1500:]}")
        return proc.stdout.decode(errors="replace")

    def answers(self) -> bool:
        """One try at logging in: False (not an exception) when it fails or hangs."""
        try:
            return self.run("true", timeout=60).returncode == 0
        except subprocess.TimeoutExpired:  # a busy emulated guest: the caller tries again
            return False

    def popen(self, command: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "netns", "exec", self.ns.name, *self.argv(command)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def tools_missing() -> list[str]:
    need = ["qemu-system-x86_64", "mkfs.vfat", "mcopy", "sfdisk", "mkfs.ext4", "ssh", "curl",
            "e2fsck"]
    return [t for t in need if shutil.which(t) is None] + (
        [] if OVMF.exists() else [str(OVMF)])
