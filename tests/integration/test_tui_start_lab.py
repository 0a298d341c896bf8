"""The TUI's Diagnostics page and daemon-down page on the real daemon in the virtual
village (Pilot, keys only).

The Diagnostics page runs the real checks (gateway.diag, as `desanet tui` loads them;
this process is outside the lab's namespaces, so the checks that read the config file
and the control socket). Then the lab's daemon is stopped; the TUI shows the daemon-down
page, its Diagnostics say the daemon is not running. ``DESANET_START_COMMAND`` is the lab's own start
command (``python -m desanet_lab.start``, which returns once the daemon answers, as
``systemctl start desanet`` does), so pressing ``s`` brings the real daemon back and the
page goes away with the lab's status on the dashboard.
"""

from __future__ import annotations

import shlex
import sys

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from desanet_lab import LabInfo, LabSpec
from gateway.diag import CHECKS
from gateway.tui.api import ControlApi
from gateway.tui.app import DesanetApp, load_diagnostics
from gateway.tui.screens.diagnostics import DiagnosticsScreen
from gateway.tui.screens.down import DownScreen
from gateway.tui.start import ENV
from tests.integration.conftest import (
    LAB_TOOLS,
    LabFactory,
    ensure_gateway,
    gateway_pid,
    require_root,
    require_tools,
    stop_gateway,
    unique_prefix,
)
from tests.unit.tuikit import FakeHost
from tests.unit.wizardkit import until

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS, "nft")]
PREFIX = unique_prefix("st")


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    return make_lab(LabSpec(prefix=PREFIX, clients=1))


def app_on(lab: LabInfo) -> DesanetApp:
    return DesanetApp(ControlApi(lab.control_socket), host=FakeHost(), poll=None, lang="en",
                      diagnostics=load_diagnostics(lab.config_path), systemd=False)


async def run_check(pilot: Pilot[DesanetApp], row: int) -> str:
    """Open Diagnostics (5), run the check on ``row`` (arrows, Enter); its verdict cell
    and summary, once the run ended."""
    await pilot.press("5")
    screen = pilot.app.screen
    assert isinstance(screen, DiagnosticsScreen)
    runs = screen.runs
    await pilot.press(*(["down"] * row), "enter")
    await until(pilot, lambda: screen.runs == runs + 1, "the check", rounds=5000)
    table = screen.query_one(DataTable)
    verdict, summary = table.get_row_at(row)[1:3]
    await pilot.press("escape")
    return f"{verdict} {summary}"


async def test_diagnostics_page_runs_the_real_checks(lab: LabInfo) -> None:
    assert list(CHECKS)[:2] == ["config", "daemon"]  # the rows the keys reach below
    app = app_on(lab)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded and not app.is_down, "the first read")
        assert (await run_check(pilot, 0)).startswith("[ OK ]")  # the lab's gateway.toml
        daemon = await run_check(pilot, 1)
        assert daemon.startswith("[ OK ]"), daemon


async def test_s_on_the_daemon_down_page_starts_the_real_daemon(
        lab: LabInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    old = stop_gateway(lab)
    command = shlex.join([sys.executable, "-m", "desanet_lab.start", "--prefix", lab.prefix])
    monkeypatch.setenv(ENV, command)
    app = app_on(lab)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, DownScreen), "the daemon-down page")
            text = str(app.screen.query_one("#message", Static).render())
            assert "NOT RUNNING" in text and "desanet_lab.start" in text, text
            daemon = await run_check(pilot, 1)  # diagnostics still work, and agree
            assert daemon.startswith("[FAIL]") and "not running" in daemon, daemon
            assert isinstance(app.screen, DownScreen)
            await pilot.press("s")
            # The command returns once the daemon answers; a daemon's start-up on a busy
            # machine may take the lab's whole readiness timeout, so a long deadline.
            await until(pilot, lambda: not app.is_down and bool(app.status.get("site")),
                        "the real daemon read by the TUI", rounds=10000)
            assert app.status["site"] == "Hotspot Desa Lab"
            assert not any(isinstance(s, DownScreen) for s in app.screen_stack)
        assert gateway_pid(lab) != old  # a new daemon, started by the page's command
    finally:
        ensure_gateway(lab)  # the lab as it was for whatever runs after
