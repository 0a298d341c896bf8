"""The log filter that keeps what clients can cause from flooding the SD card."""

from __future__ import annotations

import logging
import sys

from gateway.daemon.logflood import FloodFilter


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def record(name: str, level: int, msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("Too many headers received")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord(name, level, __file__, 1, msg, args, info)


def test_a_flood_of_one_warning_is_cut_to_a_burst_and_counted() -> None:
    clock = Clock()
    flood = FloodFilter(burst=3, interval=60, clock=clock)
    kept = [flood.filter(record("desanet.portal", logging.WARNING, "refused %s", i))
            for i in range(1000)]
    assert kept.count(True) == 3
    clock.t = 60
    first = record("desanet.portal", logging.WARNING, "refused %s", "x")
    assert flood.filter(first)
    assert first.getMessage() == "refused x (997 more like this were not logged)"
    # positive control: another message, and info lines, are not held back by it
    assert flood.filter(record("desanet.portal", logging.WARNING, "something else"))
    assert all(flood.filter(record("desanet.portal", logging.INFO, "login %s", i))
               for i in range(100))


def test_library_tracebacks_become_one_line() -> None:
    flood = FloodFilter()
    rec = record("aiohttp.server", logging.ERROR, "Error handling request from %s", "10.42.0.9",
                 exc=True)
    assert flood.filter(rec)
    assert rec.exc_info is None
    assert rec.getMessage() == ("Error handling request from 10.42.0.9: ValueError: "
                                "Too many headers received")
    # ... and are counted per template, whatever the client address
    flood = FloodFilter(burst=2)
    kept = [flood.filter(record("aiohttp.server", logging.ERROR, "Error handling request "
                                "from %s", f"10.42.0.{i}", exc=True)) for i in range(50)]
    assert kept.count(True) == 2
    # our own errors keep their traceback (rate limited, not stripped)
    own = record("desanet.portal", logging.ERROR, "portal request failed", exc=True)
    assert FloodFilter().filter(own) and own.exc_info is not None


def test_memory_is_bounded() -> None:
    flood = FloodFilter(max_keys=10)
    for i in range(1000):
        flood.filter(record("desanet.x", logging.WARNING, f"distinct {i}"))
    assert len(flood._seen) == 10
