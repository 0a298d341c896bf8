"""Time as the core sees it: a small protocol, so tests can move time by hand."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> int:
        """Wall-clock Unix seconds (sessions, vouchers, events are stamped with it)."""
        ...

    def time(self) -> float:
        """Wall-clock Unix seconds with a fraction (timestamps of samples and events)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start that never jumps (timers, rate windows)."""
        ...


class SystemClock:
    def now(self) -> int:
        return int(time.time())

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when a test says so; mypy checks it against Clock."""

    def __init__(self, now: int = 1_700_000_000) -> None:
        self.wall = now
        self.mono = 1000.0

    def now(self) -> int:
        return self.wall

    def time(self) -> float:
        return float(self.wall)

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += int(seconds)


_check: Clock = SystemClock()
_check_fake: Clock = FakeClock()
