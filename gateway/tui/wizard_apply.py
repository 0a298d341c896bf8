"""What the setup wizard does with a checked config text (no Textual here).

* :func:`diff_lines`: the changes as ``desanet config diff`` prints them, from the
  control API, or computed here the daemon's way when it is down.
* :func:`apply_trial` then :func:`confirm_from_new_connection`: ``config apply``
  with a confirm window, then ``config confirm`` sent by a *new* control client,
  only once it reached the daemon and saw the trial just applied. The daemon
  refuses a confirm from the connection (or, where the kernel knows them, the
  login session) that applied; that refusal becomes the instruction to confirm
  from a new SSH login.
* :func:`save_file`: the daemon is down; the text is checked again and written
  atomically.

Each outcome is a pair of texts (Bahasa Indonesia, English) for the screen.
"""

from __future__ import annotations

import asyncio
import getpass
import time
from dataclasses import dataclass
from typing import Any

from gateway.config.diff import ABSENT, Change, config_changes, format_change
from gateway.config.loader import parse_config_text, write_config_atomic
from gateway.control.aclient import AsyncControlClient
from gateway.errors import ConfigError, ControlError
from gateway.timefmt import DEFAULT_TIMEZONE, format_time

CONFIRM_WINDOW = 120  # seconds the trial runs before the daemon rolls it back by itself
BY = "tui-wizard"
SAME_CONNECTION = "same_connection"  # the daemon's reason for a confirm from the applier

Pair = tuple[str, str]


def by() -> str:
    """Who asked, for the daemon's events: the wizard and the technician's account."""
    try:
        return f"{BY}:{getpass.getuser()}"
    except (KeyError, OSError):
        return BY


def change_lines(changes: list[Any]) -> list[str]:
    """The API's changes ({path, old, new}; None for absent) as `config diff` prints them."""
    out = []
    for c in changes:
        old = ABSENT if c.old is None else c.old
        new = ABSENT if c.new is None else c.new
        out.append(format_change(Change(c.path, old, new)))
    return out


async def diff_lines(client: AsyncControlClient | None, base: str, text: str) -> list[str]:
    """What applying ``text`` would change. Raises ControlError (the daemon refused)."""
    if client is not None:
        return change_lines((await client.config_diff(text)).changes)
    # Daemon down: the daemon's own comparison (validated configs, dotted paths, secrets
    # shown only as changed).
    new = parse_config_text(text).model_dump(mode="json")
    try:
        old = parse_config_text(base).model_dump(mode="json")
    except ConfigError:
        old = {}
    return [format_change(c) for c in config_changes(old, new)]


async def save_file(path: str, text: str) -> Pair:
    """Daemon down: check and write the file atomically (the daemon reads it at start).
    Raises ConfigError, OSError."""
    await asyncio.to_thread(write_config_atomic, path, text)
    return (f"Tersimpan di {path}. Daemon tidak berjalan: jalankan "
            "`systemctl start desanet` agar konfigurasi ini dipakai.",
            f"Saved to {path}. The daemon is not running: start it "
            "(`systemctl start desanet`) to run this config.")


@dataclass(frozen=True, slots=True)
class Trial:
    version: str
    until: str  # the deadline as the site's local clock time

    @property
    def running(self) -> Pair:
        return (f"Konfig {self.version} berjalan sebagai uji coba sampai {self.until}; "
                "memeriksa koneksi baru...",
                f"Config {self.version} runs as a trial until {self.until}; "
                "checking a new connection...")


async def apply_trial(client: AsyncControlClient, text: str,
                      window: int = CONFIRM_WINDOW) -> Trial:
    """``config apply`` with a confirm window. Raises ControlError (nothing applied)."""
    applied = await client.config_apply(text, confirm=window, by=by())
    zone = parse_config_text(text).site.timezone or DEFAULT_TIMEZONE
    deadline = applied.trial.deadline if applied.trial else time.time() + window
    return Trial(applied.version, format_time(deadline, zone))


async def confirm_from_new_connection(client: AsyncControlClient, trial: Trial) -> Pair:
    """Confirm on a NEW control connection, only if it reaches the daemon and the trial it
    sees is the one just applied; otherwise say what the technician must do."""
    fresh = AsyncControlClient(client.socket_path, client.timeout)
    try:
        status = await fresh.status()
        pending = (status.get("config") or {}).get("trial") or {}
        if pending.get("version") != trial.version:
            return (f"Uji coba {trial.version} tidak lagi berjalan (dikembalikan?); lihat "
                    "`desanet status`.",
                    f"Trial {trial.version} is no longer running (rolled back?); see "
                    "`desanet status`.")
        confirmed = await fresh.config_confirm(by=by())
    except ControlError as exc:
        if exc.reason == SAME_CONNECTION:
            return (f"Daemon meminta konfirmasi dari login baru: buka SSH baru dan jalankan "
                    f"`desanet config confirm` sebelum {trial.until}, atau konfig lama kembali.",
                    f"The daemon wants the confirm from a new login: open a new SSH "
                    f"session and run `desanet config confirm` before {trial.until}, or the "
                    "previous config comes back.")
        return (f"Belum dikonfirmasi ({exc}); konfig lama kembali pada {trial.until}.",
                f"Not confirmed ({exc}); the previous config comes back at {trial.until}.")
    finally:
        await fresh.close()
    return (f"Konfig {confirmed.version} diterapkan dan dikonfirmasi: koneksi baru ke "
            "daemon berhasil setelah perubahan.",
            f"Config {confirmed.version} applied and confirmed: a new connection reached "
            "the daemon after the change.")
