"""The ordered registry of checks and the one way to run them.

A check is an async function of the :class:`DiagContext` returning one
:class:`CheckResult`. Blocking work (raw sockets, files, subprocesses) runs in threads
inside the check; every check also runs under a deadline here, so a wedged probe turns
into a ``fail`` naming the deadline instead of hanging the CLI or the TUI screen.
Checks run at once: a whole run takes about as long as its slowest check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.diag import certs, lan, logs, reach, system, wifi
from gateway.diag.context import DiagContext, DiagOptions, load_context
from gateway.diag.result import CheckResult, verdict
from gateway.diag.threads import in_thread

CheckFn = Callable[[DiagContext], Awaitable[CheckResult]]


@dataclass(frozen=True)
class Check:
    name: str
    title_id: str
    title_en: str
    run: CheckFn
    needs_config: bool = True
    deadline: float = 20.0  # s, the whole check

    def title(self, lang: str) -> str:
        return self.title_en if lang == "en" else self.title_id


def _checks(*checks: Check) -> dict[str, Check]:
    return {c.name: c for c in checks}


CHECKS: dict[str, Check] = _checks(
    Check("config", "Berkas konfigurasi", "Config file", system.check_config, needs_config=False),
    Check("daemon", "Layanan desanet", "desanet daemon", system.check_daemon, needs_config=False),
    Check("arp-scan", "Perangkat di LAN", "Devices on the LAN", lan.check_arp_scan),
    Check("rogue-dhcp", "Server DHCP liar", "Rogue DHCP server", lan.check_rogue_dhcp),
    Check("dns", "DNS", "DNS", reach.check_dns),
    Check("http", "Layanan pemerintah (HTTP)", "Government services (HTTP)", reach.check_http),
    Check("mqtt", "Broker MQTT", "MQTT broker", reach.check_mqtt),
    Check("cert", "Sertifikat MQTT", "MQTT certificate", certs.check_cert),
    Check("speed", "Kecepatan uplink", "Uplink speed", reach.check_speed, deadline=60.0),
    Check("wifi", "Wi-Fi", "Wi-Fi", wifi.check_wifi, needs_config=False),
    Check("disk", "Disk", "Disk", system.check_disk, needs_config=False),
    Check("clock", "Jam sistem", "System clock", system.check_clock, needs_config=False),
    Check("logs", "Log terakhir", "Last log lines", logs.check_logs, needs_config=False),
)


def unknown_names(names: Sequence[str]) -> list[str]:
    return [n for n in names if n not in CHECKS]


async def run_checks(names: Sequence[str] | None = None, config_path: str | None = None,
                     options: DiagOptions | None = None) -> list[CheckResult]:
    """Run the named checks (all by default) at once; results in registry order.

    Raises ValueError naming the known checks when a name is unknown. Never raises for
    what a check finds: a check that crashes or overruns its deadline is a ``fail``.
    """
    wanted = list(CHECKS) if names is None else list(dict.fromkeys(names))
    bad = unknown_names(wanted)
    if bad:
        raise ValueError(f"unknown check {', '.join(bad)}; the checks are: {', '.join(CHECKS)}")
    ctx = await in_thread(load_context, config_path, options)
    ordered = [CHECKS[n] for n in CHECKS if n in wanted]
    return list(await asyncio.gather(*(_run_one(check, ctx) for check in ordered)))


async def _run_one(check: Check, ctx: DiagContext) -> CheckResult:
    if check.needs_config and ctx.config is None:
        return verdict(check.name, "skip",
                       (f"Dilewati: konfigurasi {ctx.config_path} tidak bisa dibaca.",
                        f"Skipped: the config {ctx.config_path} cannot be read."),
                       ("Perbaiki konfigurasi dulu (lihat pemeriksaan `config`).",
                        "Fix the config first (see the `config` check)."))
    try:
        async with asyncio.timeout(check.deadline):
            return await check.run(ctx)
    except TimeoutError:
        return verdict(check.name, "fail",
                       (f"Pemeriksaan tidak selesai dalam {check.deadline:g} detik.",
                        f"The check did not finish within {check.deadline:g} s."),
                       ("Jalankan lagi; bila tetap begitu, sistem mungkin sangat sibuk.",
                        "Run it again; if it persists, the system may be overloaded."),
                       deadline=check.deadline)
    except Exception as exc:  # a bug or a surprise in one check must not hide the others
        return verdict(check.name, "fail",
                       (f"Pemeriksaan gagal berjalan: {exc}", f"The check itself failed: {exc}"),
                       ("Laporkan pesan ini ke pengembang desanet.",
                        "Report this message to the desanet developers."),
                       error=f"{type(exc).__name__}: {exc}")
