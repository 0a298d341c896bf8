"""The setup wizard: the site's main settings as one keyboard form, checked as typed,
shown as a diff, applied as a trial that is confirmed only once the technician's
terminal answered after the change.

Theory of operation
-------------------
The wizard edits the config *text*: the running one (``config show``) when the
daemon answers, else the file at ``config_path``. Each keystroke writes the
form's values into that text, parsed, and runs the config loader on it, so
every message is the line ``desanet config check`` would print for the file,
shown under its field. At review the text itself is made (tomlkit, comments
kept; :mod:`gateway.tui.wizard_fields`) and checked again.

Review (F2) shows what would change: the control API's ``config diff``, or
with the daemon down the same diff computed here. Apply (F3 in the review):

* daemon up: ``config apply`` with a confirm window (a trial, Step 4). Then the
  wizard asks the technician's terminal for its cursor position
  (:mod:`gateway.tui.terminal`): an answer crossed the SSH or serial line after
  the change ran, so the technician's own way in survived it. No answer within
  a few seconds: the wizard asks for Enter, which proves the same. Only then a
  *new* control client connects, checks the trial is the one just applied and
  sends ``config confirm`` with ``proof: "terminal"`` (the daemon otherwise
  refuses a confirm from the login session that applied). If the change cut the
  technician off, no answer and no Enter arrive, nothing confirms, and the daemon
  rolls back by itself at the deadline.
* daemon down: the text is checked again and written atomically; the daemon
  must be started to run it.
"""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import Any, ClassVar

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import ContentSwitcher, Input, Select, Static

from gateway.config.loader import DEFAULT_PATH
from gateway.control.aclient import AsyncControlClient
from gateway.control.client import UNREACHABLE
from gateway.errors import ConfigError, ControlError
from gateway.tui import i18n
from gateway.tui.base import plain
from gateway.tui.i18n import tr
from gateway.tui.terminal import TerminalProbe
from gateway.tui.wizard_apply import (
    CONFIRM_WINDOW,
    Pair,
    apply_trial,
    confirm_from_new_connection,
    diff_lines,
    save_file,
)
from gateway.tui.wizard_fields import (
    FIELDS,
    GROUPS,
    Field,
    check,
    problems_by_field,
    quick_check,
    values_of,
    visible,
)

TERMINAL_WAIT = 5.0  # seconds for the terminal's answer before asking for Enter


