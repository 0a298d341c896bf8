"""The setup wizard (Textual Pilot) against the real control API on a temporary socket.

The core runs on fakes (corekit), the control API is the daemon's own aiohttp app on
a unix socket, and the wizard talks to it through AsyncControlClient, as in the TUI.
Keys only: Tab moves between fields, F2 reviews, F3 applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import shutil
import tomllib
import types
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from textual.widgets import Static

from gateway import cli
from gateway.control import api
from gateway.control.aclient import AsyncControlClient
from gateway.control.schema import ConfigShowOut
from gateway.errors import ControlError
from gateway.tui import i18n
from gateway.tui.terminal import QUERY, TerminalProbe
from gateway.tui.wizard_apply import apply_trial, confirm_from_new_connection
from gateway.tui.wizard_fields import BY_PATH, would_be_text
from tests.unit.corekit import Core, build_core
from tests.unit.wizardkit import WizardApp, error_text, focus_by_keys, retype, served, until

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
    async with served(core) as c:
        yield c


def login_session(monkeypatch: pytest.MonkeyPatch, session: int | None) -> None:
    """Every control connection seen as from login ``session`` (None: no login, as a
    process started by systemd or CI), whatever the kernel says of this test process."""
    real = api._origin
    monkeypatch.setattr(api, "_origin", lambda request: dataclasses.replace(
        real(request), login_session=session))


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
    # The same login session as the apply (an SSH login's): the technician's Enter after the
    # change proves the terminal got through, so the daemon takes this login's confirm.
    login_session(monkeypatch, 7)
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
        # headless: the terminal cannot answer the position query, so the wizard asks
        await until(pilot, lambda: wizard.step == "waiting", "the question to keep it")
        assert "Enter" in wizard.outcome[0] and core.config.trial is not None
        await pilot.press("enter")
        await until(pilot, lambda: wizard.step == "done", "the apply")
        assert "dikonfirmasi" in wizard.outcome[0], wizard.outcome

    assert core.cfg.site.village == "Baru"  # the daemon runs it
    assert core.config.trial is None  # confirmed, not rolled back at the deadline
    types = core.event_types(seq)
    assert types[-2:] == ["config_applied", "config_confirmed"], types
    on_disk = core.config_path.read_text(encoding="utf-8")
    assert tomllib.loads(on_disk)["site"]["village"] == "Baru"
    assert COMMENT in on_disk  # the technician's file keeps its comments


async def test_without_an_answer_from_the_terminal_nothing_is_confirmed(
    core: Core, client: AsyncControlClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The change cut the technician off: no terminal answer, no Enter. The wizard must not
    # confirm; the trial stays pending and the daemon rolls it back at the deadline.
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
        await until(pilot, lambda: wizard.step == "waiting", "the question to keep it")
        await pilot.press("escape", "f3")  # neither leaves nor confirms while it waits
        await pilot.pause()
        assert wizard.step == "waiting"
    assert core.cfg.portal.mode == "voucher"
    assert core.config.trial is not None
    assert "config_confirmed" not in core.event_types()


class AnsweringTerminal(TerminalProbe):
    """A terminal at the far end of a live SSH session: it answers the position query."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    async def round_trip(self, app: object, timeout: float) -> bool:  # type: ignore[override]
        self.asked += 1
        return True


