"""The box itself: config file, daemon, disk and clock (Wi-Fi: wifi.py; logs: logs.py).

Each check reads files and runs small commands in a thread; the verdicts are pure
functions of what was read (``parse_*`` and ``classify_*``, unit tested).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import datetime
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.diag import probes
from gateway.diag.context import DiagContext
from gateway.diag.result import CheckResult, verdict, worst
from gateway.diag.threads import in_thread

MIN_YEAR = 2025  # a clock before this was never set: TLS and voucher times are all wrong
MAX_SKEW = 120  # s off a server's clock: past this, certificates and vouchers go wrong


def run_command(argv: Sequence[str], timeout: float) -> tuple[int, str]:
    """(exit code, stdout); 127 when the program is missing. Blocks."""
    if shutil.which(argv[0]) is None:
        return 127, ""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 126, ""
    return proc.returncode, proc.stdout


def _has_systemd() -> bool:
    return Path("/run/systemd/system").is_dir()


# -- config ---------------------------------------------------------------------------


async def check_config(ctx: DiagContext) -> CheckResult:
    if ctx.config is None:
        shown = "; ".join(ctx.config_problems[:5])
        more = len(ctx.config_problems) - 5
        extra = (f" (+{more} lagi)", f" (+{more} more)") if more > 0 else ("", "")
        return verdict("config", "fail",
                       (f"Konfigurasi {ctx.config_path} tidak bisa dipakai: {shown}{extra[0]}.",
                        f"The config {ctx.config_path} cannot be used: {shown}{extra[1]}."),
                       (f"Perbaiki baris yang disebut; periksa dengan: desanet config check "
                        f"{ctx.config_path}",
                        f"Fix the lines named; check with: desanet config check {ctx.config_path}"),
                       path=ctx.config_path, problems=ctx.config_problems)
    return verdict("config", "ok", (f"Konfigurasi {ctx.config_path} valid.",
                                    f"The config {ctx.config_path} is valid."),
                   path=ctx.config_path)


# -- daemon ---------------------------------------------------------------------------


def classify_daemon(name: str, status: dict[str, Any] | None, error: str,
                    systemd: bool, socket: str = "") -> CheckResult:
    start = ("systemctl start desanet" if systemd else "desanet run")
    if status is None:
        return verdict(name, "fail",
                       (f"Layanan desanet tidak berjalan atau tidak menjawab di {socket}. Warga "
                        "tidak mendapat alamat, portal, atau internet.",
                        f"The desanet service is not running or does not answer at {socket}. "
                        "Villagers get no address, portal or internet."),
                       (f"Jalankan: {start}; lalu lihat pemeriksaan `logs` bila gagal lagi.",
                        f"Start it: {start}; then see the `logs` check if it fails again."),
                       error=error, socket=socket)
    problems_id, problems_en = [], []
    if not status.get("ready", True):
        problems_id.append("belum siap")
        problems_en.append("not ready yet")
    dnsmasq = status.get("dnsmasq") or {}
    if dnsmasq and not dnsmasq.get("running", True):
        problems_id.append("dnsmasq (DHCP/DNS) mati")
        problems_en.append("dnsmasq (DHCP/DNS) is down")
    degraded = [str(d.get("part", d)) for d in status.get("degraded") or []]
    if degraded:
        problems_id.append("berjalan terbatas: " + ", ".join(degraded))
        problems_en.append("running degraded: " + ", ".join(degraded))
    uplink = (status.get("uplink") or {}).get("state", "unknown")
    details: dict[str, Any] = {
        "socket": socket, "ready": status.get("ready"), "uplink": uplink,
        "sessions_active": status.get("sessions_active"),
        "dnsmasq_running": dnsmasq.get("running"), "degraded": degraded}
    if problems_en:
        return verdict(name, "warn",
                       ("Layanan berjalan, tetapi: " + "; ".join(problems_id) + ".",
                        "The service runs, but: " + "; ".join(problems_en) + "."),
                       ("Lihat `desanet status` dan pemeriksaan `logs`.",
                        "See `desanet status` and the `logs` check."), **details)
    return verdict(name, "ok", (f"Layanan berjalan (uplink: {uplink}).",
                                f"The service runs (uplink: {uplink})."), **details)


def _daemon_status(socket_path: str, timeout: float) -> tuple[dict[str, Any] | None, str]:
    from gateway.control.client import ControlClient
    from gateway.errors import ControlError

    try:
        with ControlClient(socket_path, timeout=timeout) as client:
            return client.request("GET", "/v1/status"), ""
    except ControlError as exc:
        return None, str(exc)


async def check_daemon(ctx: DiagContext) -> CheckResult:
    from gateway.cli_connect import DEFAULT_SOCKET

    # Without a readable config the daemon may still run (on its last good config).
    path = ctx.options.socket or (ctx.config.control.socket if ctx.config else DEFAULT_SOCKET)
    status, error = await in_thread(_daemon_status, path, ctx.options.timeout)
    return classify_daemon("daemon", status, error, _has_systemd(), path)


# -- disk -----------------------------------------------------------------------------


def parse_mounts(text: str) -> list[tuple[str, str, set[str]]]:
    """(mount point, file system type, options) from /proc/self/mounts."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            point = parts[1].replace("\\040", " ")
            out.append((point, parts[2], set(parts[3].split(","))))
    return out


