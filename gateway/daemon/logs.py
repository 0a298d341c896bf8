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
* :class:`~gateway.daemon.logflood.FloodFilter` on the handler: warnings and
  errors are limited per logger and message template (so lines that differ
  only by a client's address count as one), library tracebacks become one
  line, and the next line written says how many were left out.
"""

from __future__ import annotations

import logging
import os

from aiohttp.http_exceptions import HttpProcessingError

from gateway.daemon.logflood import FloodFilter

# syslog priorities: err 3, warning 4, info 6, debug 7
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}



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


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(log_formatter())
    handler.addFilter(FloodFilter())  # what clients can cause cannot flood the SD card
    malformed = MalformedRequestFilter()
    for name in REQUEST_LOGGERS:
        logging.getLogger(name).addFilter(malformed)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
