"""Wi-Fi: a radio, hostapd running, the country set to ID (Indonesian channels and power).

A gateway whose LAN is cabled access points has no radio: the check says so and skips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.diag.context import DiagContext
from gateway.diag.result import CheckResult, verdict
from gateway.diag.threads import in_thread

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
    radios, hostapd, conf = await in_thread(_wifi_facts)
    return classify_wifi("wifi", radios, hostapd, conf)