def mount_of(path: str, mounts: list[tuple[str, str, set[str]]]) -> tuple[str, str, set[str]]:
    """The mount holding ``path`` (the longest mount point that is a prefix; last wins)."""
    best = ("/", "", set[str]())
    for m in mounts:
        point = m[0].rstrip("/") or "/"
        if (path == point or path.startswith(point + "/") or point == "/") \
                and len(point) >= len(best[0].rstrip("/") or "/"):
            best = m
    return best


def classify_disk(name: str, rows: list[dict[str, Any]], min_free: int) -> CheckResult:
    """``rows``: one per path (path, mount, read_only, free, total)."""
    verdicts, lines_id, lines_en = [], [], []
    for r in rows:
        pct = 100 * r["free"] / r["total"] if r["total"] else 100.0
        mib = r["free"] // (1024 * 1024)
        if r["read_only"]:
            verdicts.append("fail")
            lines_id.append(f"{r['mount']} hanya-baca (read-only)")
            lines_en.append(f"{r['mount']} is read-only")
        elif r["free"] < 50 * 1024 * 1024 or pct < 2:
            verdicts.append("fail")
            lines_id.append(f"{r['mount']} hampir penuh ({mib} MiB, {pct:.0f}% bebas)")
            lines_en.append(f"{r['mount']} is almost full ({mib} MiB, {pct:.0f}% free)")
        elif r["free"] < min_free or pct < 10:
            verdicts.append("warn")
            lines_id.append(f"{r['mount']} tinggal {mib} MiB ({pct:.0f}%) bebas")
            lines_en.append(f"{r['mount']} has {mib} MiB ({pct:.0f}%) free")
        else:
            verdicts.append("ok")
    status = worst(verdicts)  # type: ignore[arg-type]
    details: dict[str, Any] = {"paths": rows}
    if status == "ok":
        free = ", ".join(f"{r['mount']} {r['free'] // (1024 * 1024)} MiB" for r in rows)
        return verdict(name, "ok", (f"Disk sehat; ruang bebas: {free}.",
                                    f"Disk healthy; free: {free}."), **details)
    if any(r["read_only"] for r in rows):
        advice = ("Kartu SD mungkin rusak (kernel memasang ulang hanya-baca setelah galat). "
                  "Cadangkan data (desanet backup), lalu ganti kartu SD.",
                  "The SD card may be failing (the kernel remounts read-only after errors). "
                  "Back up the data, then replace the SD card.")
    else:
        advice = ("Hapus berkas yang tidak perlu atau kecilkan local_services.cache_size.",
                  "Remove files that are not needed or lower local_services.cache_size.")
    return verdict(name, status, ("; ".join(lines_id) + ".", "; ".join(lines_en) + "."),
                   advice, **details)


def _disk_rows(paths: list[str]) -> list[dict[str, Any]]:
    mounts = parse_mounts(Path("/proc/self/mounts").read_text(errors="replace"))
    rows, seen = [], set()
    for path in paths:
        existing = Path(path)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        point, fstype, opts = mount_of(str(existing.resolve()), mounts)
        if point in seen:
            continue
        seen.add(point)
        usage = shutil.disk_usage(existing)
        rows.append({"path": path, "mount": point, "fstype": fstype,
                     "read_only": "ro" in opts, "free": usage.free, "total": usage.total})
    return rows


async def check_disk(ctx: DiagContext) -> CheckResult:
    cfg = ctx.config
    state = cfg.store.state_dir if cfg else "/var/lib/desanet"
    min_free = max(200 * 1024 * 1024, cfg.local_services.queue_min_free_disk if cfg else 0)
    rows = await in_thread(_disk_rows, [state, "/"])
    return classify_disk("disk", rows, min_free)


# -- clock ----------------------------------------------------------------------------


