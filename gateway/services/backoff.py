"""How long to wait before restarting a supervised child that died (pure, clock injected).

A child that dies again at once (a bad config, a port taken) is restarted
after 1 s, then 2, 4, ... up to 30 s, so it cannot spin. A child that ran
for a stable minute before it died was healthy: its next restart waits 1 s
again. Without that reset, a dnsmasq that crashed a few times over the
weeks would leave the village without DHCP and DNS for 30 s at every later
crash.
"""

from __future__ import annotations

from collections.abc import Callable

FIRST = 1.0  # seconds before the first restart
CAP = 30.0  # never longer than this
STABLE = 60.0  # a child that ran this long resets the delay


class RestartBackoff:
    def __init__(self, monotonic: Callable[[], float], first: float = FIRST,
                 cap: float = CAP, stable: float = STABLE) -> None:
        self._monotonic = monotonic
        self.first, self.cap, self.stable = first, cap, stable
        self._next = first
        self._since: float | None = None

    def reset(self) -> None:
        """A deliberate start (a new config, a restart asked for): begin again at ``first``."""
        self._next = self.first

    def started(self) -> None:
        """The child was (re)started now (call it for every attempt, even a failed one)."""
        self._since = self._monotonic()

    def delay(self) -> float:
        """The child died now: the seconds to wait before the next start."""
        if self._since is not None and self._monotonic() - self._since >= self.stable:
            self._next = self.first
        delay = self._next
        self._next = min(delay * 2, self.cap)
        return delay
