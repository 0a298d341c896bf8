"""SVG snapshots of the setup wizard at 80x24 (a serial console), both languages, reached
with keys only; one without colour (NO_COLOR), where a problem and the focused field
must still stand out (a "!" and reverse video).

Update after a deliberate change: ``pytest tests/unit/test_tui_wizard_snapshots.py
--snapshot-update``, then look at the SVGs in ``__snapshots__``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from gateway.tui import i18n
from gateway.tui.i18n import Language
from tests.unit.wizardkit import WizardApp

ROOT = Path(__file__).resolve().parents[2]
# Ten Tabs from the first field (site id) reach the LAN address (the static WAN fields
# are hidden: the example gets its WAN address by DHCP).
TO_LAN_ADDRESS = ["tab"] * 10
BAD_LAN_ADDRESS = [*TO_LAN_ADDRESS, "end", "backspace", "backspace", "backspace"]

Compare = Callable[..., bool]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A relative config path: the screen shows it, and it must not depend on the checkout.
    monkeypatch.chdir(ROOT)
    yield
    i18n.set_language("id")


def wizard(lang: Language) -> WizardApp:
    i18n.set_language(lang)
    return WizardApp(None, "examples/gateway.toml")


async def loaded(pilot: Pilot[None]) -> None:
    app = pilot.app
    assert isinstance(app, WizardApp)
    for _ in range(500):
        if not app.wizard._loading:
            for field in app.wizard.query(Input):
                field.cursor_blink = False  # a blinking cursor would make the picture vary
            return
        await pilot.pause(0.01)
    raise AssertionError("the wizard never loaded the file")


@pytest.mark.parametrize("lang", ["id", "en"])
def test_form(snap_compare: Compare, lang: Language) -> None:
    assert snap_compare(wizard(lang), terminal_size=(80, 24), run_before=loaded)


@pytest.mark.parametrize("lang", ["id", "en"])
def test_problem_under_its_field(snap_compare: Compare, lang: Language) -> None:
    # "10.42.0.1/24" loses its prefix: config check's line shows under the field.
    assert snap_compare(wizard(lang), terminal_size=(80, 24), run_before=loaded,
                        press=BAD_LAN_ADDRESS)


@pytest.mark.parametrize("lang", ["id", "en"])
def test_review(snap_compare: Compare, lang: Language) -> None:
    keys = ["tab", "tab", "end", "space", "2", "f2"]  # the village: "Desa Sukamaju 2"
    assert snap_compare(wizard(lang), terminal_size=(80, 24), run_before=loaded, press=keys)


def test_without_colour(snap_compare: Compare, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(wizard("id"), terminal_size=(80, 24), run_before=loaded,
                        press=BAD_LAN_ADDRESS)


@pytest.mark.parametrize("lang", ["id", "en"])
def test_static_wan_shows_its_fields(snap_compare: Compare, lang: Language) -> None:
    # Eight Tabs reach the WAN method; the Select's list: Enter, Down (static), Enter. The
    # static fields appear, each with config check's "required" line under it.
    keys = [*(["tab"] * 8), "enter", "down", "enter"]
    assert snap_compare(wizard(lang), terminal_size=(80, 24), run_before=loaded, press=keys)