def parse_timedatectl(text: str) -> dict[str, str]:
    """``timedatectl show`` output (KEY=value lines)."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def classify_clock(name: str, now: datetime.datetime, synced: bool | None, source: str,
                   skew: float | None = None, reference: str = "") -> CheckResult:
    """``skew``: this clock minus ``reference``'s (a server's HTTP Date), in seconds."""
    details: dict[str, Any] = {"now": now.isoformat(timespec="seconds"),
                               "synchronized": synced, "source": source,
                               "skew_seconds": None if skew is None else round(skew),
                               "reference": reference}
    if now.year < MIN_YEAR:
        return verdict(name, "fail",
                       (f"Jam sistem salah ({now:%Y-%m-%d}): sertifikat TLS, MQTT dan masa "
                        "berlaku voucher tidak bisa benar.",
                        f"The system clock is wrong ({now:%Y-%m-%d}): TLS and MQTT "
                        "certificates and voucher times cannot work."),
                       ("Sambungkan uplink agar NTP menyetel jam, atau setel manual: "
                        "timedatectl set-time 'YYYY-MM-DD HH:MM'.",
                        "Connect the uplink so NTP sets the clock, or set it by hand: "
                        "timedatectl set-time 'YYYY-MM-DD HH:MM'."), **details)
    if skew is not None and abs(skew) > MAX_SKEW:
        ahead = ("lebih cepat", "ahead of") if skew > 0 else ("lebih lambat", "behind")
        minutes = abs(skew) / 60
        return verdict(name, "fail",
                       (f"Jam sistem {minutes:.0f} menit {ahead[0]} dari jam {reference}: "
                        "sertifikat TLS/MQTT dan waktu voucher bisa salah.",
                        f"The system clock is {minutes:.0f} minutes {ahead[1]} {reference}'s: "
                        "TLS/MQTT certificates and voucher times may go wrong."),
                       ("Aktifkan NTP (timedatectl set-ntp true) dan pastikan uplink hidup; "
                        "atau setel manual: timedatectl set-time 'YYYY-MM-DD HH:MM'.",
                        "Turn NTP on (timedatectl set-ntp true) and make sure the uplink works; "
                        "or set it by hand: timedatectl set-time 'YYYY-MM-DD HH:MM'."),
                       **details)
    if synced is None and skew is not None:
        return verdict(name, "ok",
                       (f"Jam cocok dengan jam {reference} (selisih {abs(skew):.0f} detik).",
                        f"The clock agrees with {reference}'s (off by {abs(skew):.0f} s)."),
                       **details)
    if synced is None:
        return verdict(name, "warn",
                       ("Tidak bisa memastikan jam tersinkron NTP.",
                        "Cannot tell whether the clock is synchronised by NTP."),
                       ("Periksa layanan waktu (systemd-timesyncd atau chrony).",
                        "Check the time service (systemd-timesyncd or chrony)."), **details)
    if not synced:
        return verdict(name, "warn",
                       ("Jam belum tersinkron NTP: sertifikat dan voucher bergantung padanya.",
                        "The clock is not synchronised by NTP: certificates and vouchers "
                        "depend on it."),
                       ("Pastikan uplink hidup dan NTP aktif: timedatectl set-ntp true.",
                        "Make sure the uplink works and NTP is on: timedatectl set-ntp true."),
                       **details)
    return verdict(name, "ok", ("Jam tersinkron NTP.", "The clock is synchronised by NTP."),
                   **details)


TIME_ERROR = 5  # adjtimex: the kernel's clock is not synchronised


def _adjtimex_synced() -> bool | None:
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex, modes 0: only read
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state != TIME_ERROR


def _clock_facts() -> tuple[bool | None, str]:
    rc, out = run_command(["timedatectl", "show", "--property=NTPSynchronized"], 5)
    if rc == 0:
        value = parse_timedatectl(out).get("NTPSynchronized")
        if value in ("yes", "no"):
            return value == "yes", "timedatectl"
    return _adjtimex_synced(), "adjtimex"


async def check_clock(ctx: DiagContext) -> CheckResult:
    # A second opinion from a server the gateway talks to anyway: its HTTP Date.
    services = ctx.config.local_services.services if ctx.config else []
    url = services[0].upstream + "/" if services else None
    facts = in_thread(_clock_facts)
    if url is None:
        synced, source = await facts
        return classify_clock("clock", datetime.datetime.now(datetime.UTC), synced, source)
    (synced, source), remote = await asyncio.gather(
        facts, in_thread(probes.http_date, url, ctx.options.timeout))
    now = datetime.datetime.now(datetime.UTC)
    skew = None if remote is None else (now - remote).total_seconds()
    host = urlsplit(url).hostname or url
    return classify_clock("clock", now, synced, source, skew, host if remote else "")
