"""Per-key sliding-window rate limiter (pure, injectable clock).

Theory of operation: for every key (a client MAC, or its IP when the MAC
is unknown) we keep the times of the attempts accepted during the last
``window`` seconds. ``allow`` drops times that fell out of the window, then
accepts and records the attempt when fewer than ``limit`` remain. A
refused attempt is not recorded, so hammering does not push the unlock
time further away; the client is simply refused until the oldest accepted
attempt leaves the window, which is what ``retry_after`` reports.

Memory is bounded: at most ``limit`` times per key and at most
``max_keys`` keys. When a new key would exceed ``max_keys`` we first forget
every idle key (no attempt inside the window, so forgetting it changes no
answer), and if that is not enough we forget the least recently used key.

If the clock steps backwards (a Pi without a real-time clock syncing NTP)
times "in the future" are discarded rather than locking a client out.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

DEFAULT_LIMIT = 5
DEFAULT_WINDOW = 60.0
DEFAULT_MAX_KEYS = 4096


class RateLimiter:
    def __init__(
        self,
        limit: int = DEFAULT_LIMIT,
        window: float = DEFAULT_WINDOW,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if window <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.limit = limit
        self.window = float(window)
        self.max_keys = max_keys
        self._clock = clock
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._hits)

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else float(now)

    def _live(self, key: str, now: float) -> deque[float] | None:
        """The key's attempts still inside the window (expired ones dropped)."""
        hits = self._hits.get(key)
        if hits is None:
            return None
        horizon = now - self.window
        while hits and hits[0] <= horizon:
            hits.popleft()
        while hits and hits[-1] > now:  # clock went backwards
            hits.pop()
        if not hits:
            del self._hits[key]
            return None
        return hits

    def allow(self, key: str, now: float | None = None) -> bool:
        """Record an attempt for ``key``; False when it is over the limit."""
        t = self._now(now)
        hits = self._live(key, t)
        if hits is None:
            self._make_room(t)
            hits = deque(maxlen=self.limit)
            self._hits[key] = hits
        self._hits.move_to_end(key)
        if len(hits) >= self.limit:
            return False
        hits.append(t)
        return True

    def retry_after(self, key: str, now: float | None = None) -> int:
        """Whole seconds until ``key`` may try again; 0 when it may try now."""
        t = self._now(now)
        hits = self._live(key, t)
        if hits is None or len(hits) < self.limit:
            return 0
        return max(1, math.ceil(hits[0] + self.window - t))

    def now(self) -> float:
        """The limiter's clock; pass it to :meth:`allow` and :meth:`refund` as one time."""
        return self._clock()

    def refund(self, key: str, at: float) -> None:
        """Give back the attempt :meth:`allow` recorded for ``key`` at ``at``.

        The portal's village-wide budget counts wrong codes only: every check takes
        a place first (so concurrent checks cannot overrun it) and a right code
        gives it back.
        """
        hits = self._hits.get(key)
        if hits is None:
            return
        try:
            hits.remove(float(at))
        except ValueError:
            return  # already left the window
        if not hits:
            del self._hits[key]

    def reset(self, key: str) -> None:
        self._hits.pop(key, None)

    def prune(self, now: float | None = None) -> int:
        """Forget every idle key; return how many were forgotten."""
        t = self._now(now)
        before = len(self._hits)
        for key in list(self._hits):
            self._live(key, t)
        return before - len(self._hits)

    def _make_room(self, now: float) -> None:
        if len(self._hits) < self.max_keys:
            return
        self.prune(now)
        while len(self._hits) >= self.max_keys:
            self._hits.popitem(last=False)
