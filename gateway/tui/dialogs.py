"""Modal dialogs: a small form (fields typed, Enter sends) and a yes/no question.

The dialog runs the action itself and stays open on an error, showing the
daemon's (or the request model's) message naming the field, so a typo is
fixed in place instead of retyping the whole form.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from gateway.errors import DesanetError
from gateway.tui.base import background, plain
from gateway.tui.i18n import tr


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    value: str = ""
    placeholder: str = ""


Action = Callable[[dict[str, str]], Awaitable[str]]


def error_text(exc: BaseException) -> str:
    problems = getattr(exc, "problems", None)
    if isinstance(problems, list) and problems:
        return "\n".join(str(p) for p in problems)
    return str(exc) if isinstance(exc, DesanetError | OSError) else f"{type(exc).__name__}: {exc}"


class Form(ModalScreen[str | None]):
    """Fields, then Enter runs ``action(values)``; its return text is the dismiss value."""

    DEFAULT_CSS = """
    Form { align: center middle; }
    Form > Vertical { width: 72; height: auto; border: heavy $accent; padding: 0 1; }
    Form Input { width: 100%; }
    Form #error { color: $error; text-style: bold; }
    Form #hint { color: $text-muted; }
    """

    def __init__(self, title: str, fields: list[Field], action: Action, question: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.fields = fields
        self.action = action
        self.question = question
        self.busy = False

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(plain(self.title_text), id="title", markup=False)
            if self.question:
                yield Static(plain(self.question), id="question", markup=False)
            for f in self.fields:
                yield Label(f.label, markup=False)
                yield Input(value=f.value, placeholder=f.placeholder, id=f"f-{f.name}")
            yield Static("", id="error", markup=False)
            hint = tr("Enter: kirim   Tab: kolom berikut   Esc: batal",
                      "Enter: send   Tab: next field   Esc: cancel") if self.fields \
                else tr("y / Enter: ya   n / Esc: batal", "y / Enter: yes   n / Esc: cancel")
            yield Static(hint, id="hint", markup=False)

    def on_mount(self) -> None:
        self._bindings.bind("escape", "cancel", tr("Batal", "Cancel"))
        if not self.fields:
            self._bindings.bind("y,enter", "submit", tr("Ya", "Yes"))
            self._bindings.bind("n", "cancel", tr("Tidak", "No"))

    def values(self) -> dict[str, str]:
        return {f.name: self.query_one(f"#f-{f.name}", Input).value.strip() for f in self.fields}

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_submit()

    def action_cancel(self) -> None:
        if not self.busy:
            self.dismiss(None)

    def action_submit(self) -> None:
        if self.busy:
            return
        self.busy = True
        self.query_one("#error", Static).update(tr("sedang dikirim ...", "sending ..."))
        background(self, partial(self._run, self.values()), exclusive=True, group="form")

    async def _run(self, values: dict[str, str]) -> None:
        try:
            message = await self.action(values)
        except Exception as exc:  # shown in the dialog: nothing is lost, the form stays
            self.busy = False
            self.query_one("#error", Static).update(plain("! " + error_text(exc)))
            return
        self.busy = False
        self.dismiss(message)


def confirm(question: str, action: Action, title: str = "") -> Form:
    """A yes/no dialog that runs ``action({})`` on yes."""
    return Form(title or tr("Yakin?", "Sure?"), [], action, question)


__all__ = ["Field", "Form", "confirm", "error_text"]
