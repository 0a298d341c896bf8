"""Pure nft text that keeps a hostile villager from taking another's identity.

Theory of operation
-------------------
A client on the LAN can write any frame it likes: any Ethernet source, any
IP source, any ARP claim, any DHCP client address. The gateway trusts its
DHCP leases (dnsmasq's lease file: address -> MAC) and checks every such
claim against them, in the kernel, before anything else looks at a packet:

* **Sources** (``lan_source``, prerouting at raw priority, so before
  conntrack, the portal redirect and any reject): a packet from the LAN whose
  IPv4 source is outside the LAN prefix, is the gateway's own address, or is a
  leased address sent from another MAC is dropped silently. Otherwise a
  forged internet source made the gateway send its ICMP rejection (quoting
  the packet) out of the WAN to that address. DHCP's 0.0.0.0 is let through.
  ``rp_filter`` on the LAN interface (set by the adapter) says the same to
  the routing code.
* **ARP** (``arp desanet``, the host's ARP input on the LAN interface): a claim
  of the gateway's address, of an address outside the LAN, or of a leased
  address by another MAC is dropped, so nobody can move the gateway's
  neighbour entry of a villager to their own MAC. The bridge table checks
  ARP between bridge ports the same way (this matters when client
  isolation is off and clients hear each other's ARP).
* **DHCP** (``lan_dhcp``, from ``lan_input``): a message whose client hardware
  address (BOOTP ``chaddr``) is not the frame's Ethernet source is dropped:
  it asks for a lease, or releases one, in someone else's name. nft cannot
  compare two fields of a packet, so the frame's source is first written as
  the pair (source . source) into a short-lived set, then (source . chaddr)
  is looked up in it: found only when chaddr equals the source. Then each MAC
  is limited (``DHCP_PER_MAC``), MACs that hold a lease pass (renewals, a
  village coming back after a power cut), and messages from MACs without a
  lease share one budget (``dhcp.new_client_rate`` / ``new_client_burst``):
  a flood of invented MACs takes at most that many addresses a second, so
  the pool lasts minutes instead of seconds, and renewals are never starved.
  Why not per port: behind one bridge port (an Ethernet access point) or one
  Wi-Fi interface sit dozens of villagers, so a per-port limit would punish
  them all together, and a Wi-Fi LAN without a bridge has one port only.

Every drop carries a counter: ``nft list table inet desanet`` (and ``arp``,
``bridge``) shows a technician what was refused, e.g. a phone whose lease
moved and is waiting for the next sync.

The lease sets (``lease4``: address . MAC, ``lease_ip4``, ``lease_mac``) are
filled from the lease file by :func:`plan_leases` as it changes (the
session sweep syncs them) and carried across full applies. A lease that
moved to another MAC is honoured from the next sync on (a few seconds).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from gateway.config.schema import Config

ARP_FAMILY = "arp"
BRIDGE_FAMILY = "bridge"
# One MAC's DHCP messages: a normal exchange is 2, a renewal 1, a client retrying
# without answers about 1 a second for a while.
DHCP_PER_MAC = "10/minute burst 10 packets"
DHCP_PAIR_TIMEOUT = 2  # s: the (source . source) pair only has to outlive the next rule


def lease_pairs(cfg: Config, leases: Mapping[str, str]) -> list[tuple[str, str]]:
    """(address, MAC) of the leases inside the LAN, sorted; other lines of the file are
    ignored (a lease outside the LAN cannot be a client of this gateway)."""
    lan = cfg.network.lan_address.network
    out = []
    for ip, mac in leases.items():
        try:
            if ipaddress.IPv4Address(ip) in lan:
                out.append((ip, mac.lower()))
        except ValueError:
            continue
    return sorted(out)


def _elems(items: Iterable[str]) -> str:
    body = ", ".join(items)
    return f" elements = {{ {body} }};" if body else ""


def lease_sets(cfg: Config, leases: Mapping[str, str], dhcp: bool) -> str:
    """Set declarations of the lease sets; ``dhcp`` adds the DHCP guard's sets (inet)."""
    pairs = lease_pairs(cfg, leases)
    text = (
        f"  set lease4 {{ type ipv4_addr . ether_addr;"
        f"{_elems(f'{ip} . {mac}' for ip, mac in pairs)} }}\n"
        f"  set lease_ip4 {{ type ipv4_addr;{_elems(ip for ip, _ in pairs)} }}\n"
    )
    if dhcp:
        macs = sorted({mac for _, mac in pairs})
        text += (
            f"  set lease_mac {{ type ether_addr;{_elems(macs)} }}\n"
            "  set dhcp_pair { typeof @ll,48,48 . @th,288,48; size 65535; "
            f"flags dynamic,timeout; timeout {DHCP_PAIR_TIMEOUT}s; }}\n"
            "  set dhcp_mac { type ether_addr; size 65535; flags dynamic,timeout; timeout 1m; }\n"
        )
    return text


