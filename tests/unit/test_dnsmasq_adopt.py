"""A dnsmasq left running by a crashed daemon: adopted, replaced or ignored.

The decision is pure (pid file, /proc cmdline, spawn record, wanted config).
The supervisor tests use a stand-in process whose cmdline looks like our
dnsmasq's (argv[0] the binary, our --conf-file) and the real pidfd watch.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.services.dnsmasq import Dnsmasq, decide_leftover, spawn_record

BIN = "/usr/sbin/dnsmasq"
CONF = "/run/desanet/dnsmasq.conf"
TEXT = "interface=lan0\ndhcp-range=10.0.0.10,10.0.0.99\n"


def cmdline(*argv: str) -> bytes:
    return b"\0".join(a.encode() for a in argv) + b"\0"


OURS = cmdline(BIN, "--keep-in-foreground", f"--conf-file={CONF}")


def decide(pid_text: str | None = "42\n", cmd: bytes | None = OURS,
           record: str | None = None, text: str | None = TEXT, binary: str = BIN) -> str:
    rec = spawn_record(42, TEXT) if record is None else record
    return decide_leftover(pid_text, cmd, rec, binary=binary, conf_path=CONF, conf_text=text)


def test_ours_with_the_same_config_is_adopted() -> None:
    assert decide() == "adopt"


def test_nothing_to_adopt_without_a_live_process() -> None:
    assert decide(pid_text=None) == "start"
    assert decide(pid_text="garbage") == "start"
    assert decide(pid_text="0") == "start"
    assert decide(cmd=None) == "start"  # the pid names no process


def test_a_process_not_naming_our_config_is_left_alone() -> None:
    # a reused pid, another dnsmasq (the lab's WAN resolvers), a prefix of our path
    assert decide(cmd=cmdline("/usr/bin/python3", "-m", "http.server")) == "start"
    assert decide(cmd=cmdline(BIN, "--conf-file=/etc/dnsmasq.conf")) == "start"
    assert decide(cmd=cmdline(BIN, f"--conf-file={CONF}.old")) == "start"


def test_ours_with_another_config_or_binary_is_replaced() -> None:
    assert decide(text=TEXT.replace("99", "200")) == "replace"  # a new DHCP range
    assert decide(record="") == "replace"  # no spawn record: config unknown
    assert decide(record=spawn_record(43, TEXT)) == "replace"  # the record is another pid's
    assert decide(binary="/opt/dnsmasq/sbin/dnsmasq") == "replace"


# -- the supervisor with a stand-in process -----------------------------------------------------


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start a long-running process whose cmdline is our dnsmasq's."""
    binary = tmp_path / "dnsmasq"
    binary.write_text("#!/bin/sh\nexec sleep 600\n")  # what a respawn runs
    binary.chmod(0o755)
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(TEXT)
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        argv = [str(binary), "-c", "import time; time.sleep(600)", "--keep-in-foreground",
                f"--conf-file={conf}"]
        proc = subprocess.Popen(argv, executable=sys.executable, stdin=subprocess.DEVNULL)
        procs.append(proc)
        # The stand-in must look like our dnsmasq before the supervisor inspects it: wait
        # (with a deadline) until the kernel shows its command line.
        cmdline = Path(f"/proc/{proc.pid}/cmdline")
        deadline = time.monotonic() + 10
        while f"--conf-file={conf}".encode() not in cmdline.read_bytes():
            assert time.monotonic() < deadline, f"stand-in cmdline: {cmdline.read_bytes()!r}"
            time.sleep(0.01)
        (tmp_path / "dnsmasq.pid").write_text(f"{proc.pid}\n")
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def supervisor(tmp_path: Path) -> Dnsmasq:
    dm = Dnsmasq(str(tmp_path / "dnsmasq"), str(tmp_path / "dnsmasq.conf"),
                 str(tmp_path / "dnsmasq.pid"), state_dir=str(tmp_path), run_dir=str(tmp_path),
                 check_config=False)

    async def no_wait(_: float) -> None:
        return None

    dm._sleep = no_wait
    return dm


async def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_start_adopts_and_supervises_a_leftover(
        tmp_path: Path, standin: Callable[[], subprocess.Popen[bytes]]) -> None:
    old = standin()
    Path(tmp_path / "dnsmasq.spawned").write_text(spawn_record(old.pid, TEXT))
    dm = supervisor(tmp_path)
    await dm.start()
    try:
        assert dm.adopted and dm.pid == old.pid and old.poll() is None
        os.kill(old.pid, signal.SIGKILL)  # not our child: the pidfd tells the supervisor
        await until(lambda: dm.restarts == 1 and dm.running, "a restart after the adopted one died")
        assert dm.pid != old.pid and not dm.adopted
        # the new child left a record the next start can adopt by
        pid = dm.pid
        assert pid is not None
        assert Path(tmp_path / "dnsmasq.spawned").read_text() == spawn_record(pid, TEXT)
    finally:
        await dm.stop()


async def test_stop_ends_an_adopted_dnsmasq(
        tmp_path: Path, standin: Callable[[], subprocess.Popen[bytes]]) -> None:
    old = standin()
    Path(tmp_path / "dnsmasq.spawned").write_text(spawn_record(old.pid, TEXT))
    dm = supervisor(tmp_path)
    await dm.start()
    assert dm.adopted
    await dm.stop()  # a clean stop: the gateway must not keep serving
    assert old.wait(timeout=10) == -signal.SIGTERM


async def test_start_replaces_a_leftover_with_another_config(
        tmp_path: Path, standin: Callable[[], subprocess.Popen[bytes]]) -> None:
    old = standin()
    # control: the record says it got another config than the one on disk now
    Path(tmp_path / "dnsmasq.spawned").write_text(spawn_record(old.pid, TEXT + "# old\n"))
    dm = supervisor(tmp_path)
    await dm.start()
    try:
        assert old.wait(timeout=10) == -signal.SIGKILL
        assert dm.running and not dm.adopted and dm.pid != old.pid
    finally:
        await dm.stop()


async def test_a_dnsmasq_killed_from_outside_comes_back_after_the_first_delay(
        tmp_path: Path) -> None:
    binary = tmp_path / "dnsmasq"
    binary.write_text("#!/bin/sh\nexec sleep 600\n")
    binary.chmod(0o755)
    dm = supervisor(tmp_path)
    waited: list[float] = []

    async def sleep(delay: float) -> None:
        waited.append(delay)

    dm._sleep = sleep
    await dm.start()
    try:
        for n, sig in enumerate((signal.SIGKILL, signal.SIGKILL, signal.SIGTERM,
                                 signal.SIGABRT, signal.SIGABRT), start=1):
            pid = dm.pid
            assert pid is not None
            os.kill(pid, sig)
            await until(lambda n=n: dm.restarts == n and dm.running, f"restart {n}")
        # kills from outside: the first delay each time; crashes of its own double (control)
        assert waited == [1.0, 1.0, 1.0, 2.0, 4.0]
    finally:
        await dm.stop()
