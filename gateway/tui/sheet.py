"""The printable voucher sheet (Step 5's, with QR codes) written to a file or a USB stick.

The same page as `desanet vouchers print`: rendered from the daemon's running
config (its portal address goes into the QR codes) and the batch's unused
vouchers as the control API lists them; written whole or not at all.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import psutil

from gateway.errors import Invalid
from gateway.tui.api import TuiApi
from gateway.tui.i18n import tr


def usb_mounts() -> list[str]:
    """Mount points of removable media (what a technician's stick mounts under)."""
    try:
        parts = psutil.disk_partitions(all=False)
    except OSError:
        return []
    return sorted(p.mountpoint for p in parts
                  if p.mountpoint.startswith(("/media/", "/run/media/", "/mnt/")))


def default_path(batch: str) -> str:
    mounts = usb_mounts()
    folder = mounts[0] if mounts else os.getcwd()
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in batch) or "semua"
    return str(Path(folder) / f"voucher-{safe}.html")


def _voucher(v: dict[str, Any]) -> Any:
    from gateway.model import Voucher

    return Voucher(code=v["code"], duration=v["duration"], plan=v.get("plan"),
                   created=v["created"], batch=v["batch"], max_devices=v.get("max_devices", 1),
                   first_used=v.get("first_used"), revoked=v.get("revoked", False),
                   devices=tuple(v.get("devices") or ()), batch_name=v.get("batch_name", ""),
                   serial=v.get("serial", 0))


async def export_sheet(api: TuiApi, batch: str | None, path: str, lang: str | None) -> int:
    """Write the sheet of ``batch``'s unused vouchers to ``path``; returns how many.

    Raises Invalid (nothing to print, no path, a bad language), ControlError, OSError."""
    from gateway.config.loader import parse_config_text, write_file_atomic
    from gateway.portal.printable import render_voucher_sheet

    if not path:
        raise Invalid("path", path, tr("jalur berkas, mis. /media/usb/voucher.html",
                                        "a file path, e.g. /media/usb/voucher.html"))
    if lang not in (None, "", "id", "en"):
        raise Invalid("lang", lang, "id or en")
    rows = [v for v in await api.vouchers(batch or None) if v.get("state") == "unused"]
    if not rows:
        raise Invalid("batch", batch, tr("batch dengan voucher yang belum dipakai",
                                          "a batch with unused vouchers"))
    shown = await api.config_show()
    if not shown.text:
        raise Invalid("config", None, tr("daemon yang berjalan dengan berkas konfigurasi "
                                          "(untuk alamat portal di kode QR)",
                                          "a daemon running from a config file (the portal "
                                          "address in the QR codes)"))
    cfg = parse_config_text(shown.text, shown.path or "the daemon's config")
    html = render_voucher_sheet(cfg, [_voucher(v) for v in rows], lang or None)
    await asyncio.to_thread(write_file_atomic, path, html)
    return len(rows)
