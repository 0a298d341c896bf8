"""Diagnostics: run every check or one, see each verdict and what to do about it.

The checks are gateway.diag's (they work with the daemon down); the screen
gets them through its constructor so tests can hand it a stand-in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.widgets import DataTable, Footer, Static

from gateway.tui import view
from gateway.tui.base import Key, Page, cells
from gateway.tui.i18n import tr

if TYPE_CHECKING:
    from gateway.tui.app import DiagRunner


def _text(result: Any, what: str) -> str:
    return str(getattr(result, tr(f"{what}_id", f"{what}_en"), "") or "")


class DiagnosticsScreen(Page):
    NAME = "diagnostics"
    KEYS: ClassVar[tuple[Key, ...]] = (
        ("a", "run_all", "Jalankan semua", "Run all"),
        ("enter", "run_one", "Jalankan ini", "Run this"),
        ("escape", "back", "Kembali", "Back"),
    )
    DEFAULT_CSS = "DiagnosticsScreen #advice { height: 6; padding: 0 1; border-top: solid $panel; }"

    def __init__(self, diagnostics: tuple[list[str], DiagRunner] | None) -> None:
        super().__init__()
        self.names: list[str] = list(diagnostics[0]) if diagnostics else []
        self.runner: DiagRunner | None = diagnostics[1] if diagnostics else None
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
        self.columns(table, (tr("Pemeriksaan", "Check"), 14), (tr("Hasil", "Verdict"), 12),
                     (tr("Ringkasan", "Summary"), 46))
        for name in self.names:
            result = self.results.get(name)
            if name in self.running:
                verdict, summary = tr("[berjalan]", "[running]"), ""
            elif result is None:
                verdict, summary = "-", ""
            else:
                verdict, summary = view.check_status(str(result.status)), _text(result, "summary")
            table.add_row(*cells(name, verdict, summary[:46]), key=name)
        if keep in self.names:
            table.move_cursor(row=self.names.index(keep))
        self._advice()

    @on(DataTable.RowHighlighted)
    def _advice(self) -> None:
        advice = self.query_one("#advice", Static)
        if self.runner is None:
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
        advice.update("\n".join(lines))

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
        if self.runner is None or self.running:
            return
        self.running = set(names or self.names)
        self.show()
        self.run_worker(self._check(names), exclusive=True, group="diag")

    async def _check(self, names: list[str] | None) -> None:
        assert self.runner is not None
        try:
            results = await self.runner(names)
        except Exception as exc:
            self.notify_error(exc)
            results = []
        finally:
            self.running = set()
        for result in results:
            self.results[str(result.name)] = result
        self.runs += 1
        self.show()
