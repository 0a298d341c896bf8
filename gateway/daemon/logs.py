"""Log lines that fit where they go: journald under systemd, a terminal otherwise.

Under systemd (``JOURNAL_STREAM`` is set) journald stamps each line with its
own time, so ours would only repeat it; instead each line starts with the
syslog priority in the ``<N>`` form journald reads (sd-daemon(3)), so
``journalctl -p err`` finds the errors. On a terminal or in a file (the lab)
lines keep their own timestamp.

Every logger of ours is ``desanet.<part>`` (``desanet.sessions``,
``desanet.portal`` ...; a unit test holds the code to it). Two filters keep
the journal readable when something outside misbehaves:

* :class:`MalformedRequestFilter`: a client that sends a broken HTTP request
  to the portal or the control API is one debug line (``desanet.http``), not
  an error with a traceback per request from aiohttp's server logger.
* :class:`RepeatFilter`: the same warning or error line from the same logger
  is written once per window; the copies are counted and a line
  ``suppressed K similar messages ...`` follows when the window is over (at
  the next line logged, as a filter has no timer of its own).
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp.http_exceptions import HttpProcessingError

# syslog priorities: err 3, warning 4, info 6, debug 7
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}

REPEAT_WINDOW = 60.0  # seconds an identical warning/error line stays quiet
MAX_TRACKED = 1000  # distinct lines tracked at once; beyond, lines pass unfiltered


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # Every line of a multi-line message (a traceback) keeps the priority.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def log_formatter(environ: dict[str, str] | None = None) -> logging.Formatter:
    env = os.environ if environ is None else environ
    if env.get("JOURNAL_STREAM"):
        return JournalFormatter("%(name)s: %(message)s")
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


# Loggers that may log a client's malformed request as an error with its traceback:
# aiohttp's server (a request it cannot parse) and our servers' error middlewares
# (a body the handler could not read: a cut chunked body, a short Content-Length).
REQUEST_LOGGERS = ("aiohttp.server", "desanet.portal", "desanet.control")


class MalformedRequestFilter(logging.Filter):
    """A client's malformed HTTP request becomes one debug line without a traceback.

    That is the client's fault, and one phone or scanner could otherwise fill
    the journal with a traceback per request. aiohttp's own line is renamed
    ``desanet.http``. Every other error (a bug in a handler) keeps its level
    and traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        # aiohttp's message draws a caret under the bad byte over several lines.
        reason = " ".join(str(exc.message or type(exc).__name__).split())[:200]
        if record.name == "aiohttp.server":
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.name = "desanet.http"
            record.msg, record.args = "malformed request from %s: %s", (remote, reason)
        else:
            record.msg, record.args = "%s: malformed request: %s", (record.getMessage(), reason)
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info, record.exc_text = None, None
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


@dataclass
class _Seen:
    since: float  # when the first line of this window was written
    where: tuple[str, int]  # its pathname and line, for the summary
    suppressed: int = 0


class RepeatFilter(logging.Filter):
    """Write an identical warning/error (same logger, level and text) once per window.

    ``sink`` receives the summary records (``suppressed K similar messages``);
    :func:`setup_logging` passes the handler's ``handle``. ``clock`` is
    monotonic seconds (a fake one in tests).
    """

    def __init__(self, sink: Callable[[logging.LogRecord], object],
                 window: float = REPEAT_WINDOW, clock: Callable[[], float] = time.monotonic,
                 level: int = logging.WARNING) -> None:
        super().__init__()
        self._sink = sink
        self.window = window
        self._clock = clock
        self._level = level
        self._seen: dict[tuple[str, int, str], _Seen] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "desanet_summary", False):
            return True
        now = self._clock()
        self.flush(now)
        if record.levelno < self._level:
            return True
        key = (record.name, record.levelno, record.getMessage())
        seen = self._seen.get(key)
        if seen is not None:
            seen.suppressed += 1
            return False
        if len(self._seen) < MAX_TRACKED:
            # Not the record itself: it may hold a traceback and its frames.
            self._seen[key] = _Seen(now, (record.pathname, record.lineno))
        return True

    def flush(self, now: float | None = None) -> None:
        """Close the windows that are over (all of them with ``now`` None: at exit)."""
        at = self._clock() if now is None else now
        over = [key for key, seen in self._seen.items()
                if now is None or now - seen.since >= self.window]
        for key in over:
            seen = self._seen.pop(key)
            if seen.suppressed:
                self._sink(self._summary(key, seen, min(at - seen.since, self.window)))

    @staticmethod
    def _summary(key: tuple[str, int, str], seen: _Seen, span: float) -> logging.LogRecord:
        name, level, text = key
        record = logging.LogRecord(name, level, *seen.where,
                                   "suppressed %d similar message(s) in %ds: %s",
                                   (seen.suppressed, round(span), text), None)
        record.desanet_summary = True
        return record


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(log_formatter())
    repeats = RepeatFilter(handler.handle)
    handler.addFilter(repeats)
    atexit.register(repeats.flush)  # counts still open at exit are written too
    malformed = MalformedRequestFilter()
    for name in REQUEST_LOGGERS:
        logging.getLogger(name).addFilter(malformed)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
