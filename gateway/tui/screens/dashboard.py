"""The dashboard: is the village online, who uses it, is the box well."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.widgets import Footer, Sparkline, Static

from gateway.cli_format import format_bytes
from gateway.timefmt import DEFAULT_TIMEZONE
from gateway.tui import view
from gateway.tui.base import Key, Page, plain
from gateway.tui.i18n import tr

TOP_USERS = 5
EVENTS_SHOWN = 3


class DashboardScreen(Page):
    NAME = "dashboard"
    KEYS: ClassVar[tuple[Key, ...]] = (("r", "refresh", "Muat ulang", "Refresh"),)
    DEFAULT_CSS = """
    DashboardScreen #spark { height: 2; margin: 0 1; }
    DashboardScreen Static { padding: 0 1; }
    DashboardScreen #nav { padding: 0; }
    """

    def compose(self) -> ComposeResult:
        yield self.nav()
        yield Static(id="head", markup=False)
        yield Sparkline([], id="spark")
        yield Static(id="body", markup=False)
        yield Footer()

    def action_refresh(self) -> None:
        self.desanet.request_refresh()

    def show(self) -> None:
        app = self.desanet
        if not app.loaded:
            self.query_one("#head", Static).update(tr("Membaca ...", "Reading ..."))
            return
        status = app.status
        rates = app.throughput
        down = rates.down[-1] if rates.down else None
        up = rates.up[-1] if rates.up else None
        site = f"{status.get('site', '-')} ({status.get('village', '-')})"
        ready = tr("siap", "ready") if status.get("ready") else tr("BELUM SIAP", "NOT READY")
        if status.get("degraded"):
            ready += tr(", TERGANGGU", ", DEGRADED")
        head = [f"{site}  {ready}", view.uplink_line(status),
                f"WAN ↓ {view.rate(down)}  ↑ {view.rate(up)}  "
                + tr("(3 menit terakhir, unduh)", "(last 3 minutes, download)")]
        self.query_one("#head", Static).update(plain("\n".join(head)))
        self.query_one("#spark", Sparkline).data = list(rates.down)
        h = app.host_stats
        lines = [
            view.clients_line(status, app.clients),
            view.services_line(app.services),
            view.mqtt_line(status),
            view.host_line(h.cpu_percent if h else None, h.memory_percent if h else None,
                           h.temperature_c if h else None, h.disk_percent if h else None),
            view.config_line(status),
            view.trial_line(status),
            "",
            tr("Pemakai teratas (unduh / unggah):", "Top users (down / up):"),
        ]
        top = view.top_users(app.clients, TOP_USERS)
        lines += [f"  {name:16} {format_bytes(d):>10} / {format_bytes(u):<10}"
                  for name, d, u in top] or [tr("  (belum ada data lalu lintas)",
                                                "  (no traffic counted yet)")]
        lines.append(tr("Peristiwa terakhir:", "Recent events:"))
        tz = status.get("timezone") or DEFAULT_TIMEZONE
        recent = list(app.events)[-EVENTS_SHOWN:]
        lines += [f"  {view.event_line(e, tz)}" for e in reversed(recent)] or ["  -"]
        self.query_one("#body", Static).update(plain("\n".join(lines)))