class SetupWizard(Screen[None]):
    """``SetupWizard(client, config_path)``: ``client`` an AsyncControlClient, or None when
    the daemon is down (then the file at ``config_path`` is edited). ``socket_path``
    instead of a client: the wizard connects itself (and edits the file if nothing
    answers there)."""

    DEFAULT_CSS = """
    SetupWizard { layout: vertical; }
    SetupWizard #wz-title { height: 1; text-style: bold; padding: 0 1; }
    SetupWizard #wz-mode { height: 1; padding: 0 1; }
    SetupWizard ContentSwitcher { height: 1fr; }
    SetupWizard #wz-form { height: 1fr; }
    SetupWizard .wz-group { height: 1; margin-top: 1; text-style: bold underline; padding: 0 1; }
    SetupWizard .wz-note { height: auto; padding: 0 1 0 3; text-style: italic; }
    SetupWizard .wz-row { height: 1; padding: 0 1; }
    SetupWizard .wz-label { width: 24; height: 1; }
    SetupWizard .wz-row.here .wz-label { text-style: reverse; }
    SetupWizard .wz-row Input, SetupWizard .wz-row Select { width: 1fr; }
    SetupWizard .wz-error { height: auto; padding: 0 1 0 26; text-style: bold; display: none; }
    SetupWizard .wz-error.shown { display: block; }
    SetupWizard .wz-row.wz-hidden, SetupWizard .wz-error.shown.wz-hidden { display: none; }
    SetupWizard #wz-problems { height: auto; max-height: 4; padding: 0 1; border-top: ascii; }
    SetupWizard #wz-review { height: 1fr; }
    SetupWizard #wz-diff { height: auto; padding: 0 1; }
    SetupWizard #wz-status { height: auto; padding: 0 1; text-style: bold; }
    SetupWizard #wz-keys { height: 1; padding: 0 1; text-style: reverse; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f2,ctrl+r", "review", show=False, priority=True),
        Binding("f3", "apply", show=False, priority=True),
        # Not a priority binding: an open Select list takes its own Esc first.
        Binding("escape", "back", show=False),
        # Only while a trial waits for the technician's key (check_action), else Enter is
        # the focused widget's.
        Binding("enter", "keep", show=False, priority=True),
    ]

    def __init__(self, client: AsyncControlClient | None = None, config_path: str | None = None,
                 *, socket_path: str | None = None) -> None:
        super().__init__()
        self._own_client = client is None and socket_path is not None
        self.client = AsyncControlClient(socket_path) if self._own_client and socket_path \
            else client
        self.config_path = config_path or DEFAULT_PATH
        self.base = ""  # the config text the form edits
        self.start: dict[str, str] = {}  # the form's values as loaded
        self.values: dict[str, str] = {}
        self.text = ""  # the would-be text of the form as it is now
        self.problems: list[str] = []
        self._kept = asyncio.Event()  # the technician pressed Enter to keep a trial
        self._errors: dict[str, str] = {}  # the problem text shown under each field
        self.base_data: dict[str, Any] = {}
        self.step = "form"  # form -> review -> applying -> done
        self.outcome: Pair = ("", "")  # what the last apply did, both languages
        self.diff: list[str] = []
        self._loading = True
        self._leaving = False  # Esc was pressed once over unsaved edits
        self._blocked: Pair | None = None  # why nothing can be applied, if so
        self._texts: list[tuple[Static, Pair]] = []
        self._stop_listening = lambda: None

    # -- building -----------------------------------------------------------------------

    def _static(self, pair: Pair, **kw: Any) -> Static:
        widget = Static(tr(*pair), **kw)
        self._texts.append((widget, pair))
        return widget

    def compose(self) -> ComposeResult:
        yield self._static(("Wizard pengaturan", "Setup wizard"), id="wz-title")
        yield Static("", id="wz-mode", markup=False)
        with ContentSwitcher(initial="wz-form"):
            with VerticalScroll(id="wz-form"):
                for group in GROUPS:
                    yield self._static((group.title_id, group.title_en), classes="wz-group")
                    if group.note_id:
                        yield self._static((group.note_id, group.note_en), classes="wz-note")
                    for field in group.fields:
                        yield from self._row(field)
            with VerticalScroll(id="wz-review"):
                yield Static("", id="wz-diff", markup=False)
                yield Static("", id="wz-status", markup=False)
        yield Static("", id="wz-problems", markup=False)
        yield Static("", id="wz-keys", markup=False)

    def _row(self, field: Field) -> ComposeResult:
        with Horizontal(classes="wz-row", id=field.widget_id + "-row"):
            yield self._static((field.label_id, field.label_en), classes="wz-label")
            if field.kind in ("choice", "bool"):
                yield Select[str]([(c, c) for c in field.choices], id=field.widget_id,
                                  allow_blank=False, compact=True)
            else:
                yield Input(placeholder=field.placeholder, id=field.widget_id, compact=True,
                            password=field.kind == "secret", select_on_focus=False)
        yield Static("", id=field.widget_id + "-err", classes="wz-error", markup=False)

    async def on_mount(self) -> None:
        self._stop_listening = i18n.on_change(self._language_changed)
        await self._load()

    async def on_unmount(self) -> None:
        self._stop_listening()
        if self._own_client and self.client is not None:
            await self.client.close()

    async def _load(self) -> None:
        """The text to edit: the daemon's running config, else the file (or nothing)."""
        self._loading = True
        text: str | None = None
        if self.client is not None:
            try:
                shown = await self.client.config_show()
                text = shown.text
                self.config_path = shown.path or self.config_path
            except ControlError as exc:
                if exc.reason != UNREACHABLE:
                    # A daemon that answers but cannot show its config: writing the file
                    # behind its back would skip the trial, so nothing can be applied.
                    self._blocked = (f"Daemon tidak bisa menampilkan konfigurasinya: {exc}",
                                     f"The daemon cannot show its config: {exc}")
                    text = ""
                else:
                    self.outcome = (f"Daemon tidak terjangkau ({exc}); mengedit berkas.",
                                    f"The daemon cannot be reached ({exc}); editing the file.")
                    if self._own_client and self.client is not None:
                        await self.client.close()
                    self.client = None
        if text is None:
            try:
                text = await asyncio.to_thread(Path(self.config_path).read_text, encoding="utf-8")
            except FileNotFoundError:
                text = ""
            except (OSError, UnicodeDecodeError) as exc:
                self.outcome = (f"Tidak bisa membaca {self.config_path}: {exc}",
                                f"Cannot read {self.config_path}: {exc}")
                text = ""
        self._set_base(text)
        self.values = dict(self.start)
        self._leaving = False
        for field in FIELDS:
            self._fill(field, self.start[field.path])
        self._show_rows()
        self._loading = False
        self._validate()
        self._retranslate()
        self.query_one(f"#{FIELDS[0].widget_id}").focus()

    def _set_base(self, text: str) -> None:
        try:
            self.start = values_of(text)
            self.base = text
        except ConfigError as exc:
            # Not TOML at all (a hand edit gone wrong): start from an empty file, say why.
            self.outcome = ("Berkas bukan TOML, mulai dari kosong: " + "; ".join(exc.problems),
                            "The file is not TOML; starting empty: " + "; ".join(exc.problems))
            self.base, self.start = "", values_of("")
        self.base_data = tomllib.loads(self.base)

    def _fill(self, field: Field, value: str) -> None:
        if field.kind in ("choice", "bool"):
            select = self.query_one(f"#{field.widget_id}", Select)
            options = list(field.choices)
            if value and value not in options:
                options.append(value)  # a zone the short list lacks stays selectable
            select.set_options([(self._choice_label(field, c), c) for c in options])
            if value in options:
                select.value = value
        else:
            self.query_one(f"#{field.widget_id}", Input).value = value

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        # The focused field's label in reverse video: visible without colour.
        for row in self.query(".wz-row.here"):
            row.remove_class("here")
        parent = event.widget.parent
        if parent is not None and parent.has_class("wz-row"):
            parent.add_class("here")

    @staticmethod
    def _choice_label(field: Field, choice: str) -> str:
        if field.kind == "bool":
            return tr("ya", "yes") if choice == "true" else tr("tidak", "no")
        return choice

    # -- checking as typed -----------------------------------------------------------

    @on(Input.Changed)
    @on(Select.Changed)
    def _changed(self, event: Input.Changed | Select.Changed) -> None:
        widget_id = event.control.id or ""
        field = next((f for f in FIELDS if f.widget_id == widget_id), None)
        if field is None or self._loading:
            return
        value = event.value if isinstance(event.value, str) else ""
        if value == self.values.get(field.path):
            return  # the echo of a value the wizard set itself
        self.values[field.path] = value
        self._leaving = False
        self._show_rows()
        self._validate()

    def _show_rows(self) -> None:
        """Only the fields the chosen WAN method needs (hidden ones take no focus)."""
        for field in FIELDS:
            if field.when is not None:
                hidden = not visible(field, self.values)
                self.query_one(f"#{field.widget_id}-row").set_class(hidden, "wz-hidden")
                self.query_one(f"#{field.widget_id}-err").set_class(hidden, "wz-hidden")

    def _validate(self) -> None:
        """The form's problems as typed (from the parsed text: fast enough per keystroke)."""
        self._show_field_problems(quick_check(self.base_data, self.start, self.values))

    def _show_field_problems(self, problems: list[str]) -> None:
        self.problems = problems
        owned, _other = problems_by_field(problems)
        for field in FIELDS:
            shown = "\n".join(f"! {line}" for line in owned.get(field.path, []))
            if self._errors.get(field.path, "") != shown:
                self._errors[field.path] = shown
                err = self.query_one(f"#{field.widget_id}-err", Static)
                err.update(plain(shown))
                err.set_class(bool(shown), "shown")
        self._show_problems()
        # The problem box below the form grows: keep the field typed in and its line in view.
        self.call_after_refresh(self._keep_focus_in_view)

    def _keep_focus_in_view(self) -> None:
        focused = self.focused
        if self.step != "form" or focused is None or not focused.id or \
                not focused.id.startswith("f-"):
            return
        form = self.query_one("#wz-form", VerticalScroll)
        form.scroll_to_widget(self.query_one(f"#{focused.id}-err"), animate=False)
        form.scroll_to_widget(focused, animate=False)

    def _show_problems(self) -> None:
        box = self.query_one("#wz-problems", Static)
        if self.problems:
            head = tr(f"{len(self.problems)} masalah (seperti `desanet config check`):",
                      f"{len(self.problems)} problem(s) (as `desanet config check`):")
            box.update(plain("\n".join([head, *(f"! {p}" for p in self.problems)])))
        elif self.step == "form":
            box.update(tr("Tidak ada masalah. F2: lihat perubahan.",
                          "No problems. F2: review the changes."))
        box.display = bool(self.problems) or self.step == "form"

    # -- language -----------------------------------------------------------------------

    def _language_changed(self, _lang: i18n.Language) -> None:
        # The switch is the app's (process-wide); a screen already gone ignores it.
        if self.is_attached and not self._loading:
            self._retranslate()

    def _retranslate(self) -> None:
        for widget, pair in self._texts:
            widget.update(tr(*pair))
        for field in FIELDS:
            if field.kind == "bool" and not self._loading:
                select = self.query_one(f"#{field.widget_id}", Select)
                current = select.value
                select.set_options([(self._choice_label(field, c), c) for c in field.choices])
                if isinstance(current, str):
                    select.value = current
        mode = tr(f"Daemon berjalan: perubahan diuji dan dikonfirmasi ({CONFIRM_WINDOW} d).",
                  f"Daemon running: the change runs as a trial ({CONFIRM_WINDOW} s).") \
            if self.client is not None else \
            tr(f"Daemon mati: menyimpan ke {self.config_path}.",
               f"Daemon down: saving to {self.config_path}.")
        if self._blocked is not None:
            mode = tr(*self._blocked)
        self.query_one("#wz-mode", Static).update(mode)
        self._show_problems()
        self._show_review()
        self._show_keys()

    def _show_keys(self) -> None:
        keys = {
            "form": tr("Tab/Shift+Tab: pindah  F2: tinjau  Esc: tutup",
                       "Tab/Shift+Tab: move  F2: review  Esc: close"),
            "review": tr("F3: terapkan  Esc: kembali ke formulir",
                         "F3: apply  Esc: back to the form"),
            "applying": tr("Menerapkan...", "Applying..."),
            "waiting": tr("Enter: pertahankan konfig baru", "Enter: keep the new config"),
            "done": tr("Esc: kembali ke formulir", "Esc: back to the form"),
        }[self.step]
        self.query_one("#wz-keys", Static).update(keys)

    def _show_review(self) -> None:
        if self.step == "form":
            return
        head = tr("Perubahan:", "Changes:") if self.diff else \
            tr("Tidak ada perubahan.", "No changes.")
        diff = "\n".join([head, *(f"  {d}" for d in self.diff)])
        self.query_one("#wz-diff", Static).update(plain(diff))
        self.query_one("#wz-status", Static).update(tr(*self.outcome))

    # -- steps ------------------------------------------------------------------------

    def _to(self, step: str) -> None:
        self.step = step
        self.query_one(ContentSwitcher).current = "wz-form" if step == "form" else "wz-review"
        if step != "form":
            self.query_one("#wz-review").focus()
        self._show_problems()
        self._show_review()
        self._show_keys()

    async def action_review(self) -> None:
        if self.step != "form" or self._loading:
            return
        if self._blocked is not None:
            box = self.query_one("#wz-problems", Static)
            box.display = True
            box.update(tr(*self._blocked))
            return
        # The text itself, checked as `desanet config check` checks a file.
        self.text, problems = check(self.base, self.start, self.values)
        self._show_field_problems(problems)
        if self.problems:
            owned, _ = problems_by_field(self.problems)
            first = next((f for f in FIELDS if f.path in owned), None)
            if first is not None:
                self.query_one(f"#{first.widget_id}").focus()
            return
        self.outcome = ("", "")
        try:
            self.diff = await diff_lines(self.client, self.base, self.text)
        except ControlError as exc:
            self.diff = []
            self.outcome = (f"Daemon menolak: {exc}", f"The daemon refused: {exc}")
        self._to("review")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "keep":
            return self.step == "waiting"
        return True

    def action_keep(self) -> None:
        self._kept.set()

    def action_back(self) -> None:
        if self.step in ("applying", "waiting"):
            return
        if self.step != "form":
            self._to("form")
        elif self.values != self.start and not self._leaving:
            self._leaving = True  # unsaved edits: a second Esc closes without them
            box = self.query_one("#wz-problems", Static)
            box.display = True
            box.update(tr("Perubahan belum diterapkan. Esc lagi: tutup tanpa menyimpan.",
                          "The changes are not applied. Esc again: close without them."))
        else:
            self.dismiss(None)

    def action_apply(self) -> None:
        if self.step == "review" and self.diff and not self.problems:
            self._to("applying")
            self._apply()

    async def _terminal_answers(self) -> bool:
        """Did the technician's terminal answer a query after the change (tui/terminal.py)?"""
        probe = getattr(self.app, "terminal", None)
        return isinstance(probe, TerminalProbe) and \
            await probe.round_trip(self.app, TERMINAL_WAIT)

    @work(exclusive=True, group="wizard-apply")
    async def _apply(self) -> None:
        text = self.text
        try:
            if self.client is None:
                self.outcome = await save_file(self.config_path, text)
            else:
                applied = await apply_trial(self.client, text)
                self.outcome = applied.running
                self._show_review()
                if not await self._terminal_answers():
                    self.outcome = applied.press_enter
                    self._kept.clear()
                    self._to("waiting")
                    await self._kept.wait()  # the daemon rolls back by itself meanwhile
                    self._to("applying")
                self.outcome = await confirm_from_new_connection(self.client, applied,
                                                                 proof="terminal")
        except ControlError as exc:
            self.outcome = (f"Tidak diterapkan: {exc}", f"Not applied: {exc}")
        except ConfigError as exc:
            self.outcome = ("Tidak disimpan: " + "; ".join(exc.problems),
                            "Not saved: " + "; ".join(exc.problems))
        except OSError as exc:
            self.outcome = (f"Tidak disimpan: {exc}", f"Not saved: {exc}")
        else:
            # The applied text is the form's new starting point (nothing left unsaved).
            self._set_base(text)
            self.values = dict(self.start)
            for field in FIELDS:
                self._fill(field, self.start[field.path])
            self._show_rows()
        self._to("done")


__all__ = ["SetupWizard"]
