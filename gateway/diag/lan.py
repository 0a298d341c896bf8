"""The LAN as the gateway hears it: an ARP scan and a search for rogue DHCP servers.

Both speak raw frames on the LAN interface with scapy, so they need root (CAP_NET_RAW)
and run in a thread with a deadline. What the frames mean is decided by the pure
functions :func:`classify_devices` and :func:`classify_offers` (unit tested).

A DHCP discover sent from the gateway's own packet socket never reaches its own
dnsmasq (frames a host sends are not delivered back to it), so every server that
answers is another device; the gateway's own server is found as the process listening
on UDP port 67 instead.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.diag import oui
from gateway.diag.context import DiagContext
from gateway.diag.result import CheckResult, verdict
from gateway.diag.threads import in_thread

MAX_SCAN = 1024  # addresses: a /22; larger LANs are scanned in their DHCP range
NEEDS_ROOT = (("Dilewati: perlu root untuk mengirim paket mentah di LAN.",
               "Skipped: sending raw frames on the LAN needs root."),
              ("Jalankan sebagai root: sudo desanet diag", "Run it as root: sudo desanet diag"))


def missing_interface(name: str, iface: str) -> CheckResult | None:
    """A fail naming ``iface`` when this system has no such interface, else None."""
    if Path("/sys/class/net", iface).exists():
        return None
    return verdict(name, "fail",
                   (f"Antarmuka LAN {iface} tidak ada di sistem ini.",
                    f"The LAN interface {iface} does not exist on this system."),
                   ("Periksa network.lan_interface di konfigurasi (lihat: ip link) dan bahwa "
                    "layanan desanet sudah membuat bridge-nya.",
                    "Check network.lan_interface in the config (see: ip link) and that the "
                    "desanet service has made its bridge."), interface=iface)


def scan_targets(network: ipaddress.IPv4Network, dhcp_range: tuple[str, str],
                 limit: int = MAX_SCAN) -> list[str]:
    """The addresses to ask: the whole LAN when small, else the DHCP range (capped)."""
    if network.num_addresses - 2 <= limit:
        return [str(h) for h in network.hosts()]
    start, end = (int(ipaddress.IPv4Address(x)) for x in dhcp_range)
    return [str(ipaddress.IPv4Address(i)) for i in range(start, min(end, start + limit - 1) + 1)]


def classify_devices(name: str, answers: Iterable[tuple[str, str]], gateway_ip: str,
                     makers: dict[str, str], scanned: int) -> CheckResult:
    """The verdict on ARP answers ``(ip, mac)``: two MACs for one address is a conflict;
    anyone answering for the gateway's own address takes its traffic."""
    by_ip: dict[str, set[str]] = {}
    for ip, mac in answers:
        by_ip.setdefault(ip, set()).add(mac.lower())
    devices = [{"ip": ip, "mac": mac, "vendor": makers.get(mac, "")}
               for ip in sorted(by_ip, key=ipaddress.IPv4Address) for mac in sorted(by_ip[ip])]
    conflicts = {ip: sorted(m) for ip, m in by_ip.items() if len(m) > 1}
    details: dict[str, Any] = {"devices": devices, "scanned": scanned, "conflicts": conflicts}
    if gateway_ip in by_ip:
        macs = ", ".join(sorted(by_ip[gateway_ip]))
        return verdict(name, "fail",
                       (f"Perangkat lain ({macs}) memakai alamat gateway {gateway_ip}.",
                        f"Another device ({macs}) uses the gateway's address {gateway_ip}."),
                       ("Cari perangkat dengan MAC itu dan ubah alamatnya, atau cabut dari LAN.",
                        "Find the device with that MAC and change its address, or unplug it."),
                       **details)
    if conflicts:
        text = "; ".join(f"{ip}: {', '.join(m)}" for ip, m in sorted(conflicts.items()))
        return verdict(name, "warn",
                       (f"Alamat ganda di LAN (satu alamat, beberapa perangkat): {text}.",
                        f"Address conflict on the LAN (one address, several devices): {text}."),
                       ("Perangkat dengan alamat tetap (statis) bisa bentrok dengan DHCP; atur "
                        "perangkat itu memakai DHCP atau alamat di luar rentang DHCP.",
                        "A device with a fixed (static) address may clash with DHCP; set it to "
                        "DHCP or to an address outside the DHCP range."), **details)
    if not devices:
        return verdict(name, "warn",
                       (f"Tidak ada perangkat yang menjawab ({scanned} alamat ditanya).",
                        f"No device answered ({scanned} addresses asked)."),
                       ("Periksa kabel LAN dan access point; perangkat warga harus tersambung.",
                        "Check the LAN cable and the access points; villagers' devices must "
                        "be connected."), **details)
    return verdict(name, "ok",
                   (f"{len(devices)} perangkat menjawab di LAN.",
                    f"{len(devices)} devices answered on the LAN."), **details)