async def test_a_terminal_that_answers_confirms_without_a_key(
    core: Core, client: AsyncControlClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    login_session(monkeypatch, 7)
    app = WizardApp(client)
    app.terminal = probe = AnsweringTerminal()  # type: ignore[attr-defined]
    async with app.run_test(size=(80, 24)) as pilot:
        wizard = app.wizard
        await until(pilot, lambda: not wizard._loading, "the running config")
        await retype(pilot, "site.village", "Baru")
        await until(pilot, lambda: not wizard.problems, "no problems")
        await pilot.press("f2")
        await until(pilot, lambda: wizard.step == "review", "the review")
        await pilot.press("f3")
        await until(pilot, lambda: wizard.step == "done", "the apply")
        assert "terminal" in wizard.outcome[1], wizard.outcome
    assert probe.asked == 1 and core.config.trial is None
    assert core.event_types()[-1] == "config_confirmed"


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


async def test_esc_over_unsaved_edits_asks_once_more(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    shutil.copy(EXAMPLE, path)
    app = WizardApp(None, str(path))
    async with app.run_test(size=(80, 24)) as pilot:
        wizard = app.wizard
        await until(pilot, lambda: not wizard._loading, "the file")
        await retype(pilot, "site.name", "X")
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is wizard  # kept, and the technician is told
        assert "Esc lagi" in str(wizard.query_one("#wz-problems", Static).render())
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is not wizard, "the wizard to close")
    assert path.read_text(encoding="utf-8") == EXAMPLE.read_text(encoding="utf-8")


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


async def test_a_change_the_box_refuses_is_not_applied(
    core: Core, client: AsyncControlClient,
) -> None:
    # A WAN interface this box lacks passes `config check` but not the daemon: nothing
    # runs, nothing is left to confirm.
    core.config.check_network = lambda cfg: [
        ("network.wan_interface", cfg.network.wan_interface, "an interface this box has")]
    version, seq = core.config.version, core.bus.last_seq
    text = EXAMPLE.read_text(encoding="utf-8").replace('wan_interface = "eth0"',
                                                       'wan_interface = "eth9"')
    with pytest.raises(ControlError) as caught:
        await apply_trial(client, text)
    assert "network.wan_interface" in str(caught.value)
    assert core.config.version == version and core.config.trial is None
    assert "config_applied" not in core.event_types(seq)


async def test_no_confirm_for_a_trial_that_is_gone(
    core: Core, client: AsyncControlClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Rolled back (or replaced) before the new connection got there: nothing is
    # confirmed, and the technician is sent to `desanet status`.
    login_session(monkeypatch, None)
    text = EXAMPLE.read_text(encoding="utf-8").replace("Desa Sukamaju", "Desa Lain")
    trial = await apply_trial(client, text)
    assert core.config.trial is not None
    await client.config_rollback(by="test")
    outcome = await confirm_from_new_connection(client, trial, proof="terminal")
    assert "desanet status" in outcome[1]
    assert "config_confirmed" not in core.event_types()
    assert core.cfg.site.village == "Desa Sukamaju"


class BrokenShow(AsyncControlClient):
    """A daemon that answers but fails to show its config."""

    async def config_show(self) -> ConfigShowOut:
        raise ControlError("GET /v1/config failed with 500", 500, "internal")


async def test_a_daemon_that_cannot_show_its_config_gets_nothing_applied(tmp_path: Path) -> None:
    # Not "daemon down": writing the file behind a running daemon would skip the trial.
    path = tmp_path / "gateway.toml"
    shutil.copy(EXAMPLE, path)
    app = WizardApp(BrokenShow(str(tmp_path / "x.sock")), str(path))
    async with app.run_test(size=(80, 24)) as pilot:
        wizard = app.wizard
        await until(pilot, lambda: not wizard._loading, "the load")
        assert wizard.client is not None
        await retype(pilot, "site.name", "X")
        await pilot.press("f2")
        await pilot.pause()
        assert wizard.step == "form"
        assert "tidak bisa menampilkan" in str(wizard.query_one("#wz-problems", Static).render())
    assert path.read_text(encoding="utf-8") == EXAMPLE.read_text(encoding="utf-8")


class FakeDriver:
    """A terminal line: what the app writes, and (when ``answers``) the terminal's reply."""

    is_headless = False

    def __init__(self, probe: TerminalProbe, answers: bool) -> None:
        self.probe, self.answers, self.written = probe, answers, ""

    def write(self, data: str) -> None:
        self.written += data

    def flush(self) -> None:
        if self.answers and self.written.endswith(QUERY):
            asyncio.get_running_loop().call_soon(self.probe.answered)  # CSI row;col R


@pytest.mark.parametrize("answers", [True, False])
async def test_the_probe_asks_the_terminal_and_waits_for_its_answer(answers: bool) -> None:
    probe = TerminalProbe()
    app = types.SimpleNamespace(_driver=FakeDriver(probe, answers))
    assert await probe.round_trip(app, 0.2 if not answers else 30) is answers  # type: ignore[arg-type]
    assert app._driver.written == QUERY
    probe.answered()  # a late or stray answer changes nothing
    assert await TerminalProbe().round_trip(types.SimpleNamespace(_driver=None), 1) is False  # type: ignore[arg-type]


@pytest.mark.parametrize("typed", ["[/]x[@click=app.quit]", "fast"])
async def test_a_value_with_markup_is_shown_as_typed(tmp_path: Path, typed: str) -> None:
    """A rate typed (or pasted) as "[/]..." is shown in config check's line as it is; it
    used to be read as markup ("[/]" closes nothing: MarkupError, the app gone)."""
    path = tmp_path / "gateway.toml"
    shutil.copy(EXAMPLE, path)
    app = WizardApp(None, str(path))
    async with app.run_test(size=(80, 24)) as pilot:
        wizard = app.wizard
        await until(pilot, lambda: not wizard._loading, "the file")
        await retype(pilot, "shaping.uplink_down", typed)
        await until(pilot, lambda: bool(error_text(wizard, "shaping.uplink_down")), "a problem")
        await pilot.pause()
        assert app.is_running
        shown = str(wizard.query_one("#wz-problems", Static).render())
        assert typed in shown
