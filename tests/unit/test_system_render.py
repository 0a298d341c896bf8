"""`desanet system render`: gateway.toml -> hostapd.conf, systemd-networkd and pppd files.

The image writes these at boot (images/rootfs/usr/lib/systemd/system/
desanet-system-render.service); hostapd, networkd and pppd read nothing else, so a
wrong line here is a village without Wi-Fi or uplink. Golden files under
tests/unit/golden/system_render/<case>/ (DESANET_UPDATE_GOLDEN=1 rewrites them)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import parse_config_text
from gateway.system.cli import wifi_interface, write_files
from gateway.system.render import HOSTAPD_CONF, NETWORKD_DIR, PPPOE_OPTIONS, render

GOLDEN = Path(__file__).parent / "golden" / "system_render"

BASE = """
[site]
name = "Hotspot"
village = "Desa"
{site}
[network]
wan_interface = "eth0"
lan_address = "10.42.0.1/24"
{network}
[dhcp]
range_start = "10.42.0.100"
range_end = "10.42.0.250"
"""

CASES = {
    # The usual village: DHCP uplink, a bridge of the wired ports and an open radio.
    "dhcp_bridge_open": ('wifi_ssid = "Hotspot Desa Sukamaju"', 'lan_interface = "br-lan"'),
    # A fixed address from the ISP, WPA2, the radio itself as the LAN, Malaysia.
    "static_wpa_wlan": (
        'wifi_ssid = "Desa Ñusa 📶"\nwifi_password = "sukamaju2024"\nwifi_country = "MY"',
        'lan_interface = "wlan0"\nclient_isolation = false\nwan_address = "static"\n'
        'wan_static_address = "192.0.2.10/24"\nwan_static_gateway = "192.0.2.1"\n'
        'wan_dns = ["192.0.2.53", "1.1.1.1"]'),
    # PPPoE from the ISP's modem; a wired LAN port, so no access point is written.
    "pppoe_wired": (
        'wifi_ssid = "Hotspot"',
        'lan_interface = "eth1"\nwan_address = "pppoe"\npppoe_username = "desa@isp.example"\n'
        'pppoe_password = "ra\\"ha sia"'),
    # PPPoE with the gateway's own resolvers: networkd gives them to resolved for ppp0.
    "pppoe_dns": (
        "", 'lan_interface = "br-lan"\nwan_address = "pppoe"\npppoe_username = "desa"\n'
            'wan_dns = ["1.1.1.1"]'),
}


def config_text(case: str) -> str:
    site, network = CASES[case]
    return BASE.format(site=site, network=network)


def rendered(case: str) -> dict[str, str]:
    return render(parse_config_text(config_text(case)), "wlan0")


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_files_match_golden(case: str) -> None:
    files = rendered(case)
    folder = GOLDEN / case
    if os.environ.get("DESANET_UPDATE_GOLDEN"):
        for rel, text in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text, encoding="utf-8")
    on_disk = {str(p.relative_to(folder)): p.read_text(encoding="utf-8")
               for p in folder.rglob("*") if p.is_file()}
    assert files == on_disk


def test_ssid_is_written_as_utf8_hex_so_any_name_survives() -> None:
    conf = rendered("static_wpa_wlan")[HOSTAPD_CONF]
    ssid_hex = next(line for line in conf.splitlines() if line.startswith("ssid2="))[6:]
    assert bytes.fromhex(ssid_hex).decode("utf-8") == "Desa Ñusa 📶"
    assert "country_code=MY" in conf and "wpa_passphrase=sukamaju2024" in conf


def test_open_network_has_no_wpa_and_country_defaults_to_indonesia() -> None:
    conf = rendered("dhcp_bridge_open")[HOSTAPD_CONF]
    assert "country_code=ID" in conf.splitlines()
    assert "bridge=br-lan" in conf.splitlines()
    assert not any(line.startswith("wpa") for line in conf.splitlines())


def test_no_wifi_name_no_access_point() -> None:
    assert HOSTAPD_CONF not in rendered("pppoe_dns")
    assert HOSTAPD_CONF not in rendered("pppoe_wired")  # wired LAN: nowhere for the radio


def test_no_file_turns_on_forwarding() -> None:
    # The daemon enables forwarding only after its firewall is up (images/README.md).
    for case in CASES:
        for text in rendered(case).values():
            assert "IPForward" not in text and "ip_forward" not in text


def test_write_files_modes_and_stale_files(tmp_path: Path) -> None:
    write_files(tmp_path, rendered("static_wpa_wlan"))
    hostapd = tmp_path / HOSTAPD_CONF
    wan = tmp_path / NETWORKD_DIR / "10-desanet-wan.network"
    assert stat.S_IMODE(hostapd.stat().st_mode) == 0o600  # the Wi-Fi passphrase
    assert stat.S_IMODE(wan.stat().st_mode) == 0o644  # networkd reads as systemd-network
    foreign = tmp_path / NETWORKD_DIR / "99-technician.network"
    foreign.write_text("[Match]\nName=eth9\n")
    # The config changes to PPPoE on a wired LAN: the access point and the static WAN's
    # files go, the PPPoE options (0600) come, a file that is not ours stays.
    write_files(tmp_path, rendered("pppoe_wired"))
    assert not hostapd.exists()
    assert stat.S_IMODE((tmp_path / PPPOE_OPTIONS).stat().st_mode) == 0o600
    assert "Address=192.0.2.10/24" not in wan.read_text()
    assert foreign.exists()
    assert sorted(p.name for p in (tmp_path / NETWORKD_DIR).iterdir()) == [
        "10-desanet-wan.network", "20-desanet-lan.network", "99-technician.network"]


def test_wifi_interface_is_the_first_radio(tmp_path: Path) -> None:
    assert wifi_interface(tmp_path / "missing") == "wlan0"
    for name, radio in (("eth0", False), ("wlp3s0", True), ("wlp2s0", True), ("lo", False)):
        (tmp_path / name).mkdir()
        if radio:
            (tmp_path / name / "phy80211").mkdir()
    assert wifi_interface(tmp_path) == "wlp2s0"


def test_cli_writes_under_root_and_refuses_a_bad_config(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(config_text("dhcp_bridge_open"))
    root = tmp_path / "root"
    assert main(["system", "render", "--root", str(root), "--config", str(cfg),
                 "--wifi-interface", "wlan1"]) == 0
    assert "interface=wlan1" in (root / HOSTAPD_CONF).read_text().splitlines()
    cfg.write_text(config_text("dhcp_bridge_open").replace('wan_interface = "eth0"',
                                                           'wan_interface = "br-lan"'))
    capsys.readouterr()
    assert main(["system", "render", "--root", str(tmp_path / "other"), "--config",
                 str(cfg)]) == 2
    assert "network.wan_interface" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()  # nothing half-written