def quiet_scapy() -> None:
    """Keep scapy's import-time warnings (no IPv6 route, no libpcap) off the terminal: the
    TUI owns it while these checks run."""
    from scapy.error import log_scapy  # scapy's own logger (light: no routes loaded yet)

    log_scapy.setLevel(logging.ERROR)


def _arp_scan(iface: str, gateway_ip: str, targets: list[str], timeout: float) -> list[tuple[str, str]]:
    quiet_scapy()
    from scapy.arch import get_if_hwaddr
    from scapy.layers.l2 import ARP, Ether
    from scapy.sendrecv import srp

    hw = get_if_hwaddr(iface)
    frames = Ether(src=hw, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=hw, psrc=gateway_ip,
                                                         pdst=targets)
    answered, _ = srp(frames, iface=iface, timeout=timeout, verbose=False, multi=True)
    return [(r[ARP].psrc, r[ARP].hwsrc) for _, r in answered if r.haslayer(ARP) and r[ARP].op == 2]


async def check_arp_scan(ctx: DiagContext) -> CheckResult:
    name = "arp-scan"
    if not ctx.is_root:
        return verdict(name, "skip", *NEEDS_ROOT)
    assert ctx.config is not None
    net = ctx.config.network
    if (missing := missing_interface(name, net.lan_interface)) is not None:
        return missing
    targets = scan_targets(net.lan_address.network,
                           (str(ctx.config.dhcp.range_start), str(ctx.config.dhcp.range_end)))
    answers = await in_thread(_arp_scan, net.lan_interface, ctx.config.lan_ip, targets,
                              min(ctx.options.timeout, 3.0))
    makers = await in_thread(oui.vendors, {m.lower() for _, m in answers})
    return classify_devices(name, answers, ctx.config.lan_ip, makers, len(targets))


# -- rogue DHCP ------------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    server_id: str  # the DHCP server identifier option ("" when absent)
    source_ip: str
    source_mac: str
    offered: str  # yiaddr
    router: str = ""
    dns: str = ""


def classify_offers(name: str, offers: Iterable[Offer], own_ips: set[str], own_macs: set[str],
                    own_server: str | None) -> CheckResult:
    """Every answering server that is not this gateway is rogue. ``own_server`` says what
    listens on UDP 67 here (e.g. "dnsmasq, pid 42"), None when nothing does."""
    unique = {(o.server_id or o.source_ip, o.source_mac): o for o in offers}
    own: list[Offer] = []
    rogue: list[Offer] = []
    for o in unique.values():
        mine = o.server_id in own_ips or o.source_mac.lower() in own_macs
        (own if mine else rogue).append(o)
    details: dict[str, Any] = {
        "servers": [{"server": o.server_id or o.source_ip, "mac": o.source_mac,
                     "offered": o.offered, "router": o.router, "dns": o.dns,
                     "rogue": o in rogue} for o in unique.values()],
        "own_server": own_server or "",
    }
    if rogue:
        who = ", ".join(f"{o.server_id or o.source_ip} ({o.source_mac})" for o in rogue[:3])
        if len(rogue) > 3:  # forged offers from many MACs: the line stays readable
            who += f" (+{len(rogue) - 3})"
        return verdict(name, "fail",
                       (f"Ada server DHCP liar di LAN: {who}. Warga bisa mendapat alamat yang "
                        "salah dan tidak bisa membuka portal atau internet.",
                        f"Rogue DHCP server on the LAN: {who}. Villagers may get a wrong "
                        "address and reach neither the portal nor the internet."),
                       ("Cari perangkat dengan MAC itu (sering router rumah atau modem yang "
                        "dicolok lewat port LAN-nya) dan matikan DHCP-nya atau cabut kabelnya.",
                        "Find the device with that MAC (often a home router or modem plugged "
                        "in through its LAN port) and turn its DHCP off or unplug it."),
                       **details)
    if own_server is None:
        return verdict(name, "warn",
                       ("Tidak ada server DHCP liar, tetapi server DHCP gateway sendiri "
                        "(dnsmasq) tidak berjalan: warga tidak mendapat alamat.",
                        "No rogue DHCP server, but the gateway's own DHCP server (dnsmasq) "
                        "is not running: villagers get no address."),
                       ("Jalankan layanan: systemctl start desanet (lihat pemeriksaan `daemon`).",
                        "Start the service: systemctl start desanet (see the `daemon` check)."),
                       **details)
    return verdict(name, "ok",
                   (f"Tidak ada server DHCP lain di LAN; hanya milik gateway ({own_server}).",
                    f"No other DHCP server on the LAN; only the gateway's own ({own_server})."),
                   **details)


