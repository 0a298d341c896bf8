"""Vouchers: create a named batch, list, revoke, export the printable sheet."""

from __future__ import annotations

from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.widgets import DataTable, Footer, Static

from gateway.config.units import format_duration
from gateway.errors import ControlError, Invalid
from gateway.tui import view
from gateway.tui.base import Key, Page, background, cells, plain
from gateway.tui.dialogs import Field, Form, confirm
from gateway.tui.i18n import language, tr
from gateway.tui.sheet import default_path, export_sheet


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise Invalid("count", text, tr("bilangan bulat 1..1000, mis. 10",
                                         "a whole number 1..1000, e.g. 10")) from None


class VouchersScreen(Page):
    NAME = "vouchers"
    KEYS: ClassVar[tuple[Key, ...]] = (
        ("n", "create", "Buat batch", "New batch"),
        ("c", "revoke", "Cabut", "Revoke"),
        ("e", "export", "Ekspor lembar", "Export sheet"),
        ("r", "refresh", "Muat ulang", "Refresh"),
    )
    DEFAULT_CSS = "VouchersScreen #detail { height: 1; padding: 0 1; }"

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.loaded = False

    def compose(self) -> ComposeResult:
        yield self.nav()
        yield DataTable(id="vouchers", cursor_type="row")
        yield Static(id="detail", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        super().on_mount()
        self.action_refresh()

    async def on_screen_resume(self) -> None:
        await super().on_screen_resume()
        self.action_refresh()  # vouchers are not in the app's periodic read: read them now

    def action_refresh(self) -> None:
        background(self, self.load, exclusive=True, group="vouchers")

    async def load(self) -> None:
        try:
            self.rows = await self.desanet.api.vouchers()
        except ControlError as exc:
            self.notify_error(exc)
        self.loaded = True
        self.show()

    def show(self) -> None:
        table = self.query_one("#vouchers", DataTable)
        self.columns(table, (tr("Kode", "Code"), 11), (tr("Status", "State"), 13),
                     (tr("Lama", "Length"), 6), (tr("Paket", "Plan"), 10), ("Batch", 20),
                     ("No", 4))
        for v in self.rows:
            table.add_row(*cells(v["code"], view.voucher_state(str(v.get("state"))),
                          format_duration(int(v.get("duration", 0))), v.get("plan") or "-",
                          (v.get("batch_name") or v.get("batch") or "-")[:20],
                          str(v.get("serial") or "")), key=str(v["code"]))
        self._detail()

    def selected(self) -> dict[str, Any] | None:
        code = self.selected_key(self.query_one("#vouchers", DataTable))
        return next((v for v in self.rows if v.get("code") == code), None)

    @on(DataTable.RowHighlighted)
    def _detail(self) -> None:
        v = self.selected()
        text = tr(f"{len(self.rows)} voucher", f"{len(self.rows)} voucher(s)")
        if v is not None:
            text += f"  batch {v.get('batch')}  " + tr(f"perangkat {len(v.get('devices') or [])}"
                                                      f"/{v.get('max_devices', 1)}",
                                                      f"devices {len(v.get('devices') or [])}"
                                                      f"/{v.get('max_devices', 1)}")
        self.query_one("#detail", Static).update(plain(text))

    def _done(self, message: str | None) -> None:
        if message:
            self.notify(message)
            self.action_refresh()

    def action_create(self) -> None:
        api = self.desanet.api

        async def run(values: dict[str, str]) -> str:
            made = await api.create_vouchers(_count(values["count"]), values["duration"],
                                             values["plan"] or None, values["name"] or None,
                                             values["seller"] or None)
            n = len(made.get("vouchers") or [])
            return tr(f"{n} voucher dibuat, batch {made.get('batch')}",
                      f"{n} voucher(s) created, batch {made.get('batch')}")

        self.app.push_screen(Form(tr("Batch voucher baru", "New voucher batch"), [
            Field("name", tr("Nama batch (dicetak di lembar)", "Batch name (printed on the sheet)"),
                  placeholder="Posyandu Mei"),
            Field("count", tr("Jumlah", "Count"), "10"),
            Field("duration", tr("Lama sejak dipakai", "Length from first use"), "1d"),
            Field("plan", tr("Paket (kosong: bawaan)", "Plan (empty: default)")),
            Field("seller", tr("Penjual (untuk laporan)", "Seller (for the report)"),
                  placeholder="Warung Bu Sari"),
        ], run), self._done)

    def action_revoke(self) -> None:
        v = self.selected()
        if v is None:
            self.notify(tr("Pilih voucher dulu.", "Select a voucher first."))
            return
        code = str(v["code"])
        api = self.desanet.api

        async def run(_: dict[str, str]) -> str:
            await api.revoke_voucher(code)
            return tr(f"voucher {code} dicabut", f"voucher {code} revoked")

        self.app.push_screen(confirm(tr(f"Cabut voucher {code}? Sesinya berakhir.",
                                        f"Revoke voucher {code}? Its sessions end."), run),
                             self._done)

    def action_export(self) -> None:
        v = self.selected()
        batch = str(v.get("batch")) if v else ""
        api = self.desanet.api

        async def run(values: dict[str, str]) -> str:
            n = await export_sheet(api, values["batch"], values["path"], values["lang"])
            return tr(f"{n} voucher ditulis ke {values['path']}",
                      f"wrote {n} voucher(s) to {values['path']}")

        self.app.push_screen(Form(tr("Ekspor lembar voucher", "Export the voucher sheet"), [
            Field("batch", tr("Batch (kosong: semua yang belum dipakai)",
                              "Batch (empty: every unused voucher)"), batch),
            Field("path", tr("Berkas (mis. di flashdisk)", "File (e.g. on a USB stick)"),
                  default_path(batch)),
            Field("lang", tr("Bahasa lembar: id atau en", "Sheet language: id or en"), language()),
        ], run), self._done)
