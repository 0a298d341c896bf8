"""What every TUI screen shares: translated key hints, the navigation line, re-rendering
on a language switch."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, cast

from rich.text import Text
from textual.binding import Binding, BindingsMap
from textual.dom import DOMNode
from textual.screen import Screen
from textual.widgets import Static

from gateway.tui.i18n import language, tr

if TYPE_CHECKING:
    from gateway.tui.app import DesanetApp

# (key, action, Bahasa Indonesia, English): shown in the footer in the current language.
Key = tuple[str, str, str, str]

# The pages, in the order of their number keys (the navigation line and the app's keys).
PAGES: tuple[tuple[str, str, str, str], ...] = (
    ("1", "dashboard", "Dasbor", "Dashboard"),
    ("2", "clients", "Klien", "Clients"),
    ("3", "vouchers", "Voucher", "Vouchers"),
    ("4", "services", "Layanan", "Services"),
    ("5", "diagnostics", "Diagnosa", "Diagnostics"),
)


def background(node: DOMNode, work: Callable[[], Awaitable[object]], **options: Any) -> None:
    """Run ``work`` as a worker of ``node``. A function, not a coroutine object: a worker
    that never starts (the app is exiting) leaves no coroutine that was never awaited."""
    node.run_worker(cast(Any, work), **options)


def translated(keys: list[Key] | tuple[Key, ...]) -> BindingsMap:
    return BindingsMap([Binding(k, action, tr(i, e)) for k, action, i, e in keys])


# C0 controls but newline and tab, DEL and C1 (0x9b is a one-byte CSI): a villager's or a
# rogue server's text must not drive the terminal (clear it, retitle it, move the cursor).
_CONTROLS = {c: "\ufffd" for c in [*range(0x00, 0x09), *range(0x0b, 0x20), *range(0x7f, 0xa0)]}


def plain(text: str) -> str:
    """``text`` with terminal control characters shown as U+FFFD."""
    return text.translate(_CONTROLS)


def cells(*values: object) -> list[Text]:
    """A table row as plain text: a hostname or an error text with brackets in it is
    shown as it is, never read as markup."""
    return [Text(plain(str(v)), no_wrap=True, overflow="ellipsis") for v in values]


def nav_line(current: str) -> Text:
    """``1 Dasbor  [2 Klien]  3 Voucher ...``: the current page in brackets and reverse
    video, so a monochrome terminal still shows where you are."""
    text = Text(no_wrap=True, overflow="ellipsis")
    for key, name, id_text, en_text in PAGES:
        label = f"{key} {tr(id_text, en_text)}"
        if name == current:
            text.append(f"[{label}]", style="reverse bold")
        else:
            text.append(f" {label} ")
        text.append(" ")
    text.append(f"w {tr('Atur', 'Setup')}")
    return text


class Page(Screen[None]):
    """A screen of the app: its own keys, a navigation line, and ``show()`` that renders
    the app's latest data into its widgets (called after each refresh)."""

    NAME: ClassVar[str] = ""
    KEYS: ClassVar[tuple[Key, ...]] = ()
    _lang: str = ""

    @property
    def desanet(self) -> DesanetApp:
        return self.app  # type: ignore[return-value]

    def nav(self) -> Static:
        return Static(nav_line(self.NAME), id="nav")

    def on_mount(self) -> None:
        self.retranslate_keys()
        self.show()

    async def on_screen_resume(self) -> None:
        # An installed page switched away keeps its widgets: catch up with a language
        # switch that happened meanwhile, and with data read meanwhile.
        if self._lang != language():
            await self.retranslate()
        else:
            self.show()

    def retranslate_keys(self) -> None:
        self._lang = language()
        self._bindings = translated(self.KEYS)
        self.refresh_bindings()

    async def retranslate(self) -> None:
        """The language changed: new key hints, widgets composed again, data shown."""
        self.retranslate_keys()
        await self.recompose()
        self.show()

    def show(self) -> None:
        """Render the app's data; must not fail before the first refresh arrived."""

    def notify_error(self, exc: BaseException) -> None:
        self.desanet.report(exc)

    def columns(self, table: Any, *columns: tuple[str, int]) -> None:
        """Empty ``table`` of rows; give it its columns (label, width) when it has none.

        Fixed widths: the layout is planned for 80 columns, and a table given its
        columns again on every refresh loses its measured widths."""
        table.clear()
        if not table.columns:
            for label, width in columns:
                table.add_column(label, width=width)

    def selected_key(self, table: Any) -> str | None:
        """The row key under a DataTable's cursor, or None for an empty table."""
        if not table.row_count:
            return None
        try:
            return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        except Exception:  # the cursor is off the rows (the table was just cleared)
            return None
