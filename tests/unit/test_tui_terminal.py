"""`desanet tui` in a real terminal: tmux runs it at 80x24, keys go in, the screen is read.

The control API is the real one over the real core (corekit's kernel fakes),
served on a temporary unix socket by this test; the TUI is the installed
command line in its own process, as a technician starts it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from tests.unit.conftest import make_config
from tests.unit.corekit import Core, build_core

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed (.ci/setup installs it)")

MAC, IP = "02:00:00:00:00:01", "10.42.0.101"


class Terminal:
    """One tmux server of its own (-L), so nothing else's sessions are touched."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def tmux(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "tmux", "-L", self.name, *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return out.decode(errors="replace")

    async def screen(self, escapes: bool = False) -> str:
        """The pane's text (``escapes``: with the SGR attributes the app drew it with)."""
        return await self.tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "tui")

    async def keys(self, *keys: str) -> None:
        await self.tmux("send-keys", "-t", "tui", *keys)

    async def until(self, cond: Callable[[str], bool], what: str, timeout: float = 20.0) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            text = await self.screen()
            if cond(text):
                return text
            assert loop.time() < deadline, f"timed out waiting for {what}; screen:\n{text}"
            await asyncio.sleep(0.1)


@pytest.fixture
async def core(tmp_path: Path) -> Core:
    c = build_core(tmp_path, make_config())
    c.neighbours.add(IP, MAC)
    await c.start()
    await c.sessions.authorize(MAC, IP, "terms")
    return c


@pytest.fixture
async def served(core: Core) -> AsyncIterator[str]:
    folder = tempfile.mkdtemp(prefix="dn-tui-", dir="/tmp")  # short: sun_path is 108 bytes
    path = os.path.join(folder, "control.sock")
    # The TUI's event long poll may still be open at the end: do not wait out its 25 s.
    runner = web.AppRunner(core.control_app(), shutdown_timeout=0.5)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    yield path
    await runner.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def terminal() -> AsyncIterator[Terminal]:
    term = Terminal(f"dn-tui-{os.getpid()}")
    await term.tmux("kill-server")  # a leftover of a crashed run of this process id
    yield term
    await term.tmux("kill-server")


async def test_tui_in_tmux_at_80x24(core: Core, served: str, terminal: Terminal) -> None:
    env = f"TERM=xterm-256color PYTHONPATH={Path(__file__).parents[2]}"
    command = f"env {env} {sys.executable} -m gateway tui --socket {served}"
    await terminal.tmux("new-session", "-d", "-s", "tui", "-x", "80", "-y", "24", command)
    # Every line the test reads is in the wait: a capture can catch a frame half drawn.
    dashboard = ("Hotspot Desa Uji", "[1 Dasbor]",  # Bahasa Indonesia first
                 "Klien: 1 terhubung, 1 masuk")
    text = await terminal.until(lambda s: all(x in s for x in dashboard), "the dashboard")
    assert MAC not in text  # no full MAC on the dashboard
    await terminal.keys("2")
    await terminal.until(lambda s: IP in s and "masuk" in s, "the clients page")
    await terminal.keys("l")
    await terminal.until(lambda s: "[2 Clients]" in s and "online" in s, "English")
    await terminal.keys("d")
    await terminal.until(lambda s: "Deauthorize" in s, "the question")
    await terminal.keys("y")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while core.firewall.authorized:
        assert loop.time() < deadline, "the client was not deauthorized"
        await asyncio.sleep(0.05)
    await terminal.until(lambda s: "portal" in s, "the client back on the portal")
    await terminal.keys("q")
    await terminal.until(lambda s: "Hotspot" not in s, "the app to quit", timeout=10)


SGR = re.compile(r"\x1b\[([0-9;:]*)m")


def extended_colours(escaped: str) -> list[str]:
    """The SGR sequences that use more than the 16 standard colours (38/48: 256 or RGB)."""
    found = []
    for match in SGR.finditer(escaped):
        params = re.split("[;:]", match.group(1))
        if any(p in ("38", "48", "58") for p in params):
            found.append(match.group(0))
    return found


async def test_tui_on_a_16_colour_terminal(core: Core, served: str, terminal: Terminal) -> None:
    """TERM=xterm (16 colours, no COLORTERM): the TUI draws with the 16 standard colours
    only, and every state is still a word."""
    env = f"TERM=xterm PYTHONPATH={Path(__file__).parents[2]}"
    command = f"env -u COLORTERM {env} {sys.executable} -m gateway tui --socket {served}"
    await terminal.tmux("new-session", "-d", "-s", "tui", "-x", "80", "-y", "24", command)
    await terminal.until(lambda s: "Hotspot Desa Uji" in s and "Klien: 1 terhubung, 1 masuk" in s,
                         "the dashboard")
    escaped = await terminal.screen(escapes=True)
    assert SGR.search(escaped), "no colour at all: the capture did not keep the attributes"
    assert extended_colours(escaped) == [], sorted(set(extended_colours(escaped)))[:5]
    await terminal.keys("2")
    await terminal.until(lambda s: IP in s and "masuk" in s, "the clients page")
    assert extended_colours(await terminal.screen(escapes=True)) == []
    await terminal.keys("q")
    await terminal.until(lambda s: "Hotspot" not in s, "the app to quit", timeout=10)
