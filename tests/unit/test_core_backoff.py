"""dnsmasq's restart backoff: doubles while the child dies at once, resets after a stable
minute (a fake clock; the supervisor test runs a stand-in child process)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from gateway.services.backoff import CAP, FIRST, STABLE, RestartBackoff
from gateway.services.dnsmasq import Dnsmasq


def test_quick_deaths_double_up_to_the_cap() -> None:
    clock = FakeClock()
    b = RestartBackoff(clock.monotonic)
    delays = []
    for _ in range(8):
        b.started()
        clock.advance(0.5)  # dies half a second after each start
        delays.append(b.delay())
        clock.advance(delays[-1])
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert (FIRST, CAP, STABLE) == (1.0, 30.0, 60.0)


@pytest.mark.parametrize(("ran", "want"), [(STABLE, FIRST), (STABLE - 1, 2 * 16.0)])
def test_a_stable_minute_resets_the_delay(ran: float, want: float) -> None:
    clock = FakeClock()
    b = RestartBackoff(clock.monotonic)
    for _ in range(5):  # 1, 2, 4, 8, 16: the next would be 30
        b.started()
        b.delay()
    b.started()
    clock.advance(ran)
    assert b.delay() == min(want, CAP)


def test_a_failed_start_counts_as_a_quick_death() -> None:
    clock = FakeClock()
    b = RestartBackoff(clock.monotonic)
    b.started()
    clock.advance(3600)  # a long healthy run ...
    assert b.delay() == FIRST
    b.started()  # ... then the restart itself fails at once, again and again
    assert b.delay() == 2.0
    b.started()
    assert b.delay() == 4.0
    b.reset()  # a deliberate start (a new config) begins again
    assert b.delay() == FIRST


async def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_the_supervisor_resets_its_backoff_after_a_stable_minute(tmp_path: Path) -> None:
    child = tmp_path / "dnsmasq"
    child.write_text("#!/bin/sh\nexec sleep 600\n")  # stands in for dnsmasq: runs until killed
    child.chmod(0o755)
    clock = FakeClock()
    dm = Dnsmasq(str(child), str(tmp_path / "dnsmasq.conf"), str(tmp_path / "dnsmasq.pid"),
                 state_dir=str(tmp_path), run_dir=str(tmp_path), check_config=False,
                 clock=clock)
    waited: list[float] = []

    async def sleep(delay: float) -> None:
        waited.append(delay)
        clock.advance(delay)

    dm._sleep = sleep
    await dm.start()
    try:
        async def crash(after: float) -> None:
            clock.advance(after)
            pid, restarts = dm.pid, dm.restarts
            assert pid is not None
            os.kill(pid, signal.SIGABRT)  # a crash of its own (a kill -9 restarts at 1 s)
            await until(lambda: dm.restarts == restarts + 1 and dm.running, "a restart")

        for _ in range(3):
            await crash(after=1.0)
        assert waited == [1.0, 2.0, 4.0]
        await crash(after=STABLE)  # ran a stable minute: back to the first delay
        assert waited == [1.0, 2.0, 4.0, FIRST]
    finally:
        await dm.stop()
