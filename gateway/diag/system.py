"""The box itself: config file, daemon, Wi-Fi, disk, clock and the last log lines.

Each check reads files and runs small commands in a thread; the verdicts are pure
functions of what was read (``parse_*`` and ``classify_*``, unit tested).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import datetime
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.diag.context import DiagContext
from gateway.diag.result import CheckResult, verdict, worst

MIN_YEAR = 2025  # a clock before this was never set: TLS and voucher times are all wrong


def _run(argv: Sequence[str], timeout: float) -> tuple[int, str]:
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
    details: dict[str, Any] = {"socket": socket, "ready": status.get("ready"), "uplink": uplink,
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
    status, error = await asyncio.to_thread(_daemon_status, path, ctx.options.timeout)
    return classify_daemon("daemon", status, error, _has_systemd(), path)


# -- Wi-Fi ----------------------------------------------------------------------------


def parse_hostapd_conf(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def classify_wifi(name: str, radios: list[str], hostapd: str | None,
                  conf: dict[str, str] | None) -> CheckResult:
    """``radios``: wireless interfaces; ``hostapd``: the running hostapd's description or
    None; ``conf``: its config file's settings (None when unreadable)."""
    details: dict[str, Any] = {"interfaces": radios, "hostapd": hostapd or ""}
    if not radios:
        return verdict(name, "skip",
                       ("Tidak ada Wi-Fi di gateway ini (LAN lewat kabel/access point).",
                        "No Wi-Fi on this gateway (the LAN is cabled or uses access points)."),
                       ("Tidak perlu tindakan; periksa access point secara terpisah.",
                        "Nothing to do; check the access points separately."), **details)
    if hostapd is None:
        return verdict(name, "fail",
                       (f"Ada Wi-Fi ({', '.join(radios)}) tetapi hostapd tidak berjalan: tidak "
                        "ada hotspot.",
                        f"Wi-Fi exists ({', '.join(radios)}) but hostapd is not running: no "
                        "hotspot."),
                       ("Jalankan: systemctl start hostapd; lihat journalctl -u hostapd.",
                        "Start it: systemctl start hostapd; see journalctl -u hostapd."),
                       **details)
    conf = conf or {}
    country, channel = conf.get("country_code", ""), conf.get("channel", "")
    details.update(country=country, channel=channel, ssid=conf.get("ssid", ""))
    if country.upper() != "ID":
        return verdict(name, "fail",
                       (f"Kode negara Wi-Fi bukan ID (tertulis: {country or 'kosong'}): "
                        "kanal dan daya pancar bisa melanggar aturan Indonesia.",
                        f"The Wi-Fi country code is not ID (found: {country or 'none'}): "
                        "channels and power may break Indonesian rules."),
                       ("Tulis country_code=ID di konfigurasi hostapd lalu mulai ulang hostapd.",
                        "Set country_code=ID in hostapd's config and restart hostapd."),
                       **details)
    return verdict(name, "ok", (f"Hotspot Wi-Fi aktif (negara ID, kanal {channel or '?'}).",
                                f"Wi-Fi hotspot up (country ID, channel {channel or '?'})."),
                   **details)


def _wifi_facts() -> tuple[list[str], str | None, dict[str, str] | None]:
    import psutil

    net = Path("/sys/class/net")
    radios = sorted(d.name for d in net.iterdir()
                    if (d / "wireless").exists() or (d / "phy80211").exists()) \
        if net.is_dir() else []
    for proc in psutil.process_iter(["name", "cmdline", "pid"]):
        if proc.info["name"] == "hostapd":
            args = [a for a in (proc.info["cmdline"] or [])[1:] if not a.startswith("-")]
            conf = None
            if args:
                try:
                    conf = parse_hostapd_conf(Path(args[-1]).read_text(errors="replace"))
                except OSError:
                    conf = None
            return radios, f"hostapd (pid {proc.info['pid']})", conf
    return radios, None, None


async def check_wifi(ctx: DiagContext) -> CheckResult:
    radios, hostapd, conf = await asyncio.to_thread(_wifi_facts)
    return classify_wifi("wifi", radios, hostapd, conf)


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
    rows = await asyncio.to_thread(_disk_rows, [state, "/"])
    return classify_disk("disk", rows, min_free)


# -- clock ----------------------------------------------------------------------------


