"""The box's own health, read where the TUI runs (on the gateway itself).

CPU, memory, temperature and disk are not the daemon's business, so they are
read here with psutil rather than asked of the control API; the WAN byte
counters give the throughput sparkline. Reads go to a thread: psutil blocks
briefly on /proc and /sys, and the UI thread must never wait.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import psutil

HISTORY = 90  # throughput samples kept: 3 minutes at one read per 2 s


@dataclass(frozen=True, slots=True)
class HostStats:
    at: float  # monotonic seconds of the read
    cpu_percent: float | None
    memory_percent: float | None
    temperature_c: float | None
    disk_percent: float | None
    wan_rx: int | None  # bytes received on the WAN interface since boot
    wan_tx: int | None


class HostReader(Protocol):
    async def read(self, wan_interface: str | None) -> HostStats: ...


def _temperature() -> float | None:
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return None
    try:
        sensors = read()
    except OSError:
        return None
    values = [t.current for entries in sensors.values() for t in entries if t.current]
    return max(values) if values else None


def read_host(wan_interface: str | None, disk_path: str = "/") -> HostStats:
    """One blocking read; a value the box cannot give is None."""
    try:
        disk: float | None = psutil.disk_usage(disk_path).percent
    except OSError:
        disk = None
    rx = tx = None
    if wan_interface:
        nic = psutil.net_io_counters(pernic=True).get(wan_interface)
        if nic is not None:
            rx, tx = nic.bytes_recv, nic.bytes_sent
    return HostStats(time.monotonic(), psutil.cpu_percent(interval=None),
                     psutil.virtual_memory().percent, _temperature(), disk, rx, tx)


class PsutilHost:
    """:class:`HostReader` of this machine."""

    def __init__(self, disk_path: str = "/") -> None:
        self.disk_path = disk_path

    async def read(self, wan_interface: str | None) -> HostStats:
        return await asyncio.to_thread(read_host, wan_interface, self.disk_path)


class Throughput:
    """WAN rates (bits per second) from successive counter reads."""

    def __init__(self, size: int = HISTORY) -> None:
        self.down: deque[float] = deque(maxlen=size)
        self.up: deque[float] = deque(maxlen=size)
        self._last: HostStats | None = None

    def add(self, stats: HostStats) -> None:
        last, self._last = self._last, stats
        if stats.wan_rx is None or stats.wan_tx is None:
            return
        if last is None or last.wan_rx is None or last.wan_tx is None:
            return
        elapsed = stats.at - last.at
        if elapsed <= 0 or stats.wan_rx < last.wan_rx or stats.wan_tx < last.wan_tx:
            return  # a counter reset (interface re-created): skip one sample
        self.down.append((stats.wan_rx - last.wan_rx) * 8 / elapsed)
        self.up.append((stats.wan_tx - last.wan_tx) * 8 / elapsed)
