"""The daemon is down: say so plainly, offer to start it, keep setup and diagnostics."""

from __future__ import annotations

import shlex
from functools import partial
from typing import ClassVar

from textual.app import ComposeResult
from textual.widgets import Footer, Static

from gateway.tui.base import Key, Page, background
from gateway.tui.i18n import tr
from gateway.tui.start import run_start, start_argv


class DownScreen(Page):
    NAME = "down"
    KEYS: ClassVar[tuple[Key, ...]] = (
        ("s", "start", "Nyalakan daemon", "Start daemon"),
        ("r", "retry", "Coba lagi", "Retry"),
        ("5", "page('diagnostics')", "Diagnosa", "Diagnostics"),
        ("w", "app.setup", "Atur", "Setup"),
    )
    DEFAULT_CSS = """
    DownScreen #message { padding: 1 2; border: heavy $error; margin: 1 2; height: auto; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="message", markup=False)
        yield Footer()

    def show(self) -> None:
        socket = self.desanet.api.socket_path
        argv, problem = self._argv()
        if argv:
            command = shlex.join(argv)
            how = tr(f"Tekan s untuk menyalakannya ({command}).",
                     f"Press s to start it ({command}).")
        else:
            how = problem or tr(
                "Systemd tidak ada di sini: jalankan `desanet run --config "
                "/etc/desanet/gateway.toml` sebagai root di terminal lain.",
                "No systemd here: run `desanet run --config /etc/desanet/gateway.toml` as root "
                "in another terminal.")
        self.query_one("#message", Static).update("\n".join([
            tr("DAEMON DESANET TIDAK BERJALAN", "THE DESANET DAEMON IS NOT RUNNING"),
            "",
            tr(f"Tidak ada yang menjawab di {socket}.", f"Nothing answers on {socket}."),
            tr("Portal, sesi dan voucher tidak dilayani sampai daemon berjalan.",
               "The portal, sessions and vouchers are not served until it runs."),
            "",
            how,
            tr("Tekan 5 untuk diagnosa atau w untuk pengaturan: keduanya bekerja tanpa daemon.",
               "Press 5 for diagnostics or w for setup: both work without the daemon."),
            tr("Layar ini hilang sendiri begitu daemon menjawab (r: periksa sekarang).",
               "This screen goes away by itself once the daemon answers (r: check now)."),
        ]))

    def _argv(self) -> tuple[list[str] | None, str]:
        """The start command (gateway/tui/start.py), or None and why not."""
        try:
            return start_argv(systemd=self.desanet.systemd), ""
        except ValueError as exc:
            return None, str(exc)

    def action_page(self, name: str) -> None:
        self.desanet.action_page(name)

    def action_retry(self) -> None:
        self.desanet.request_refresh()

    def action_start(self) -> None:
        argv, problem = self._argv()
        if not argv:
            self.notify(problem or tr("Tanpa systemd: jalankan `desanet run` sendiri.",
                                      "No systemd: run `desanet run` yourself."))
            return
        background(self, partial(self._start, argv), exclusive=True, group="start-daemon")

    async def _start(self, argv: list[str]) -> None:
        self.notify(tr(f"Menjalankan {shlex.join(argv)} ...", f"Running {shlex.join(argv)} ..."))
        done = await run_start(argv)
        if not done.ok:
            self.notify(done.output, title=tr("Gagal", "Failed"), severity="error", timeout=10)
            return
        self.notify(tr("Daemon dinyalakan; menunggu jawabannya ...",
                       "Daemon started; waiting for it to answer ...") if not done.running else
                    tr("Perintah masih berjalan; menunggu daemon menjawab ...",
                       "The command is still running; waiting for the daemon to answer ..."))
        self.action_retry()
