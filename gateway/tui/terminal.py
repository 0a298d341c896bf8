"""Proof that the technician's terminal still reaches the TUI: a round trip through it.

After a config change runs as a trial, the setup wizard must know whether the
technician's own way in (SSH over the LAN or WAN, a serial console) survived it
before it confirms. A unix-socket connection to the daemon proves nothing about
that; an answer from the terminal does. The TUI writes ECMA-48's "device status
report" query (``CSI 6 n``); the terminal at the far end of the SSH or serial line
answers with its cursor position, which Textual's input parser turns into a
``CursorPosition`` event for the app. An answer that arrives after the change
ran crossed the very path the technician uses. Without an answer (a headless
run, a terminal that ignores the query) the wizard asks for a key press
instead, which proves the same thing.
"""

from __future__ import annotations

import asyncio
import contextlib

from textual.app import App

QUERY = "\x1b[6n"  # DSR 6: report the cursor position; VT100 and every terminal since


class TerminalProbe:
    """One round trip at a time; the app calls :meth:`answered` on each CursorPosition."""

    def __init__(self) -> None:
        self._waiting: asyncio.Event | None = None

    def answered(self) -> None:
        if self._waiting is not None:
            self._waiting.set()

    async def round_trip(self, app: App[object], timeout: float) -> bool:
        """True when the terminal answered the query within ``timeout`` seconds."""
        driver = app._driver  # the query goes to the real terminal, not through a widget
        if driver is None or driver.is_headless:
            return False
        self._waiting = asyncio.Event()
        try:
            driver.write(QUERY)
            driver.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._waiting.wait(), timeout)
            return self._waiting.is_set()
        finally:
            self._waiting = None