def guard_chains(cfg: Config, lan: str) -> str:
    """Chains of the inet table: the source check (its own hook) and ``lan_dhcp``.

    ``lan`` is the quoted LAN interface name.
    """
    iface = cfg.network.lan_address
    dhcp = cfg.dhcp
    return f"""  chain guard_prerouting {{
    type filter hook prerouting priority raw; policy accept;
    iifname {lan} meta nfproto ipv4 jump lan_source
  }}
  chain lan_source {{
    ip saddr 0.0.0.0 udp sport 68 udp dport 67 return
    ip saddr != {iface.network} counter drop
    ip saddr {{ {iface.ip}, {iface.network.network_address}, {iface.network.broadcast_address} }} counter drop
    ip saddr @lease_ip4 ip saddr . ether saddr != @lease4 counter drop
  }}
  chain lan_dhcp {{
    update @dhcp_pair {{ @ll,48,48 . @ll,48,48 }}
    @ll,48,48 . @th,288,48 != @dhcp_pair counter drop
    update @dhcp_mac {{ ether saddr limit rate over {DHCP_PER_MAC} }} counter drop
    ether saddr @lease_mac return
    limit rate over {dhcp.new_client_rate}/second burst {dhcp.new_client_burst} packets counter drop
  }}
"""


def arp_table(table: str, cfg: Config, lan: str, leases: Mapping[str, str]) -> str:
    """The ``arp`` family table: ARP reaching the gateway is checked against the leases."""
    iface = cfg.network.lan_address
    head = f"table {ARP_FAMILY} {table} {{}}\ndelete table {ARP_FAMILY} {table}\n"
    return head + (
        f"table {ARP_FAMILY} {table} {{\n"
        f"{lease_sets(cfg, leases, dhcp=False)}"
        "  chain arp_input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f"    iifname {lan} jump lan_arp\n"
        "  }\n"
        "  chain lan_arp {\n"
        f"    arp saddr ip {iface.ip} counter drop\n"
        f"    arp saddr ip != {{ 0.0.0.0, {iface.network} }} counter drop\n"
        "    arp saddr ip @lease_ip4 arp saddr ip . arp saddr ether != @lease4 counter drop\n"
        "  }\n"
        "}\n"
    )


def bridge_guard(cfg: Config, leases: Mapping[str, str]) -> str:
    """Lease sets and a chain of the bridge table: ARP between bridge ports is checked too.

    Nobody on a bridge port speaks for the gateway's address (the gateway's own
    frames leave through the bridge's output hook, never its prerouting, so
    every such claim seen here is forged), nor for a leased address from
    another MAC. With client isolation on, clients never hear each other
    anyway; with it off this keeps them from poisoning each other's caches.
    """
    return lease_sets(cfg, leases, dhcp=False) + (
        "  chain guard {\n"
        "    type filter hook prerouting priority filter; policy accept;\n"
        f"    ether type arp arp saddr ip {cfg.network.lan_address.ip} counter drop\n"
        "    ether type arp arp saddr ip @lease_ip4 arp saddr ip . arp saddr ether != @lease4 "
        "counter drop\n"
        "  }\n"
    )


def plan_leases(inet: tuple[str, str], cfg: Config, leases: Mapping[str, str]) -> str:
    """nft commands that replace the lease sets with ``leases``; one transaction.

    ``inet`` is the (family, table) of the main table; the arp and bridge
    tables have the same name. O(leases): run only when the lease file changed.
    """
    family, table = inet
    pairs = lease_pairs(cfg, leases)
    macs = sorted({mac for _, mac in pairs})
    lines: list[str] = []
    for fam, names in ((family, ("lease4", "lease_ip4", "lease_mac")),
                       (ARP_FAMILY, ("lease4", "lease_ip4")),
                       (BRIDGE_FAMILY, ("lease4", "lease_ip4"))):
        for name in names:
            lines.append(f"flush set {fam} {table} {name}")
        elems = {"lease4": [f"{ip} . {mac}" for ip, mac in pairs],
                 "lease_ip4": [ip for ip, _ in pairs], "lease_mac": macs}
        for name in names:
            if elems[name]:
                lines.append(f"add element {fam} {table} {name} {{ {', '.join(elems[name])} }}")
    return "\n".join(lines) + "\n"
