"""The TUI's daemon-down page starts the real daemon in the virtual village (Pilot, keys).

The lab's daemon is stopped; the TUI (in this process, talking to the lab's control
socket) shows the daemon-down page. ``DESANET_START_COMMAND`` is the lab's own start
command (``python -m desanet_lab.start``, which returns once the daemon answers, as
``systemctl start desanet`` does), so pressing ``s`` brings the real daemon back and the
page goes away with the lab's status on the dashboard.
"""

from __future__ import annotations

import shlex
import sys

import pytest
from textual.widgets import Static

from desanet_lab import LabInfo, LabSpec
from gateway.tui.api import ControlApi
from gateway.tui.app import DesanetApp
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
from tests.unit.tuikit import FakeHost, StandInDiag
from tests.unit.wizardkit import until

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS, "nft")]
PREFIX = unique_prefix("st")


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    return make_lab(LabSpec(prefix=PREFIX, clients=1))


async def test_s_on_the_daemon_down_page_starts_the_real_daemon(
        lab: LabInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    old = stop_gateway(lab)
    command = shlex.join([sys.executable, "-m", "desanet_lab.start", "--prefix", lab.prefix])
    monkeypatch.setenv(ENV, command)
    app = DesanetApp(ControlApi(lab.control_socket), host=FakeHost(), poll=None, lang="en",
                     diagnostics=StandInDiag().pair(), systemd=False)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, DownScreen), "the daemon-down page")
            text = str(app.screen.query_one("#message", Static).render())
            assert "NOT RUNNING" in text and "desanet_lab.start" in text, text
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
