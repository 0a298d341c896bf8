"""Log lines for journald (priority prefix, no timestamp) and for a terminal."""

from __future__ import annotations

import logging
import re

import pytest

from gateway.daemon.logs import log_formatter


def record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("desanet.config", level, __file__, 1, msg, None, None)


@pytest.mark.parametrize(("level", "prefix"), [
    (logging.ERROR, "<3>"), (logging.WARNING, "<4>"), (logging.INFO, "<6>"), (logging.DEBUG, "<7>"),
])
def test_under_systemd_lines_carry_the_priority_and_no_time(level: int, prefix: str) -> None:
    line = log_formatter({"JOURNAL_STREAM": "8:1234"}).format(record(level, "reload refused"))
    assert line == f"{prefix}desanet.config: reload refused"


def test_every_line_of_a_multi_line_message_keeps_the_priority() -> None:
    text = log_formatter({"JOURNAL_STREAM": "8:1"}).format(record(logging.ERROR, "a\nb"))
    assert text.splitlines() == ["<3>desanet.config: a", "<3>b"]


def test_on_a_terminal_lines_keep_their_timestamp() -> None:
    line = log_formatter({}).format(record(logging.INFO, "ready"))
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO desanet.config: ready$", line)
