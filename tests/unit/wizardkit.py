"""The setup wizard alone in a tiny app (the real TUI app pushes it the same way), and
the Pilot helpers its tests share (keys only; waits on conditions, never on time)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import Static

from gateway.control.aclient import AsyncControlClient
from gateway.tui.wizard import SetupWizard
from gateway.tui.wizard_fields import BY_PATH
from tests.unit.corekit import Core


class WizardApp(App[None]):
    def __init__(self, client: AsyncControlClient | None, config_path: str | None = None,
                 socket_path: str | None = None) -> None:
        super().__init__()
        self.animation_level = "none"  # no scroll animation for Pilot to wait out
        self.wizard = SetupWizard(client, config_path, socket_path=socket_path)

    def on_mount(self) -> None:
        self.push_screen(self.wizard)


async def until(pilot: Pilot[None], ok: Callable[[], bool], what: str,
                rounds: int = 2000) -> None:
    for _ in range(rounds):  # a deadline in rounds of the app's own loop, not in seconds
        if ok():
            return
        await pilot.pause(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def focus_by_keys(pilot: Pilot[None], widget_id: str) -> None:
    for _ in range(60):
        if pilot.app.focused is not None and pilot.app.focused.id == widget_id:
            return
        await pilot.press("tab")
    raise AssertionError(f"Tab never reached #{widget_id}")


async def retype(pilot: Pilot[None], path: str, text: str) -> None:
    await focus_by_keys(pilot, BY_PATH[path].widget_id)
    await pilot.press("end", "ctrl+u", *text)


def error_text(wizard: SetupWizard, path: str) -> str:
    return str(wizard.query_one(f"#{BY_PATH[path].widget_id}-err", Static).render())


@contextlib.asynccontextmanager
async def served(core: Core) -> AsyncIterator[AsyncControlClient]:
    """The core's real control API on a unix socket in a temp dir, and a client of it."""
    # A short directory: a unix socket path has at most 107 bytes.
    sock_dir = tempfile.mkdtemp(prefix="dn-wz-")
    runner = web.AppRunner(core.control_app())
    await runner.setup()
    socket_path = f"{sock_dir}/control.sock"
    await web.UnixSite(runner, socket_path).start()
    c = AsyncControlClient(socket_path)
    try:
        yield c
    finally:
        await c.close()
        await runner.cleanup()
        shutil.rmtree(sock_dir, ignore_errors=True)
