"""Diagnostics: run every check or one, see each verdict and what to do about it.

The checks are gateway.diag's (they work with the daemon down); the screen
gets them through its constructor so tests can hand it a stand-in.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.widgets import DataTable, Footer, Static

from gateway.tui import view
from gateway.tui.base import Key, Page, background, cells, plain
from gateway.tui.i18n import tr

if TYPE_CHECKING:
    from gateway.tui.app import Diagnostics


def _text(result: Any, what: str) -> str:
    return str(getattr(result, tr(f"{what}_id", f"{what}_en"), "") or "")


def _details(result: Any, limit: int = 3) -> list[str]:
    details = getattr(result, "details", None)
    if not isinstance(details, dict):
        return []
    return [f"  {key}: {value}"[:76] for key, value in list(details.items())[:limit]]


class DiagnosticsScreen(Page):
    NAME = "diagnostics"
    KEYS: ClassVar[tuple[Key, ...]] = (
        ("a", "run_all", "Jalankan semua", "Run all"),
        ("enter", "run_one", "Jalankan ini", "Run this"),
        ("escape", "back", "Kembali", "Back"),
    )
    DEFAULT_CSS = "DiagnosticsScreen #advice { height: 6; padding: 0 1; border-top: solid $panel; }"

    def __init__(self, diagnostics: Diagnostics | None) -> None:
        super().__init__()
        self.diagnostics = diagnostics
        self.names: list[str] = list(diagnostics.names) if diagnostics else []
        self.results: dict[str, Any] = {}
        self.running: set[str] = set()
        self.runs = 0  # finished runs, for tests to wait on

    def compose(self) -> ComposeResult:
        yield self.nav()
        yield DataTable(id="checks", cursor_type="row")
        yield Static(id="advice", markup=False)
        yield Footer()

    def show(self) -> None:
        table = self.query_one("#checks", DataTable)
        keep = self.selected_key(table)
        self.columns(table, (tr("Pemeriksaan", "Check"), 22), (tr("Hasil", "Verdict"), 12),
                     (tr("Ringkasan", "Summary"), 36))
        titles = self.diagnostics.titles if self.diagnostics else {}
        for name in self.names:
            result = self.results.get(name)
            if name in self.running:
                verdict, summary = tr("[berjalan]", "[running]"), ""
            elif result is None:
                verdict, summary = "-", ""
            else:
                verdict, summary = view.check_status(str(result.status)), _text(result, "summary")
            title = tr(*titles[name]) if name in titles else name
            table.add_row(*cells(title, verdict, summary), key=name)
        if keep in self.names:
            table.move_cursor(row=self.names.index(keep))
        self._advice()

    @on(DataTable.RowHighlighted)
    def _advice(self) -> None:
        advice = self.query_one("#advice", Static)
        if self.diagnostics is None:
            advice.update(tr("Paket diagnosa (gateway.diag) belum terpasang.",
                             "The diagnostics package (gateway.diag) is not installed."))
            return
        name = self.selected_key(self.query_one("#checks", DataTable))
        result = self.results.get(name or "")
        if result is None:
            advice.update(tr("a: jalankan semua pemeriksaan; Enter: jalankan yang dipilih.",
                             "a: run every check; Enter: run the selected one."))
            return
        lines = [f"{view.check_status(str(result.status))} {_text(result, 'summary')}"]
        if _text(result, "advice"):
            lines.append(tr("Saran: ", "Advice: ") + _text(result, "advice"))
        advice.update(plain("\n".join(lines + _details(result))))

    def action_run_all(self) -> None:
        self._run(None)

    @on(DataTable.RowSelected)
    def _selected(self) -> None:  # Enter on the table (it takes the key before the screen)
        self.action_run_one()

    def action_run_one(self) -> None:
        name = self.selected_key(self.query_one("#checks", DataTable))
        if name is not None:
            self._run([name])

    def action_back(self) -> None:
        if self.desanet.is_down and len(self.app.screen_stack) > 1:
            self.app.pop_screen()  # back to the daemon-down page it was opened from
        elif not self.desanet.is_down:
            self.desanet.action_page("dashboard")

    def _run(self, names: list[str] | None) -> None:
        if self.diagnostics is None or self.running:
            return
        self.running = set(names or self.names)
        self.show()
        background(self, partial(self._check, sorted(self.running, key=self.names.index)),
                        exclusive=True, group="diag")

    async def _check(self, names: list[str]) -> None:
        """Each check on its own, at once: a quick verdict (DNS) is shown without
        waiting for the slowest (the speed test)."""
        assert self.diagnostics is not None
        run = self.diagnostics.run

        async def one(name: str) -> None:
            try:
                for result in await run([name]):
                    self.results[str(result.name)] = result
            except Exception as exc:  # a check that cannot even start: say so, go on
                self.notify_error(exc)
            finally:
                self.running.discard(name)
                self.show()

        await asyncio.gather(*(one(name) for name in names))
        self.runs += 1
