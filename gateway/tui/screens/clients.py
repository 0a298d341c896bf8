"""Clients: who is on the LAN, on which plan, for how long; authorize, deauthorize,
change plan, free a voucher's device slot."""

from __future__ import annotations

from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.widgets import DataTable, Footer, Static

from gateway.tui import view
from gateway.tui.base import Key, Page, cells, plain
from gateway.tui.dialogs import Field, Form, confirm
from gateway.tui.i18n import tr


class ClientsScreen(Page):
    NAME = "clients"
    KEYS: ClassVar[tuple[Key, ...]] = (
        ("a", "authorize", "Izinkan", "Authorize"),
        ("d", "deauthorize", "Putus", "Deauth"),
        ("p", "plan", "Paket", "Plan"),
        ("x", "release", "Lepas voucher", "Release"),
        ("r", "refresh", "Muat ulang", "Refresh"),
    )
    DEFAULT_CSS = "ClientsScreen #detail { height: 2; padding: 0 1; }"

    def compose(self) -> ComposeResult:
        yield self.nav()
        yield DataTable(id="clients", cursor_type="row", zebra_stripes=False)
        yield Static(id="detail", markup=False)
        yield Footer()

    def show(self) -> None:
        table = self.query_one("#clients", DataTable)
        keep = self.selected_key(table)
        self.columns(table, (tr("Perangkat", "Device"), 13), ("IP", 15), (tr("Status", "State"), 7),
                     (tr("Paket", "Plan"), 10), (tr("Sisa", "Left"), 6),
                     (tr("Pakai ↓/↑", "Used ↓/↑"), 15))
        for row in self.desanet.clients:
            table.add_row(*cells(view.device_name(row), row.get("ip", "-"), view.client_state(row),
                                 row.get("plan") or "-", view.left_text(row),
                                 view.usage_text(row)), key=str(row.get("mac")))
        if keep is not None:
            for i, row in enumerate(self.desanet.clients):
                if row.get("mac") == keep:
                    table.move_cursor(row=i)
        self._detail()

    def selected(self) -> dict[str, Any] | None:
        mac = self.selected_key(self.query_one("#clients", DataTable))
        return next((c for c in self.desanet.clients if c.get("mac") == mac), None)

    @on(DataTable.RowHighlighted)
    def _detail(self) -> None:
        row = self.selected()
        if row is None:
            text = tr("Belum ada klien. Klien muncul setelah mendapat alamat DHCP.",
                      "No clients yet. A client shows up once it has a DHCP address.")
        else:
            voucher = row.get("voucher")
            text = f"MAC {row.get('mac')}" + (f"  voucher {voucher}" if voucher else "")
            text += f"  {tr('lewat', 'via')} {row.get('source') or '-'}" \
                if row.get("authorized") else ""
        self.query_one("#detail", Static).update(plain(text))

    def _done(self, message: str | None) -> None:
        if message:
            self.notify(message)
            self.desanet.request_refresh()

    def _need_row(self) -> dict[str, Any] | None:
        row = self.selected()
        if row is None:
            self.notify(tr("Pilih klien dulu.", "Select a client first."))
        return row

    def action_refresh(self) -> None:
        self.desanet.request_refresh()

    def action_authorize(self) -> None:
        row = self._need_row()
        if row is None:
            return
        mac = str(row["mac"])
        api = self.desanet.api

        async def run(values: dict[str, str]) -> str:
            await api.authorize(mac, values["duration"] or None, values["plan"] or None)
            return tr(f"{view.device_name(row)} diizinkan", f"{view.device_name(row)} authorized")

        self.app.push_screen(Form(tr(f"Izinkan {mac}", f"Authorize {mac}"), [
            Field("duration", tr("Lama (kosong: bawaan portal)", "Duration (empty: portal default)"),
                  placeholder="4h"),
            Field("plan", tr("Paket (kosong: bawaan)", "Plan (empty: default)"),
                  placeholder=self._plans()),
        ], run), self._done)

    def action_deauthorize(self) -> None:
        row = self._need_row()
        if row is None:
            return
        mac = str(row["mac"])
        api = self.desanet.api

        async def run(_: dict[str, str]) -> str:
            await api.deauthorize(mac)
            return tr(f"{view.device_name(row)} diputus", f"{view.device_name(row)} deauthorized")

        self.app.push_screen(confirm(tr(f"Putuskan {view.device_name(row)} ({mac})?",
                                        f"Deauthorize {view.device_name(row)} ({mac})?"), run),
                             self._done)

    def action_plan(self) -> None:
        row = self._need_row()
        if row is None:
            return
        mac = str(row["mac"])
        api = self.desanet.api

        async def run(values: dict[str, str]) -> str:
            plan = values["plan"]
            await api.change_plan(mac, None if plan in ("", "default") else plan)
            return tr(f"paket {view.device_name(row)}: {plan or 'default'}",
                      f"{view.device_name(row)} plan: {plan or 'default'}")

        self.app.push_screen(Form(tr(f"Ganti paket {mac}", f"Change plan of {mac}"), [
            Field("plan", tr("Paket", "Plan"), str(row.get("plan") or ""), self._plans()),
        ], run), self._done)

    def action_release(self) -> None:
        row = self._need_row()
        if row is None:
            return
        code = row.get("voucher")
        if not code:
            self.notify(tr("Klien ini tidak memakai voucher.", "This client uses no voucher."))
            return
        mac = str(row["mac"])
        api = self.desanet.api

        async def run(_: dict[str, str]) -> str:
            await api.release_voucher(str(code), mac)
            return tr(f"voucher {code}: perangkat dilepas", f"voucher {code}: device released")

        self.app.push_screen(confirm(tr(
            f"Lepas {view.device_name(row)} dari voucher {code}? Waktunya tetap berjalan.",
            f"Release {view.device_name(row)} from voucher {code}? Its time keeps running."),
            run), self._done)

    def _plans(self) -> str:
        plans = ((self.desanet.config.get("shaping") or {}).get("plans") or {})
        return "default" + "".join(f", {p}" for p in sorted(plans))
