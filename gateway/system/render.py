"""gateway.toml -> the system files a gateway image reads at boot.

Pure: a Config in, ``{path relative to the root: text}`` out; the image's
desanet-system-render.service writes them under /run before systemd-networkd,
hostapd and pppd start (the root is read-only, gateway.toml is the one place a
technician edits). What is written:

- hostapd.conf: the village's access point (site.wifi_ssid, wifi_password,
  wifi_country); only when a Wi-Fi name is set.
- systemd-networkd files: the WAN (DHCP, a static address, or a bare link for
  PPPoE) and the LAN (a bridge of every other Ethernet port plus the radio when
  network.lan_interface is a bridge, else the interface itself).
- pppd options for PPPoE (the ISP's user name and password: mode 0600).
"""

from __future__ import annotations

import ipaddress
from typing import Final

from gateway.config.schema import PPP_INTERFACE, Config

RUN_DIR: Final = "run/desanet-system"
NETWORKD_DIR: Final = "run/systemd/network"
HOSTAPD_CONF: Final = f"{RUN_DIR}/hostapd.conf"
PPPOE_OPTIONS: Final = f"{RUN_DIR}/pppoe.options"
DEFAULT_WIFI_INTERFACE: Final = "wlan0"
# Files holding a secret (Wi-Fi passphrase, ISP password): root-only.
SECRET_FILES: Final = frozenset({HOSTAPD_CONF, PPPOE_OPTIONS})

_HEADER = "# Written by `desanet system render` from /etc/desanet/gateway.toml at boot; edit that file.\n"


def is_bridge(name: str) -> bool:
    """A LAN named br* is a bridge the image creates (Ethernet ports + the radio)."""
    return name.startswith("br")


def file_mode(path: str) -> int:
    # systemd-networkd reads its files as the systemd-network user.
    return 0o600 if path in SECRET_FILES else 0o644


def render(cfg: Config, wifi_interface: str = DEFAULT_WIFI_INTERFACE) -> dict[str, str]:
    """Every file for this config, keyed by its path relative to the root."""
    files = {**_wan(cfg), **_lan(cfg)}
    hostapd = _hostapd(cfg, wifi_interface)
    if hostapd is not None:
        files[HOSTAPD_CONF] = hostapd
    return files


def _hostapd(cfg: Config, wifi_interface: str) -> str | None:
    site, net = cfg.site, cfg.network
    if not site.wifi_ssid:
        return None
    lan = net.lan_interface
    if not is_bridge(lan) and lan != wifi_interface:
        return None  # the LAN is a wired port: the radio has nowhere to join
    lines = [
        _HEADER.rstrip("\n"),
        f"interface={wifi_interface}",
        *([f"bridge={lan}"] if is_bridge(lan) else []),
        "driver=nl80211",
        "ctrl_interface=/run/hostapd",
        "ctrl_interface_group=0",
        # The name as hex bytes: any UTF-8 name the schema accepts, nothing to escape.
        f"ssid2={site.wifi_ssid.encode('utf-8').hex()}",
        "utf8_ssid=1",
        f"country_code={site.wifi_country}",
        "ieee80211d=1",
        "hw_mode=g",
        "channel=6",
        "ieee80211n=1",
        "wmm_enabled=1",
        "auth_algs=1",
        "ignore_broadcast_ssid=0",
        # Phones on the radio cannot reach each other (the bridge isolates wired ones).
        f"ap_isolate={int(net.client_isolation)}",
        "max_num_sta=255",
    ]
    if site.wifi_password:
        lines += ["wpa=2", "wpa_key_mgmt=WPA-PSK", "rsn_pairwise=CCMP",
                  f"wpa_passphrase={site.wifi_password}"]
    return "\n".join(lines) + "\n"


def _network_file(match: list[str], network: list[str], extra: str = "") -> str:
    return (_HEADER + "[Match]\n" + "".join(f"{m}\n" for m in match)
            + "\n[Network]\n" + "".join(f"{n}\n" for n in network) + extra)


def _wan(cfg: Config) -> dict[str, str]:
    net = cfg.network
    path = f"{NETWORKD_DIR}/10-desanet-wan.network"
    dns = [f"DNS={server}" for server in net.wan_dns]
    # Never IPForward= here: the daemon turns forwarding on after its firewall is up.
    common = ["LinkLocalAddressing=no", "IPv6AcceptRA=no"]
    if net.wan_address == "static":
        address, gateway = net.wan_static_address, net.wan_static_gateway
        assert address is not None and gateway is not None  # the schema requires both
        text = _network_file([f"Name={net.wan_interface}"],
                             [f"Address={address}", f"Gateway={gateway}", *dns, *common])
        return {path: text}
    if net.wan_address == "pppoe":
        # The Ethernet port only carries PPPoE frames; pppd brings up ppp0.
        text = _network_file([f"Name={net.wan_interface}"], [*common],
                             "\n[Link]\nRequiredForOnline=no\n")
        files = {path: text, PPPOE_OPTIONS: _pppoe(cfg)}
        if dns:  # else pppd's usepeerdns: the ISP's resolvers (images/rootfs/etc/ppp/ip-up.d)
            files[f"{NETWORKD_DIR}/11-desanet-ppp.network"] = _network_file(
                [f"Name={PPP_INTERFACE}"], [*dns, *common])
        return files
    dhcp_dns = "\n[DHCPv4]\nUseDNS=no\n" if dns else ""
    text = _network_file([f"Name={net.wan_interface}"], ["DHCP=ipv4", *dns, *common], dhcp_dns)
    return {path: text}


def _pppoe(cfg: Config) -> str:
    net = cfg.network
    # pppd reads a quoted word with backslash escapes; the schema keeps both printable.
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        _HEADER.rstrip("\n"),
        "plugin rp-pppoe.so",
        f"nic-{net.wan_interface}",
        f"ifname {PPP_INTERFACE}",
        f"user {quoted(net.pppoe_username)}",
        *([f"password {quoted(net.pppoe_password)}"] if net.pppoe_password else []),
        "hide-password",
        "noauth",
        "defaultroute",
        "replacedefaultroute",
        "noipdefault",
        "noipv6",
        "persist",
        "maxfail 0",
        "holdoff 10",
        "lcp-echo-interval 20",
        "lcp-echo-failure 3",
        "mtu 1492",
        "mru 1492",
        *([] if net.wan_dns else ["usepeerdns"]),
    ]
    return "\n".join(lines) + "\n"


def _lan(cfg: Config) -> dict[str, str]:
    net = cfg.network
    lan = net.lan_interface
    iface: ipaddress.IPv4Interface = net.lan_address
    # The LAN keeps its address with no cable in: the portal and DHCP listen on it.
    network = [f"Address={iface}", "ConfigureWithoutCarrier=yes", "LinkLocalAddressing=no",
               "IPv6AcceptRA=no"]
    online = "\n[Link]\nRequiredForOnline=no\n"
    files: dict[str, str] = {}
    if is_bridge(lan):
        files[f"{NETWORKD_DIR}/20-desanet-lan.netdev"] = (
            _HEADER + f"[NetDev]\nName={lan}\nKind=bridge\n")
        # Every other wired port joins the LAN (the WAN's file, 10-, matches first).
        files[f"{NETWORKD_DIR}/30-desanet-lan-ports.network"] = _network_file(
            ["Type=ether", f"Name=!{net.wan_interface}"], [f"Bridge={lan}"], online)
    files[f"{NETWORKD_DIR}/20-desanet-lan.network"] = _network_file(
        [f"Name={lan}"], network, online)
    return files
