"""Plain text of what the screens show, from the control API's answers.

Pure functions (no Textual), so the words are tested without a terminal.
Every state is spelled out in words, never shown by colour alone: a
monochrome serial console must say the same as a colour terminal.
"""

from __future__ import annotations

import hashlib
from typing import Any

from gateway.cli_format import format_bytes
from gateway.config.units import format_left, human_rate
from gateway.timefmt import DEFAULT_TIMEZONE, format_time
from gateway.tui.i18n import tr


def short_id(mac: str) -> str:
    """A device's name for bystanders when it sent no hostname: a stable 6-hex tag of
    its MAC (never the MAC itself: the dashboard may be read over a shoulder)."""
    return "#" + hashlib.sha256(mac.lower().encode()).hexdigest()[:6]


def device_name(row: dict[str, Any]) -> str:
    name = row.get("hostname")
    return str(name)[:13] if isinstance(name, str) and name else short_id(str(row.get("mac", "")))


def usage_bytes(row: dict[str, Any]) -> tuple[int | None, int | None]:
    """(down, up) bytes of a client's shaping classes; None where shaping is off."""
    shaping = row.get("shaping")
    if not isinstance(shaping, dict):
        return None, None

    def count(direction: str) -> int | None:
        stats = (shaping.get(direction) or {}).get("stats")
        return int(stats["bytes"]) if isinstance(stats, dict) and "bytes" in stats else None

    return count("down"), count("up")


def usage_text(row: dict[str, Any]) -> str:
    down, up = usage_bytes(row)
    if down is None and up is None:
        return "-"
    return f"{format_bytes(down or 0)}/{format_bytes(up or 0)}"


def top_users(clients: list[dict[str, Any]], n: int = 5) -> list[tuple[str, int, int]]:
    """(name, down bytes, up bytes) of the ``n`` authorized clients that moved most."""
    rows = []
    for c in clients:
        down, up = usage_bytes(c)
        if c.get("authorized") and (down or up):
            rows.append((device_name(c), down or 0, up or 0))
    rows.sort(key=lambda r: (-(r[1] + r[2]), r[0]))
    return rows[:n]


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def rate(bits: float | None) -> str:
    return "-" if bits is None else human_rate(bits)


def uplink_line(status: dict[str, Any]) -> str:
    up = status.get("uplink") or {}
    tz = status.get("timezone") or DEFAULT_TIMEZONE
    state = up.get("state")
    word = {"up": tr("NAIK", "UP"), "down": tr("PUTUS", "DOWN")}.get(
        str(state), tr("belum diketahui", "unknown"))
    latency = up.get("latency_ms")
    ms = f", {latency:.0f} ms" if isinstance(latency, int | float) else ""
    since = f" {tr('sejak', 'since')} {format_time(up['since'], tz)}" if up.get("since") else ""
    return f"{tr('Uplink', 'Uplink')}: {word}{ms}{since}"


def clients_line(status: dict[str, Any], clients: list[dict[str, Any]]) -> str:
    authorized = sum(1 for c in clients if c.get("authorized"))
    connected = len(clients)
    return tr(f"Klien: {connected} terhubung, {authorized} masuk",
              f"Clients: {connected} connected, {authorized} authorized")


def services_line(services: dict[str, Any]) -> str:
    if not services.get("enabled"):
        return tr("Layanan lokal: mati", "Local services: off")
    ratio = (services.get("cache") or {}).get("hit_ratio")
    hits = "-" if ratio is None else f"{ratio:.0%}"
    health = services.get("services") or {}
    offline = sorted(s for s, h in health.items() if isinstance(h, dict)
                     and h.get("state") == "offline")
    off = (tr("luring: ", "offline: ") + ", ".join(offline)) if offline \
        else tr("semua daring", "all online")
    return tr(f"Layanan lokal: hit {hits}, {off}", f"Local services: hit {hits}, {off}")


def mqtt_line(status: dict[str, Any]) -> str:
    t = status.get("telemetry") or {}
    if not t.get("enabled"):
        return tr("MQTT: mati", "MQTT: off")
    state = tr("tersambung", "connected") if t.get("connected") \
        else tr("TIDAK tersambung", "NOT connected")
    backlog = t.get("backlog", 0)
    return tr(f"MQTT: {state}, antrean {backlog}", f"MQTT: {state}, backlog {backlog}")


