"""The daemon is down: say so plainly, offer to start it, keep setup and diagnostics."""

from __future__ import annotations

import asyncio
import os
import shutil
from typing import ClassVar

from textual.app import ComposeResult
from textual.widgets import Footer, Static

from gateway.tui.base import Key, Page, background
from gateway.tui.i18n import tr


def has_systemd() -> bool:
    return shutil.which("systemctl") is not None and os.path.isdir("/run/systemd/system")


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
        how = tr("Tekan s untuk menyalakannya (systemctl start desanet).",
                 "Press s to start it (systemctl start desanet).") if self._systemd() else tr(
            "Systemd tidak ada di sini: jalankan `desanet run --config /etc/desanet/gateway.toml` "
            "sebagai root di terminal lain.",
            "No systemd here: run `desanet run --config /etc/desanet/gateway.toml` as root in "
            "another terminal.")
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

    def _systemd(self) -> bool:
        known = self.desanet.systemd
        return has_systemd() if known is None else known

    def action_page(self, name: str) -> None:
        self.desanet.action_page(name)

    def action_retry(self) -> None:
        self.desanet.request_refresh()

    def action_start(self) -> None:
        if not self._systemd():
            self.notify(tr("Tanpa systemd: jalankan `desanet run` sendiri.",
                           "No systemd: run `desanet run` yourself."))
            return
        background(self, self._start, exclusive=True, group="start-daemon")

    async def _start(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            "systemctl", "start", "desanet", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            self.notify(out.decode(errors="replace").strip()
                        or f"systemctl start desanet: exit {proc.returncode}",
                        title=tr("Gagal", "Failed"), severity="error", timeout=10)
            return
        self.notify(tr("Daemon dinyalakan; menunggu jawabannya ...",
                       "Daemon started; waiting for it to answer ..."))
        self.action_retry()
