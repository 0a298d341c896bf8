"""The setup wizard (Textual Pilot) against the real control API on a temporary socket.

The core runs on fakes (corekit), the control API is the daemon's own aiohttp app on
a unix socket, and the wizard talks to it through AsyncControlClient, as in the TUI.
Keys only: Tab moves between fields, F2 reviews, F3 applies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
import tempfile
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from textual.pilot import Pilot
from textual.widgets import Static

from gateway import cli
from gateway.control import api
from gateway.control.aclient import AsyncControlClient
from gateway.tui import i18n
from gateway.tui.wizard import SetupWizard
from gateway.tui.wizard_fields import BY_PATH, would_be_text
from tests.unit.corekit import Core, build_core
from tests.unit.wizardkit import WizardApp

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gateway.toml"
COMMENT = "# Check a change before applying it:"


@pytest.fixture(autouse=True)
def indonesian() -> None:
    i18n.set_language("id")


@pytest.fixture
async def core(tmp_path: Path) -> Core:
    c = build_core(tmp_path, text=EXAMPLE.read_text(encoding="utf-8"))
    await c.start()
    return c


@pytest.fixture
async def client(core: Core) -> AsyncIterator[AsyncControlClient]:
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


def login_session(monkeypatch: pytest.MonkeyPatch, session: int | None) -> None:
    """Every control connection seen as from login ``session`` (None: no login, as a
    process started by systemd or CI), whatever the kernel says of this test process."""
    real = api._origin
    monkeypatch.setattr(api, "_origin", lambda request: dataclasses.replace(
        real(request), login_session=session))


async def until(pilot: Pilot[None], ok: Callable[[], bool], what: str) -> None:
    for _ in range(2000):  # a deadline in rounds of the app's own loop, not in seconds
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


def config_check_lines(tmp_path: Path, text: str) -> list[str]:
    """What `desanet config check` prints for ``text`` (its problem lines)."""
    path = tmp_path / "would-be.toml"
    path.write_text(text, encoding="utf-8")
    err = io.StringIO()  # not capsys: a running Textual app holds sys.stderr
    with contextlib.redirect_stderr(err):
        assert cli.main(["config", "check", str(path)]) == 2
    return [line.strip() for line in err.getvalue().splitlines()[1:]]


async def test_invalid_then_valid_then_applied_and_confirmed(
    core: Core, client: AsyncControlClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    login_session(monkeypatch, None)
    version, seq = core.config.version, core.bus.last_seq
    app = WizardApp(client)
    async with app.run_test(size=(80, 24)) as pilot:
        wizard = app.wizard
        await until(pilot, lambda: not wizard._loading, "the running config")
        assert wizard.values["site.village"] == "Desa Sukamaju"

        await retype(pilot, "network.lan_address", "10.42.0.1")
        expected = config_check_lines(tmp_path, would_be_text(wizard.base, wizard.start, wizard.values))
        assert expected and expected[0].startswith("network.lan_address: ")
        await until(pilot, lambda: expected[0] in error_text(wizard, "network.lan_address"),
                    "config check's message under the field")
        await pilot.press("f2")  # refused: the form stays, the bad field has the focus
        await pilot.pause()
        assert wizard.step == "form"
        assert app.focused is not None and app.focused.id == BY_PATH["network.lan_address"].widget_id
        assert core.config.version == version and core.bus.last_seq == seq  # nothing applied

        await pilot.press(*"/24")  # the cursor is still in the field
        await retype(pilot, "site.village", "Baru")
        await until(pilot, lambda: not wizard.problems, "no problems")
        assert error_text(wizard, "network.lan_address") == ""
        await pilot.press("f2")
        await until(pilot, lambda: wizard.step == "review", "the review")
        assert wizard.diff == ["site.village: 'Desa Sukamaju' -> 'Baru'"]
        assert core.config.version == version

        await pilot.press("f3")
        await until(pilot, lambda: wizard.step == "done", "the apply")
        assert "dikonfirmasi" in wizard.outcome[0], wizard.outcome

    assert core.cfg.site.village == "Baru"  # the daemon runs it
    assert core.config.trial is None  # confirmed, not rolled back at the deadline
    types = core.event_types(seq)
    assert types[-2:] == ["config_applied", "config_confirmed"], types
    on_disk = core.config_path.read_text(encoding="utf-8")
    assert tomllib.loads(on_disk)["site"]["village"] == "Baru"
    assert COMMENT in on_disk  # the technician's file keeps its comments


async def test_confirm_from_the_same_login_is_left_to_a_new_ssh_login(
    core: Core, client: AsyncControlClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The daemon refuses a confirm from the login that applied: the wizard must not
    # pretend, and the trial stays pending (the daemon rolls it back at the deadline).
    login_session(monkeypatch, 7)
    app = WizardApp(client)
    async with app.run_test(size=(80, 24)) as pilot:
        wizard = app.wizard
        await until(pilot, lambda: not wizard._loading, "the running config")
        await focus_by_keys(pilot, BY_PATH["portal.mode"].widget_id)  # a Select: arrows choose
        await pilot.press("enter", "up", "enter")
        await until(pilot, lambda: wizard.values["portal.mode"] == "voucher", "voucher mode")
        await pilot.press("f2")
        await until(pilot, lambda: wizard.step == "review", "the review")
        await pilot.press("f3")
        await until(pilot, lambda: wizard.step == "done", "the apply")
        assert "desanet config confirm" in wizard.outcome[0]
    assert core.cfg.portal.mode == "voucher"
    assert core.config.trial is not None
    assert "config_confirmed" not in core.event_types()


async def test_daemon_down_writes_the_checked_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    shutil.copy(EXAMPLE, path)
    app = WizardApp(None, str(path))
    async with app.run_test(size=(80, 24)) as pilot:
        wizard = app.wizard
        await until(pilot, lambda: not wizard._loading, "the file")
        await retype(pilot, "shaping.uplink_down", "fast")
        expected = config_check_lines(tmp_path, would_be_text(wizard.base, wizard.start, wizard.values))
        await until(pilot, lambda: expected[0] in error_text(wizard, "shaping.uplink_down"),
                    "config check's message")
        await pilot.press("f2")
        await pilot.pause()
        assert wizard.step == "form"
        assert path.read_text(encoding="utf-8") == EXAMPLE.read_text(encoding="utf-8")

        await pilot.press("ctrl+u", *"30mbit")
        await until(pilot, lambda: not wizard.problems, "no problems")
        await pilot.press("f2")
        await until(pilot, lambda: wizard.step == "review", "the review")
        assert "shaping.uplink_down: 20000000 -> 30000000" in wizard.diff
        await pilot.press("f3")
        await until(pilot, lambda: wizard.step == "done", "the save")
        assert "systemctl start desanet" in wizard.outcome[0]
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    assert data["shaping"]["uplink_down"] == "30mbit"
    assert COMMENT in path.read_text(encoding="utf-8")
    assert cli.main(["config", "check", str(path)]) == 0


async def test_language_switch_rerenders_the_texts(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    shutil.copy(EXAMPLE, path)
    app = WizardApp(None, str(path))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: not app.wizard._loading, "the file")
        keys = app.wizard.query_one("#wz-keys", Static)
        assert "tinjau" in str(keys.render())
        i18n.set_language("en")
        await pilot.pause()
        assert "review" in str(keys.render())


async def test_a_socket_nobody_listens_on_means_editing_the_file(tmp_path: Path) -> None:
    # The TUI passes the socket path; with the daemon down the wizard edits the file.
    path = tmp_path / "gateway.toml"
    shutil.copy(EXAMPLE, path)
    app = WizardApp(None, str(path), socket_path=str(tmp_path / "nobody.sock"))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: not app.wizard._loading, "the file")
        assert app.wizard.client is None
        assert app.wizard.values["site.name"] == "Hotspot Desa Sukamaju"
        assert "cannot be reached" in app.wizard.outcome[1]
