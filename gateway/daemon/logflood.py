"""Log lines an attacker can cause must not fill the SD card.

Theory of operation: a client can make the daemon log at will (a bad request,
a refused connection, a wrong voucher code), and before Step 6 one slow-
connection attack wrote ~5 MB/s of tracebacks. :class:`FloodFilter` sits on
the log handler, so it sees every record:

* Records of aiohttp's and asyncio's loggers (a malformed request, an accept
  that ran out of handles) lose their traceback: one line with the exception's
  type and text says what happened; the traceback is aiohttp's, not ours.
* Warnings and errors (any logger), and every record of those libraries, are
  counted per (logger, message template, level): at most ``burst`` of each
  in ``interval`` seconds are written. The first one written after a quiet
  spell says how many like it were left out, so nothing is silently lost.

Our own INFO lines (logins, reloads) are not limited: they cannot be caused
faster than the limits in front of them allow. Memory is bounded by
``max_keys`` (the least recently seen template is forgotten first).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

NOISY = ("aiohttp", "asyncio")  # library loggers a client can drive
DEFAULT_BURST = 10
DEFAULT_INTERVAL = 60.0
DEFAULT_MAX_KEYS = 512

Key = tuple[str, str, int]


def _noisy(name: str) -> bool:
    return any(name == n or name.startswith(n + ".") for n in NOISY)


class FloodFilter(logging.Filter):
    def __init__(self, burst: int = DEFAULT_BURST, interval: float = DEFAULT_INTERVAL, *,
                 max_keys: int = DEFAULT_MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        # key -> [start of its interval, written in it, left out since the last written one]
        self._seen: OrderedDict[Key, list[float]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        noisy = _noisy(record.name)
        template = str(record.msg)  # before the arguments are put in: one key per message
        if noisy and record.exc_info:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        if not noisy and record.levelno < logging.WARNING:
            return True
        return self._allow(record, template)

    def _allow(self, record: logging.LogRecord, template: str) -> bool:
        key = (record.name, template, record.levelno)
        now = self._clock()
        state = self._seen.get(key)
        if state is None:
            while len(self._seen) >= self.max_keys:
                self._seen.popitem(last=False)
            state = [now, 0.0, 0.0]
            self._seen[key] = state
        self._seen.move_to_end(key)
        if now - state[0] >= self.interval or now < state[0]:
            state[0], state[1] = now, 0.0
        if state[1] >= self.burst:
            state[2] += 1
            return False
        state[1] += 1
        if state[2]:
            record.msg = f"{record.getMessage()} ({int(state[2])} more like this were not logged)"
            record.args = None
            state[2] = 0.0
        return True
