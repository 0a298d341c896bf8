"""The machine's own readings for telemetry (psutil): CPU, memory, disk, temperature,
uptime, load, bytes per interface.

:func:`read_system` blocks (statvfs, /proc and /sys reads): the telemetry service
runs it on a worker thread. Each reading that the kernel does not offer (no
thermal sensor, no load average) is None; nothing here raises for a missing one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from gateway.telemetry.metrics import SystemReadings


def _temperature() -> float | None:
    """The hottest current reading of any sensor, or None without sensors."""
    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError):  # not on this platform, or /sys unreadable
        return None
    values = [s.current for group in sensors.values() for s in group if s.current is not None]
    return max(values) if values else None


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


_primed = False


def _cpu() -> float | None:
    """CPU % since the previous call; None at the first (psutil has nothing to compare)."""
    global _primed
    value = psutil.cpu_percent(interval=None)
    if not _primed:
        _primed = True
        return None
    return value


def read_system(state_dir: str | Path, interfaces: Iterable[str]) -> SystemReadings:
    """One reading. CPU % is the use since the previous call (psutil keeps the last
    counters; the first call of a process reads None). Blocks briefly."""
    try:
        disk: float | None = psutil.disk_usage(str(state_dir)).percent
    except OSError:
        disk = None
    wanted = set(interfaces)
    try:
        counters = psutil.net_io_counters(pernic=True)
    except OSError:
        counters = {}
    nics = {name: (c.bytes_recv, c.bytes_sent) for name, c in counters.items() if name in wanted}
    return SystemReadings(cpu=_cpu(),
                          memory=psutil.virtual_memory().percent, disk=disk,
                          temperature=_temperature(),
                          uptime=max(0, int(time.time() - psutil.boot_time())),
                          load=_load(), interfaces=nics)
