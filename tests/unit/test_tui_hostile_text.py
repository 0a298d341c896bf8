"""Hostile text reaching the TUI (a batch or plan name, a daemon error, a log line):
shown as it is, never read as markup, never written raw to the terminal."""

from __future__ import annotations

import pytest
from textual.widgets import Static

from gateway.errors import DesanetError
from gateway.tui.app import DesanetApp
from gateway.tui.base import cells, plain
from gateway.tui.dialogs import Field, Form
from tests.unit.tuikit import FakeApi, FakeHost

HOSTILE = "[@click=app.quit]x[/] [bold red]y \x1b[2J\x1b]0;pwned\x07z\x9b31m"


def test_cells_keep_brackets_and_drop_terminal_escapes() -> None:
    [cell] = cells(HOSTILE)
    assert "\x1b" not in cell.plain and "\x9b" not in cell.plain
    assert "[@click=app.quit]x[/]" in cell.plain  # the brackets are shown, not obeyed
    assert not cell.spans


def test_plain_keeps_ordinary_text_and_newlines() -> None:
    # positive control: nothing a villager normally types is changed
    assert plain("Desa Sukamaju: paket [siswa] 5 Mb/s\nbaris 2\tx") == \
        "Desa Sukamaju: paket [siswa] 5 Mb/s\nbaris 2\tx"
    assert plain("a\x1bb") == "a\ufffdb"


@pytest.mark.parametrize("text", [HOSTILE, "plain error"])
async def test_an_error_with_markup_is_shown_literally(text: str) -> None:
    app = DesanetApp(FakeApi(), host=FakeHost(), poll=None, lang="en")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        app.report(DesanetError(text))
        await pilot.pause()
        await pilot.pause()
        assert app.is_running  # "[/]" used to raise MarkupError and end the app
        [note] = list(app._notifications)
        assert note.markup is False
        assert "\x1b" not in note.message
        assert note.message.replace("\ufffd", "") == text.translate(
            {0x1b: None, 0x07: None, 0x9b: None})


@pytest.mark.parametrize("name", ["Posyandu \x1b[2J\x1b]0;pwned\x07", "Posyandu Mei"])
async def test_a_dialog_shows_a_name_and_an_error_without_terminal_escapes(name: str) -> None:
    async def refuse(values: dict[str, str]) -> str:
        raise DesanetError(f"batch {name!s} [/] refused")

    app = DesanetApp(FakeApi(), host=FakeHost(), poll=None, lang="en")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        form = Form(f"Revoke {name}", [Field("x", "X")], refuse, question=f"Revoke {name}?")
        await app.push_screen(form)
        await pilot.pause()
        form.action_submit()
        for _ in range(50):
            await pilot.pause()
            if not form.busy:
                break
        shown = [str(form.query_one(f"#{i}", Static).render()) for i in ("question", "error")]
        assert all("\x1b" not in s and "\x07" not in s for s in shown)
        assert "Posyandu" in shown[0] and "[/] refused" in shown[1] and app.is_running
