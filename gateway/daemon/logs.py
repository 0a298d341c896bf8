"""Log lines that fit where they go: journald under systemd, a terminal otherwise.

Under systemd (``JOURNAL_STREAM`` is set) journald stamps each line with its
own time, so ours would only repeat it; instead each line starts with the
syslog priority in the ``<N>`` form journald reads (sd-daemon(3)), so
``journalctl -p err`` finds the errors. On a terminal or in a file (the lab)
lines keep their own timestamp.
"""

from __future__ import annotations

import logging
import os

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


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(log_formatter())
    handler.addFilter(FloodFilter())  # portalsec: what clients can cause cannot flood the card
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
