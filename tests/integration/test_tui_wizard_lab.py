"""The setup wizard against the real daemon in the virtual village (Textual Pilot, keys only).

An invalid value first (the line `desanet config check` prints, nothing applied), then a
valid one, reviewed and applied as a trial; the wizard's confirm goes over a new control
connection. Where this test process has a kernel login session, the daemon refuses a
confirm from that same login; then the wizard must say so and the trial stays pending.
"""

from __future__ import annotations

import contextlib
import io
import tomllib
from pathlib import Path

import pytest

from desanet_lab import LabInfo, LabSpec
from gateway import cli
from gateway.control.aclient import AsyncControlClient
from gateway.tui import i18n
from gateway.tui.wizard_fields import would_be_text
from tests.integration.conftest import (
    LAB_TOOLS,
    LabFactory,
    desanet_json,
    require_root,
    require_tools,
    unique_prefix,
)
from tests.unit.wizardkit import WizardApp, error_text, retype, until

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS, "nft")]
PREFIX = unique_prefix("wz")


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    return make_lab(LabSpec(prefix=PREFIX, clients=1))


def own_login_session() -> bool:
    """Whether the kernel gives this process a login session (an SSH or console login)."""
    try:
        return int(Path("/proc/self/sessionid").read_text()) != 4294967295
    except (OSError, ValueError):
        return False


def config_check(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "would-be.toml"
    path.write_text(text, encoding="utf-8")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["config", "check", str(path)]) == 2
    return [line.strip() for line in err.getvalue().splitlines()[1:]]


async def test_wizard_applies_and_confirms_on_the_real_daemon(lab: LabInfo, tmp_path: Path) -> None:
    i18n.set_language("en")
    before = desanet_json(lab.control_socket, "status")["config"]["version"]
    client = AsyncControlClient(lab.control_socket)
    app = WizardApp(client)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            wizard = app.wizard
            await until(pilot, lambda: not wizard._loading, "the running config")
            await retype(pilot, "shaping.uplink_up", "fast")
            expected = config_check(tmp_path, would_be_text(wizard.base, wizard.start,
                                                            wizard.values))
            await until(pilot, lambda: expected[0] in error_text(wizard, "shaping.uplink_up"),
                        "config check's line under the field")
            await pilot.press("f2")
            await pilot.pause()
            assert wizard.step == "form"
            assert desanet_json(lab.control_socket, "status")["config"]["version"] == before

            await pilot.press("ctrl+u", *"6mbit")
            await until(pilot, lambda: not wizard.problems, "no problems")
            await pilot.press("f2")
            await until(pilot, lambda: wizard.step == "review", "the review")
            assert any(line.startswith("shaping.uplink_up: ") for line in wizard.diff), wizard.diff
            await pilot.press("f3")
            await until(pilot, lambda: wizard.step == "done", "the apply")
            outcome = wizard.outcome[1]
    finally:
        await client.close()
        i18n.set_language("id")

    status = desanet_json(lab.control_socket, "status")
    shown = desanet_json(lab.control_socket, "config", "show")
    assert tomllib.loads(shown["text"])["shaping"]["uplink_up"] == "6mbit"  # the daemon runs it
    assert status["config"]["version"] != before
    if own_login_session():
        assert "new SSH" in outcome, outcome
        assert status["config"]["trial"] is not None
    else:
        assert "confirmed" in outcome, outcome
        assert status["config"]["trial"] is None