def host_line(cpu: float | None, mem: float | None, temp: float | None,
              disk: float | None) -> str:
    degrees = "-" if temp is None else f"{temp:.0f}°C"
    return tr(f"CPU {percent(cpu)}  Memori {percent(mem)}  Suhu {degrees}  Disk {percent(disk)}",
              f"CPU {percent(cpu)}  Memory {percent(mem)}  Temp {degrees}  Disk {percent(disk)}")


def config_line(status: dict[str, Any]) -> str:
    config = status.get("config") or {}
    tz = status.get("timezone") or DEFAULT_TIMEZONE
    version = config.get("version") or "-"
    change = config.get("last_change") or {}
    text = tr(f"Konfigurasi {version}", f"Config {version}")
    if change.get("time"):
        what = event_words(str(change.get("type", "")))
        by = f" ({change['by']})" if change.get("by") else ""
        text += f"; {what} {format_time(change['time'], tz)}{by}"
    return text


def trial_line(status: dict[str, Any]) -> str:
    trial = (status.get("config") or {}).get("trial")
    if not isinstance(trial, dict) or not trial.get("deadline"):
        return tr("Tidak ada uji coba konfigurasi", "No config trial pending")
    tz = status.get("timezone") or DEFAULT_TIMEZONE
    until = format_time(trial["deadline"], tz)
    return tr(f"UJI COBA sampai {until}: konfirmasi atau kembali ke "
              f"{trial.get('previous_version', '-')}",
              f"TRIAL until {until}: confirm it or {trial.get('previous_version', '-')} "
              "comes back")


def left_text(row: dict[str, Any]) -> str:
    remaining = row.get("remaining")
    return format_left(remaining) if isinstance(remaining, int) else "-"


def client_state(row: dict[str, Any]) -> str:
    return tr("masuk", "online") if row.get("authorized") else tr("portal", "portal")


def voucher_state(state: str) -> str:
    return {"unused": tr("belum dipakai", "unused"), "active": tr("aktif", "active"),
            "expired": tr("habis", "expired"),
            "used_up": tr("terpakai habis", "used up"), "revoked": tr("dicabut", "revoked")}.get(
        state, state)


def check_status(status: str) -> str:
    """A diagnostic verdict as a word (with a mark that survives monochrome)."""
    return {"ok": "[ OK ]", "warn": tr("[PERINGATAN]", "[WARN]"), "fail": tr("[GAGAL]", "[FAIL]"),
            "skip": tr("[LEWATI]", "[SKIP]")}.get(status, f"[{status}]")


EVENT_WORDS = {
    "command_handled": ("perintah jarak jauh", "remote command"),
    "config_applied": ("konfigurasi diterapkan", "config applied"),
    "config_confirmed": ("konfigurasi dikonfirmasi", "config confirmed"),
    "config_refused": ("konfigurasi DITOLAK", "config REFUSED"),
    "config_rolled_back": ("konfigurasi dikembalikan", "config rolled back"),
    "plan_changed": ("paket diganti", "plan changed"),
    "service_health_changed": ("status layanan berubah", "service health changed"),
    "session_ended": ("sesi berakhir", "session ended"),
    "session_started": ("sesi dimulai", "session started"),
    "uplink_changed": ("uplink berubah", "uplink changed"),
    "voucher_batch_created": ("batch voucher dibuat", "voucher batch created"),
    "voucher_released": ("perangkat voucher dilepas", "voucher device released"),
    "voucher_revoked": ("voucher dicabut", "voucher revoked"),
}


def event_words(kind: str) -> str:
    words = EVENT_WORDS.get(kind)
    return tr(*words) if words else kind.replace("_", " ")


def event_line(event: dict[str, Any], tz: str) -> str:
    """One event for the dashboard: its time and what happened, never a MAC or an IP."""
    line = f"{format_time(event.get('time'), tz, seconds=True)}  {event_words(str(event.get('type', '?')))}"
    if event.get("type") == "uplink_changed" and "up" in event:
        line += ": " + (tr("NAIK", "UP") if event["up"] else tr("PUTUS", "DOWN"))
    return line
