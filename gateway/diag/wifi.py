"""Wi-Fi: a radio, hostapd running, its country the configured one (site.wifi_country,
"ID" by default: Indonesian channels and power).

hostapd's country is the ``country_code`` of the config file the running hostapd was
started with. A gateway whose LAN is cabled access points has no radio: the check says
so and skips. Without a readable gateway.toml the country expected is the default, ID.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.config.schema import Site
from gateway.diag.context import DiagContext
from gateway.diag.result import CheckResult, verdict
from gateway.diag.threads import in_thread

DEFAULT_COUNTRY = str(Site.model_fields["wifi_country"].default)  # "ID"

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
                  conf: dict[str, str] | None, configured: str | None = None) -> CheckResult:
    """``radios``: wireless interfaces; ``hostapd``: the running hostapd's description or
    None; ``conf``: its config file's settings (None when unreadable); ``configured``:
    site.wifi_country (None: no readable config, so the default)."""
    expected = configured or DEFAULT_COUNTRY
    source = "site.wifi_country" if configured else "site.wifi_country (default)"
    details: dict[str, Any] = {"interfaces": radios, "hostapd": hostapd or "",
                               "configured_country": expected}
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
    country, channel = conf.get("country_code", "").strip().upper(), conf.get("channel", "")
    details.update(country=country, channel=channel, ssid=conf.get("ssid", ""))
    if country != expected:
        found = country or "kosong"
        return verdict(name, "fail",
                       (f"Kode negara Wi-Fi hostapd ({found}) tidak sama dengan {source} = "
                        f"{expected}: kanal dan daya pancar bisa melanggar aturan {expected}.",
                        f"hostapd's Wi-Fi country ({country or 'none'}) is not {source} = "
                        f"{expected}: channels and power may break the rules of {expected}."),
                       (f"Tulis country_code={expected} di konfigurasi hostapd (atau ubah "
                        "site.wifi_country bila itu yang salah), lalu mulai ulang hostapd.",
                        f"Set country_code={expected} in hostapd's config (or fix "
                        "site.wifi_country if that is the wrong one), then restart hostapd."),
                       **details)
    return verdict(name, "ok",
                   (f"Hotspot Wi-Fi aktif (negara {country} sesuai {source}, kanal "
                    f"{channel or '?'}).",
                    f"Wi-Fi hotspot up (country {country} as {source}, channel "
                    f"{channel or '?'})."),
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
    radios, hostapd, conf = await in_thread(_wifi_facts)
    configured = ctx.config.site.wifi_country if ctx.config is not None else None
    return classify_wifi("wifi", radios, hostapd, conf, configured)