def parse_timedatectl(text: str) -> dict[str, str]:
    """``timedatectl show`` output (KEY=value lines)."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def classify_clock(name: str, now: datetime.datetime, synced: bool | None,
                   source: str) -> CheckResult:
    details: dict[str, Any] = {"now": now.isoformat(timespec="seconds"), "synchronized": synced,
               "source": source}
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
    rc, out = _run(["timedatectl", "show", "--property=NTPSynchronized"], 5)
    if rc == 0:
        value = parse_timedatectl(out).get("NTPSynchronized")
        if value in ("yes", "no"):
            return value == "yes", "timedatectl"
    return _adjtimex_synced(), "adjtimex"


async def check_clock(ctx: DiagContext) -> CheckResult:
    synced, source = await asyncio.to_thread(_clock_facts)
    return classify_clock("clock", datetime.datetime.now(datetime.UTC), synced, source)


# -- logs -----------------------------------------------------------------------------

_TROUBLE = re.compile(r"\b(ERROR|CRITICAL|Traceback)\b|^<[0-3]>")


def classify_logs(name: str, lines: list[str], source: str) -> CheckResult:
    details: dict[str, Any] = {"source": source, "lines": lines}
    if not source:
        return verdict(name, "skip",
                       ("Tidak ada log desanet yang ditemukan.", "No desanet log found."),
                       ("Beri berkasnya dengan --log-file, atau lihat journalctl -u desanet.",
                        "Name the file with --log-file, or see journalctl -u desanet."),
                       **details)
    trouble = [x for x in lines if _TROUBLE.search(x)]
    if trouble:
        return verdict(name, "warn",
                       (f"{len(trouble)} baris galat di {len(lines)} baris terakhir ({source}); "
                        f"terakhir: {trouble[-1].strip()[:160]}",
                        f"{len(trouble)} error lines in the last {len(lines)} ({source}); "
                        f"latest: {trouble[-1].strip()[:160]}"),
                       ("Baca baris-baris itu; kirim ke operator regional bila tidak jelas.",
                        "Read those lines; send them to the regional operator if unclear."),
                       **details)
    return verdict(name, "ok", (f"Tidak ada galat di {len(lines)} baris terakhir ({source}).",
                                f"No errors in the last {len(lines)} lines ({source})."),
                   **details)


def tail(path: Path, n: int, block: int = 65536) -> list[str]:
    """The last ``n`` lines of a file, reading only its end."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - block))
        data = f.read()
    lines = data.decode(errors="replace").splitlines()
    if size > block:
        lines = lines[1:]  # the first one is cut
    return lines[-n:]


LEVELS = {0: "CRITICAL", 1: "CRITICAL", 2: "CRITICAL", 3: "ERROR", 4: "WARNING", 5: "INFO",
          6: "INFO", 7: "DEBUG"}


def journal_lines(text: str) -> list[str]:
    """``journalctl -o json`` records as "time LEVEL message" lines: the journal keeps the
    level as the record's PRIORITY, not in its text."""
    lines = []
    for raw in text.splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        msg = rec.get("MESSAGE", "")
        if isinstance(msg, list):  # journald's form of a message that is not UTF-8
            msg = bytes(msg).decode(errors="replace")
        try:
            when = datetime.datetime.fromtimestamp(int(rec["__REALTIME_TIMESTAMP"]) / 1e6,
                                                   datetime.UTC).isoformat(timespec="seconds")
        except (KeyError, ValueError):
            when = "?"
        level = LEVELS.get(int(rec.get("PRIORITY", 6)), "INFO")
        lines.append(f"{when} {level} {msg}")
    return lines


def _log_lines(config_path: str, log_file: str | None, n: int) -> tuple[list[str], str]:
    if log_file is None:
        rc, out = _run(["journalctl", "-u", "desanet", "-n", str(n), "--no-pager", "-q",
                        "-o", "json"], 5)
        lines = journal_lines(out)
        if rc == 0 and lines:
            return lines, "journalctl -u desanet"
    candidates = [Path(log_file)] if log_file else [Path(config_path).parent / "gateway.log",
                                                    Path("/var/log/desanet.log")]
    for path in candidates:
        if path.is_file():
            return tail(path, n), str(path)
    return [], ""


async def check_logs(ctx: DiagContext) -> CheckResult:
    lines, source = await asyncio.to_thread(_log_lines, ctx.config_path, ctx.options.log_file,
                                            ctx.options.log_lines)
    return classify_logs("logs", lines, source)
