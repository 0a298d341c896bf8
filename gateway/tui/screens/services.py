"""Services: the local government-services catalog, its cache and queued forms; prefetch."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.widgets import DataTable, Footer, Static

from gateway.cli_format import percent
from gateway.timefmt import DEFAULT_TIMEZONE, format_time
from gateway.tui import view
from gateway.tui.base import Key, Page, background, cells, plain
from gateway.tui.i18n import tr

STATES = {"online": ("daring", "online"), "offline": ("LURING", "OFFLINE"),
          "unknown": ("belum tahu", "unknown")}


class ServicesScreen(Page):
    NAME = "services"
    KEYS: ClassVar[tuple[Key, ...]] = (
        ("p", "prefetch", "Ambil sekarang", "Prefetch now"),
        ("r", "refresh", "Muat ulang", "Refresh"),
    )
    DEFAULT_CSS = "ServicesScreen #summary { height: auto; padding: 0 1; }"

    def compose(self) -> ComposeResult:
        yield self.nav()
        yield Static(id="summary", markup=False)
        yield DataTable(id="services", cursor_type="row")
        yield Footer()

    def action_refresh(self) -> None:
        self.desanet.request_refresh()

    def show(self) -> None:
        data = self.desanet.services
        tz = self.desanet.status.get("timezone") or DEFAULT_TIMEZONE
        table = self.query_one("#services", DataTable)
        table.clear()
        if not data.get("enabled"):
            self.query_one("#summary", Static).update(tr(
                "Layanan lokal mati (local_services.enabled = false).",
                "Local services are off (local_services.enabled = false)."))
            return
        outbox = data.get("outbox") or {}
        prefetch = data.get("prefetch") or {}
        results = list((prefetch.get("results") or {}).values())
        last = (tr(f"terakhir {format_time(prefetch['finished'], tz)}, ",
                   f"last {format_time(prefetch['finished'], tz)}, ")
                + tr(f"{results.count('ok')} ok dari {len(results)}",
                     f"{results.count('ok')} ok of {len(results)}")) \
            if prefetch.get("finished") else tr("belum pernah", "never")
        lines = [
            view.services_line(data),
            tr(f"Formulir antre: {outbox.get('queued', 0)}, terkirim {outbox.get('delivered', 0)}"
               f", gagal {outbox.get('failed', 0)}",
               f"Queued forms: {outbox.get('queued', 0)}, delivered {outbox.get('delivered', 0)}"
               f", failed {outbox.get('failed', 0)}"),
            tr(f"Prefetch: {last}", f"Prefetch: {last}"),
        ]
        self.query_one("#summary", Static).update(plain("\n".join(lines)))
        # Hit: this service's answers from the cache over all it answered ("-": none yet).
        self.columns(table, (tr("Layanan", "Service"), 12), (tr("Status", "State"), 10),
                     (tr("Galat/minta", "Errors/reqs"), 11), ("Hit", 4),
                     (tr("Terakhir ok", "Last ok"), 11), (tr("Galat terakhir", "Last error"), 16))
        for slug, h in (data.get("services") or {}).items():
            state = STATES.get(str(h.get("state")), (str(h.get("state")),) * 2)
            hit = percent((h.get("cache") or {}).get("hit_ratio"))
            table.add_row(*cells(slug, tr(*state), f"{h.get('errors', 0)}/{h.get('requests', 0)}",
                          hit, format_time(h.get("last_ok"), tz),
                          str(h.get("last_error_text") or "-")[:16]), key=slug)

    def action_prefetch(self) -> None:
        self.notify(tr("Prefetch dimulai ...", "Prefetch started ..."))
        background(self, self._prefetch, exclusive=True, group="prefetch")

    async def _prefetch(self) -> None:
        try:
            run = await self.desanet.api.prefetch()
        except Exception as exc:
            self.notify_error(exc)
            return
        results = list((run.get("results") or {}).values())
        self.notify(tr(f"Prefetch selesai: {results.count('ok')} ok dari {len(results)}",
                       f"Prefetch done: {results.count('ok')} ok of {len(results)}"))
        self.desanet.request_refresh()