def _option(options: list[Any], key: str) -> str:
    for opt in options:
        if isinstance(opt, tuple) and opt and opt[0] == key and len(opt) > 1:
            return str(opt[1])
    return ""


MAX_OFFERS = 64  # kept per discover: enough for every real server on a LAN


def offer_filter(xid: int, limit: int = MAX_OFFERS) -> Callable[[Any], bool]:
    """The sniffer's filter: answers to our discover, the first ``limit`` of them. Anyone
    on the LAN hears the broadcast discover's xid: a flood of forged offers must not be
    stored packet by packet until the box runs out of memory (the verdict is rogue anyway)."""
    from scapy.layers.dhcp import BOOTP

    kept = 0

    def ours(pkt: Any) -> bool:
        nonlocal kept
        if kept >= limit:
            return False
        if pkt.haslayer(BOOTP) and pkt[BOOTP].op == 2 and pkt[BOOTP].xid == xid:
            kept += 1
            return True
        return False
    return ours


def _discover(iface: str, wait: float) -> list[Offer]:
    quiet_scapy()
    from scapy.layers.dhcp import BOOTP, DHCP
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.sendrecv import AsyncSniffer, sendp

    # A made-up, locally administered client: no real device's lease is touched.
    mac = bytes([0x02, *secrets.token_bytes(5)])
    mac_text = ":".join(f"{b:02x}" for b in mac)
    xid = secrets.randbits(32)
    ready = threading.Event()

    sniffer = AsyncSniffer(iface=iface, lfilter=offer_filter(xid), store=True,
                           started_callback=ready.set)
    sniffer.start()
    try:
        ready.wait(5)
        # The broadcast flag asks every server to broadcast its offer, so we hear it.
        frame = (Ether(src=mac_text, dst="ff:ff:ff:ff:ff:ff")
                 / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
                 / BOOTP(chaddr=mac + bytes(10), xid=xid, flags=0x8000)
                 / DHCP(options=[("message-type", "discover"),
                                 ("param_req_list", [1, 3, 6, 54]), "end"]))
        sendp(frame, iface=iface, verbose=False)
        threading.Event().wait(wait / 2)
        sendp(frame, iface=iface, verbose=False)  # one more, in case the first was lost
        threading.Event().wait(wait / 2)
    finally:
        packets: list[Any] = list(sniffer.stop() or [])
    offers = []
    for pkt in packets:
        opts = pkt[DHCP].options if pkt.haslayer(DHCP) else []
        offers.append(Offer(server_id=_option(opts, "server_id"),
                            source_ip=pkt[IP].src if pkt.haslayer(IP) else "",
                            source_mac=pkt[Ether].src.lower() if pkt.haslayer(Ether) else "",
                            offered=str(pkt[BOOTP].yiaddr), router=_option(opts, "router"),
                            dns=_option(opts, "name_server")))
    return offers


def _own_dhcp_server() -> str | None:
    """The process listening on UDP 67 in this network namespace, e.g. "dnsmasq, pid 42"."""
    import psutil

    for conn in psutil.net_connections(kind="udp4"):
        if conn.laddr and conn.laddr.port == 67:
            try:
                proc = psutil.Process(conn.pid) if conn.pid else None
                return f"{proc.name()}, pid {conn.pid}" if proc else "pid ?"
            except psutil.Error:
                return f"pid {conn.pid}"
    return None


def _iface_addresses(iface: str) -> tuple[set[str], set[str]]:
    import netifaces

    addrs = netifaces.ifaddresses(iface)
    ips = {a["addr"] for a in addrs.get(netifaces.AF_INET, []) if "addr" in a}
    macs = {a["addr"].lower() for a in addrs.get(netifaces.AF_LINK, []) if "addr" in a}
    return ips, macs


async def check_rogue_dhcp(ctx: DiagContext) -> CheckResult:
    name = "rogue-dhcp"
    if not ctx.is_root:
        return verdict(name, "skip", *NEEDS_ROOT)
    assert ctx.config is not None
    iface = ctx.config.network.lan_interface
    if (missing := missing_interface(name, iface)) is not None:
        return missing
    ips, macs = await in_thread(_iface_addresses, iface)
    offers, own = await asyncio.gather(
        in_thread(_discover, iface, min(ctx.options.timeout, 3.0)),
        in_thread(_own_dhcp_server))
    return classify_offers(name, offers, ips | {ctx.config.lan_ip}, macs, own)
