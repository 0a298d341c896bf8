"""Pure nftables planner: config + sessions + carried dynamic state -> nft text.

Theory of operation
-------------------
Everything lives in one table, ``inet desanet`` (plus ``bridge desanet`` for
client isolation). Per-client state is never a rule: it is an element of a
set, so authorizing or removing a client is one set-element operation whose
cost does not depend on how many clients are online.

* ``auth4``     ether_addr . ipv4_addr, element timeout = rest of the session.
                Keyed by MAC *and* IP: a spoofed MAC with another IP, or an
                authorized IP from another MAC, matches nothing.
* ``active4``   same key; every forwarded packet of an authorized client
                refreshes its element with the idle timeout. A session whose
                element has expired is idle: its packets no longer match (so
                the next packet cannot quietly revive it) and the daemon's
                sweep ends the session.
* ``active_down4`` ipv4_addr, the same timeouts: refreshed by every packet
                forwarded *to* a client (a download carries no client MAC: keyed
                by address). Only an existing element is refreshed (an idle client
                is not revived); a client's upload re-arms a lapsed one (``add``:
                no refresh). A client is idle once both its elements have lapsed;
                the sweep and time of use take the later of the two (a one-way
                UDP stream towards a silent client is use). Its upload passes on
                either element, and an upload let in by ``active_down4`` re-arms
                ``active4``. IPv6 needs none: it is never forwarded from or to
                the LAN (no v6 flow can be established).
* ``trusted_mac`` / ``blocked_mac``: from config.
* ``garden4/6`` interval sets of walled-garden CIDRs; ``garden_dns4/6`` hold the
                addresses of walled-garden names: exact names are resolved by the
                daemon (:mod:`gateway.core.garden`), each element's timeout the DNS
                TTL clamped to [GARDEN_TTL_FLOOR, GARDEN_TTL_CAP]; explicit wildcards
                (``*.example.go.id``) are filled by the pre-login dnsmasq (nftset,
                the set's default timeout). Either opens TCP 80/443 only.
* ``dns_meter4`` per-client query rate before login (dynamic, limit per source).
* ``dns_meter_auth4`` the same after login, on the full resolver's port 53 (a DNS
                tunnel through it would escape the quota counters and fair use:
                it is bounded to this rate; trusted MACs are not limited).
* meters (:mod:`gateway.firewall.meters`, docs/quota.md): per voucher named
                counters and quota objects, reached from a client's address through
                maps in the ``client_up`` / ``client_down`` chains.

DNS (docs/walled-garden.md): a client that is neither trusted nor authorized
has its port-53 traffic redirected to the pre-login resolver
(:mod:`gateway.services.prelogin_dns`, port PRELOGIN_DNS_PORT), which
answers only the portal's and local names, the OS connectivity checks and the
walled garden, so nothing else ever reaches an upstream (no IP-over-DNS
tunnel). The NAT decision is cached per connection, so the input chain also
drops anything that reaches the full resolver's port 53 from a client that
is neither trusted nor authorized any more, on every packet.

Packet path from the LAN: blocked MACs are dropped everywhere; IPv6 from
the LAN is dropped (``network.ipv6 = "drop"``), so it can never bypass the
portal; all DNS (UDP and TCP 53) to any address is redirected to the
gateway's dnsmasq; unauthorized port-80 traffic is redirected to the
portal's redirect port; everything else from an unauthorized client to the
outside is rejected unless it goes to the walled garden. The forward chain
checks *every* packet (not only new connections), so a deauth cuts running
connections at once: a TCP download ends at the client's next acknowledgement
(reset). The download direction is accepted by ``ct state established``, and
the port-80 redirect is bound to a connection's first packet; so the daemon
also deletes conntrack entries (:mod:`gateway.firewall.conntrack`): the
redirected ones at login, the UDP ones at a cut-off (a UDP stream towards
the client would flow on otherwise). With client isolation, nothing from the LAN
is routed back into the LAN (the bridge table only stops frames bridged port
to port).

A full apply replaces the table in one transaction (add, delete, re-create),
so there is never a moment without rules; sessions and the dynamic sets the
kernel filled are carried into the new table.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from gateway.config.schema import Config
from gateway.firewall.guard import arp_table, bridge_guard, guard_chains, lease_sets
from gateway.firewall.meters import meter_chains, meter_sets, plan_meter, plan_unmeter
from gateway.meter import Meter
from gateway.model import Session
from gateway.shaping.plan import (
    LOCAL_MINOR,
    TRUSTED_MINOR,
    UNAUTHORIZED_MINOR,
    classid_text,
    client_minor,
)

TABLE = "desanet"
FAMILY = "inet"
# Walled-garden addresses stay open for their DNS TTL, at least the floor (CDN TTLs
# of 20 s would flap) and at most the cap (an address the name left stays open no
# longer); the cap is also the set's default timeout, which wildcard entries get.
GARDEN_TTL_FLOOR = 60
GARDEN_TTL_CAP = 3600
GARDEN_TCP_PORTS = (80, 443)  # the walled garden is web only
PRELOGIN_DNS_PORT = 5053  # the pre-login resolver, on the LAN address
DNS_RATE_BEFORE_LOGIN = 20  # queries per second per client before login ...
DNS_BURST_BEFORE_LOGIN = 60  # ... after a burst of this many (a phone's first seconds)
# After login: a page load asks a few dozen names at once (A and AAAA), a person never
# keeps up 10 a second for long; a tunnel needs many more (each query carries ~100 bytes).
DNS_RATE_AUTHORIZED = 10
DNS_BURST_AUTHORIZED = 100
TRUSTED_CT_MARK = 0x4D4E  # conntrack mark of trusted-MAC flows ("DN")
REDIRECTED_PORT = 80  # unauthorized clients' TCP to this port goes to the portal
# Socket mark (SO_MARK) the government-services proxy puts on a villager's connection
# when the answer carries bytes fetched from the uplink ("MS": metered service).
METERED_MARK = 0x4D53

MacIp = tuple[str, str]


@dataclass(frozen=True)
class CarriedState:
    """Dynamic set contents read from the kernel before a full apply.

    Values are the seconds each element has left.
    """

    active: Mapping[MacIp, int] = field(default_factory=dict)
    active_down: Mapping[str, int] = field(default_factory=dict)  # active_down4: ip -> s
    garden_dns4: Mapping[str, int] = field(default_factory=dict)
    garden_dns6: Mapping[str, int] = field(default_factory=dict)
    # True when read from a live table: a session missing from ``active`` is
    # then really idle. After a reboot (no table) every session gets one
    # fresh idle window instead.
    from_live_table: bool = False
    # lan: DHCP leases (address -> MAC) in the lease sets, kept until the next sync.
    leases: Mapping[str, str] = field(default_factory=dict)
    # quota: meter objects (firewall/meters.py) -> (packets, bytes) of a counter, (0, used)
    # of a quota, so a rebuild keeps unread bytes and quotas' use
    meters: Mapping[str, tuple[int, int]] = field(default_factory=dict)


def _elements(items: Iterable[str]) -> str:
    body = ", ".join(items)
    return f"elements = {{ {body} }}" if body else ""


def _set(name: str, kind: str, flags: str = "", extra: str = "", elems: Iterable[str] = ()) -> str:
    parts = [f"type {kind};"]
    if flags:
        parts.append(f"flags {flags};")
    if extra:
        parts.append(extra)
    body = _elements(elems)
    if body:
        parts.append(body + ";")
    return f"  set {name} {{ " + " ".join(parts) + " }\n"


def element_key(mac: str, ip: str) -> str:
    return f"{mac} . {ip}"


def plan_ruleset(
    cfg: Config, sessions: Iterable[Session], now: int, carried: CarriedState | None = None,
    meters: Iterable[Meter] = (),
) -> str:
    """Return an nft script that atomically (re)creates the desanet tables."""
    carried = carried or CarriedState()
    sessions = list(sessions)
    lan = _quote(cfg.network.lan_interface)
    # NAT and the WAN's input rules sit where IP leaves: ppp0 with PPPoE (the port then
    # carries only PPPoE frames). Shaping stays on the port (gateway/shaping), which
    # always exists; the skb priority set here survives the PPP encapsulation.
    wan = _quote(cfg.network.uplink_interface)
    lan_ip = cfg.lan_ip
    portal = cfg.portal
    idle = portal.idle_timeout

    auth_elems: list[str] = []
    active_elems: list[str] = []
    down_elems: dict[str, str] = {}
    for s in sessions:
        left = s.expires - now
        if left <= 0:
            continue
        key = element_key(s.mac, s.ip)
        auth_elems.append(f"{key} timeout {left}s")
        idle_left = carried.active.get((s.mac, s.ip))
        down_left = carried.active_down.get(s.ip)
        if idle_left is None and down_left is None:
            if carried.from_live_table:
                continue  # idle already: a reload must not give it a new window
            idle_left = min(s.idle_timeout, left)  # restored after a reboot
        if idle_left is not None:  # else its upload window lapsed: active_down4 lets it in
            active_elems.append(f"{key} timeout {s.idle_timeout}s expires {max(1, idle_left)}s")
        latest = max(x for x in (idle_left, down_left) if x is not None)
        down_elems[s.ip] = f"{s.ip} timeout {s.idle_timeout}s expires {max(1, latest)}s"

    garden4 = [str(n) for n in cfg.walled_garden.addresses if n.version == 4]
    garden6 = [str(n) for n in cfg.walled_garden.addresses if n.version == 6]
    dns4 = [f"{ip} expires {max(1, left)}s" for ip, left in carried.garden_dns4.items()]
    dns6 = [f"{ip} expires {max(1, left)}s" for ip, left in carried.garden_dns6.items()]

    sets = "".join(
        [
            _set("auth4", "ether_addr . ipv4_addr", "timeout", elems=auth_elems),
            _set("active4", "ether_addr . ipv4_addr", "timeout", f"timeout {idle}s;", active_elems),
            _set("active_down4", "ipv4_addr", "timeout", f"timeout {idle}s;",
                 down_elems.values()),
            _set("trusted_mac", "ether_addr", elems=cfg.access.trusted_macs),
            _set("blocked_mac", "ether_addr", elems=cfg.access.blocked_macs),
            _set("garden4", "ipv4_addr", "interval", elems=garden4),
            _set("garden6", "ipv6_addr", "interval", elems=garden6),
            _set("garden_dns4", "ipv4_addr", "timeout", f"timeout {GARDEN_TTL_CAP}s;", dns4),
            _set("garden_dns6", "ipv6_addr", "timeout", f"timeout {GARDEN_TTL_CAP}s;", dns6),
            _set("dns_meter4", "ipv4_addr", "dynamic,timeout", "timeout 60s; size 65535;"),
            _set("dns_meter_auth4", "ipv4_addr", "dynamic,timeout",
                 "timeout 60s; size 65535;"),
            # portalsec: per-address connection counts to the portal ports (ct count)
            _set("portal_conns4", "ipv4_addr", "dynamic", "size 65535;"),
        ]
    )
    sets += lease_sets(cfg, carried.leases, dhcp=True)
    live = {s.ip for s in sessions if s.expires > now}
    sets += meter_sets([m for m in meters if m.ip in live], carried.meters)
    if cfg.shaping.enabled:
        sets += _set("client_class", "ipv4_addr : classid", elems=[
            f"{s.ip} : {client_class_text(cfg, s.ip)}" for s in sessions if s.expires > now
        ]).replace("  set client_class", "  map client_class")
    https = [portal.https_port] if portal.https else []  # the portal over TLS, when configured
    ports = "{ " + ", ".join(str(n) for n in (portal.http_port, portal.redirect_port, *https)) + " }"
    authorized = "ether saddr . ip saddr @auth4"
    # Client isolation also at layer 3: without this, a client with a route to
    # a neighbour via the gateway would be forwarded back out of the LAN.
    hairpin = f"oifname {lan} drop\n    " if cfg.network.client_isolation else ""
    garden_ports = "{ " + ", ".join(str(n) for n in GARDEN_TCP_PORTS) + " }"
    dns_guard = _dns_guard(authorized)
    # the client's own packets refresh active4; one re-arms a lapsed active_down4 (add:
    # an existing element keeps its time, the downloads' own)
    refresh_up = "update @active4 { ether saddr . ip saddr }"
    rearm_down = "add @active_down4 { ip saddr }"

    chains = f"""
  chain nat_prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname {lan} jump lan_nat
  }}
  chain lan_nat {{
    ether saddr @blocked_mac return
    meta nfproto ipv6 return
    meta l4proto {{ tcp, udp }} th dport 53 jump lan_dns
    ether saddr @trusted_mac return
    {authorized} return
    ip daddr {{ {lan_ip} }} return
    ip daddr @garden4 return
    ip daddr @garden_dns4 return
    tcp dport {REDIRECTED_PORT} redirect to :{portal.redirect_port}
  }}
  chain lan_dns {{
    ether saddr @trusted_mac goto lan_dns_full
    {authorized} goto lan_dns_full
    meta l4proto {{ tcp, udp }} redirect to :{PRELOGIN_DNS_PORT}
  }}
  chain lan_dns_full {{
    ip daddr != {lan_ip} meta l4proto {{ tcp, udp }} redirect to :53
  }}
  chain nat_postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname {wan} meta nfproto ipv4 masquerade
  }}
  chain filter_input {{
    type filter hook input priority filter; policy accept;
    iif lo accept
    iifname {lan} jump lan_input
    iifname {wan} jump wan_input
  }}
  chain lan_input {{
    ether saddr @blocked_mac drop
    meta nfproto ipv6 drop
    {dns_guard}udp dport 67 jump lan_dhcp
    ct state established,related accept
    udp dport 67 accept
    meta l4proto {{ tcp, udp }} th dport {{ 53, {PRELOGIN_DNS_PORT} }} accept
    {_portal_conn_limit(cfg, ports)}
    tcp dport {ports} accept
    icmp type echo-request limit rate 20/second accept
    meta l4proto tcp reject with tcp reset
    reject with icmpx admin-prohibited
  }}
  chain wan_input {{
    ct state established,related accept
    ct state invalid drop
    meta l4proto {{ icmp, ipv6-icmp }} accept
    udp dport {{ 68, 546 }} accept
    tcp dport 22 accept
    drop
  }}
{guard_chains(cfg, lan)}  chain filter_forward {{
    type filter hook forward priority filter; policy drop;
{_classify_forward(cfg)}{_mss_clamp(cfg)}    iifname {lan} jump lan_forward
    oifname {lan} jump client_down
    oifname {lan} ct state established,related ip daddr @active_down4 update @active_down4 {{ ip daddr }}
    oifname {lan} ct state established,related accept
  }}
  chain lan_forward {{
    ether saddr @blocked_mac drop
    meta nfproto ipv6 drop
    {hairpin}ct state invalid drop
    ether saddr @trusted_mac accept
    ether saddr . ip saddr @active4 {authorized} {refresh_up} {rearm_down} goto client_up
    ip saddr @active_down4 {authorized} {refresh_up} goto client_up
    ip daddr @garden4 tcp dport {garden_ports} accept
    ip daddr @garden_dns4 tcp dport {garden_ports} accept
    meta l4proto tcp reject with tcp reset
    reject with icmpx admin-prohibited
  }}
{meter_chains(lan, cfg.shaping.enabled)}  chain filter_output {{
    type filter hook output priority filter; policy accept;
    oifname {lan} meta nfproto ipv6 meta l4proto ipv6-icmp icmpv6 type nd-router-advert drop
{_classify_output(cfg)}  }}
{_classify_metered(cfg)}"""
    script = (
        f"table {FAMILY} {TABLE} {{}}\n"
        f"delete table {FAMILY} {TABLE}\n"
        f"table {FAMILY} {TABLE} {{\n{sets}{chains}}}\n"
    )
    return script + _bridge_table(cfg, carried.leases) + arp_table(TABLE, cfg, lan, carried.leases)


def _dns_guard(authorized: str) -> str:
    """lan_input rules before ``ct state established``, so they see every packet.

    The pre-login resolver's port: a per-client rate (past it, packets are
    dropped). The full resolver's port 53, reached after NAT: only trusted and
    authorized clients; a flow that began while its client was logged in (the
    NAT decision is taken once per connection) ends at its cut-off here; an
    authorized client has its own per-client rate there (a DNS tunnel's bound).
    """
    rate = f"limit rate over {DNS_RATE_BEFORE_LOGIN}/second burst {DNS_BURST_BEFORE_LOGIN} packets"
    auth_rate = (f"limit rate over {DNS_RATE_AUTHORIZED}/second "
                 f"burst {DNS_BURST_AUTHORIZED} packets")
    not_authorized = authorized.replace(" @auth4", " != @auth4")
    return (
        f"meta l4proto {{ tcp, udp }} th dport {PRELOGIN_DNS_PORT} "
        f"update @dns_meter4 {{ ip saddr {rate} }} drop\n"
        f"    meta l4proto {{ tcp, udp }} th dport 53 ether saddr != @trusted_mac "
        f"{not_authorized} drop\n"
        # what reaches port 53 now is a trusted or an authorized client's
        f"    meta l4proto {{ tcp, udp }} th dport 53 ether saddr != @trusted_mac "
        f"update @dns_meter_auth4 {{ ip saddr {auth_rate} }} drop\n    "
    )


def plan_garden(elements: Mapping[str, int]) -> str:
    """nft commands that open walled-garden addresses (``ip -> seconds``) or refresh
    their timeouts; one transaction. Each is clamped to [floor, cap]."""
    lines = []
    for ip, ttl in sorted(elements.items()):
        name = "garden_dns4" if is_ipv4(ip) else "garden_dns6"
        timeout = garden_timeout(ttl)
        # add-delete-add: an existing element gets the new timeout atomically
        lines.append(f"add element {FAMILY} {TABLE} {name} {{ {ip} timeout {timeout}s }}")
        lines.append(f"delete element {FAMILY} {TABLE} {name} {{ {ip} }}")
        lines.append(f"add element {FAMILY} {TABLE} {name} {{ {ip} timeout {timeout}s }}")
    return "\n".join(lines) + "\n" if lines else ""


def garden_timeout(ttl: int) -> int:
    """Seconds a walled-garden address stays open for a DNS TTL (pure)."""
    return max(GARDEN_TTL_FLOOR, min(GARDEN_TTL_CAP, int(ttl)))


def _portal_conn_limit(cfg: Config, ports: str) -> str:
    """One LAN address may hold at most ``portal.max_connections_per_client`` open TCP
    connections to the portal's ports (http, redirect, https; the local services share
    the http port); more are reset before the daemon accepts them. Established ones
    were accepted above, so only a connection's first packet is counted here."""
    limit = cfg.portal.max_connections_per_client
    return (f"tcp dport {ports} ct state new add @portal_conns4 "
            f"{{ ip saddr ct count over {limit} }} reject with tcp reset")


def client_class_text(cfg: Config, ip: str) -> str:
    return classid_text(client_minor(cfg, ip))


def _classify_forward(cfg: Config) -> str:
    """Steer forwarded packets into HTB classes by setting skb priority.

    Every forwarded packet starts in the unauthorized class; later statements
    override that: trusted MACs through a conntrack mark (the download
    direction carries no client MAC yet), authorized clients by address (one
    map lookup, no tc filters). HTB's own default class is then left to the
    gateway's unclassifiable traffic (ARP, DHCP from packet sockets), so a busy
    walled garden can never starve the gateway's ARP replies.
    """
    if not cfg.shaping.enabled:
        return ""
    lan = _quote(cfg.network.lan_interface)
    trusted = classid_text(TRUSTED_MINOR)
    unauthorized = classid_text(UNAUTHORIZED_MINOR)
    return (
        f"    iifname {lan} meta priority set {unauthorized}\n"
        f"    oifname {lan} meta priority set {unauthorized}\n"
        f"    iifname {lan} ether saddr @trusted_mac ct mark set {TRUSTED_CT_MARK:#x}\n"
        f"    ct mark {TRUSTED_CT_MARK:#x} meta priority set {trusted}\n"
        f"    iifname {lan} meta priority set ip saddr map @client_class\n"
        f"    oifname {lan} meta priority set ip daddr map @client_class\n"
    )


def _classify_output(cfg: Config) -> str:
    """The gateway's own traffic gets the 'local' class on both devices."""
    if not cfg.shaping.enabled:
        return ""
    lan = _quote(cfg.network.lan_interface)
    wans = ", ".join(_quote(name) for name in
                     dict.fromkeys((cfg.network.wan_interface, cfg.network.uplink_interface)))
    local = classid_text(LOCAL_MINOR)
    return f"    oifname {{ {lan}, {wans} }} meta priority set {local}\n"


def _mss_clamp(cfg: Config) -> str:
    """PPPoE's 8-byte header leaves ppp0 an MTU under 1500: outgoing SYNs carry an MSS
    that fits it, or sites behind a path-MTU black hole hang (what every PPPoE router does)."""
    if cfg.network.wan_address != "pppoe":
        return ""
    ppp = _quote(cfg.network.uplink_interface)
    return f"    oifname {ppp} tcp flags syn tcp option maxseg size set rt mtu\n"


def _classify_metered(cfg: Config) -> str:
    """Answers of the government-services proxy that carry uplink bytes (misses,
    pass-through, form answers) are shaped like the client's forwarded traffic.

    The proxy marks such a villager's socket with METERED_MARK (gateway/cache/
    shapemark.py). This chain runs after ``filter_output`` (higher priority number)
    and overrides its "local" class: unauthorized by default, the trusted class for a
    trusted MAC's connection (marked on input, as in the forward chain), the client's
    own class by address. Cache hits stay "local": they never cross the uplink.
    """
    if not cfg.shaping.enabled:
        return ""
    lan = _quote(cfg.network.lan_interface)
    trusted = classid_text(TRUSTED_MINOR)
    unauthorized = classid_text(UNAUTHORIZED_MINOR)
    mark = f"{METERED_MARK:#x}"
    return f"""  chain metered_input {{
    type filter hook input priority filter + 10; policy accept;
    iifname {lan} ether saddr @trusted_mac ct mark set {TRUSTED_CT_MARK:#x}
  }}
  chain metered_output {{
    type filter hook output priority filter + 10; policy accept;
    oifname {lan} meta mark {mark} meta priority set {unauthorized}
    oifname {lan} meta mark {mark} ct mark {TRUSTED_CT_MARK:#x} meta priority set {trusted}
    oifname {lan} meta mark {mark} meta priority set ip daddr map @client_class
  }}
"""


def _bridge_table(cfg: Config, leases: Mapping[str, str]) -> str:
    """ARP checks between bridge ports (guard.py), and client isolation: frames
    bridged from one LAN port to another are dropped.

    The test kernel lacks ``meta ibrname``, so the chain drops every bridged
    (port-to-port) frame; the gateway is expected to own only the LAN bridge.
    Frames to the gateway itself take the bridge input hook and pass.
    """
    head = f"table bridge {TABLE} {{}}\ndelete table bridge {TABLE}\n"
    isolate = (
        "  chain isolate {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        "    drop\n"
        "  }\n"
    ) if cfg.network.client_isolation else ""
    return head + f"table bridge {TABLE} {{\n{bridge_guard(cfg, leases)}{isolate}}}\n"


def plan_authorize(session: Session, now: int, class_text: str | None = None,
                   meter: Meter | None = None, held: Collection[str] = ()) -> str:
    """nft commands that add (or refresh) one client; one transaction, O(1).

    ``class_text`` (e.g. "1:105") also steers the client's traffic into its
    HTB class when shaping is enabled; ``meter`` counts its bytes into its voucher and
    enforces the voucher's quotas (firewall/meters.py).
    """
    key = element_key(session.mac, session.ip)
    left = max(1, session.expires - now)
    idle = min(session.idle_timeout, left)
    lines = []
    for name, elem, timeout in (("auth4", key, left), ("active4", key, idle),
                                ("active_down4", session.ip, idle)):
        # add-delete-add replaces an existing element's timeout atomically
        # (nft 1.0.6 has no "replace element").
        lines.append(f"add element {FAMILY} {TABLE} {name} {{ {elem} timeout {timeout}s }}")
        lines.append(f"delete element {FAMILY} {TABLE} {name} {{ {elem} }}")
        lines.append(f"add element {FAMILY} {TABLE} {name} {{ {elem} timeout {timeout}s }}")
    if class_text is not None:
        ip = session.ip
        lines.append(f"add element {FAMILY} {TABLE} client_class {{ {ip} : {class_text} }}")
        lines.append(f"delete element {FAMILY} {TABLE} client_class {{ {ip} }}")
        lines.append(f"add element {FAMILY} {TABLE} client_class {{ {ip} : {class_text} }}")
    if meter is not None:
        lines += plan_meter(meter, held)
    return "\n".join(lines) + "\n"


def plan_revoke(mac: str, ip: str, class_text: str | None = None,
                meter: Meter | None = None) -> str:
    """nft commands that remove one client; idempotent (add first, then delete).

    ``class_text`` is the client's value in the shaping map: nft refuses to
    "add" an element whose value differs from the stored one, so the add that
    makes the delete idempotent must carry the same value.
    """
    key = element_key(mac, ip)
    lines = []
    # active_down4 is by address: another phone's session on it (its lease moved) loses
    # its download activity here too, until its next upload re-arms it
    for name, elem in (("auth4", key), ("active4", key), ("active_down4", ip)):
        lines.append(f"add element {FAMILY} {TABLE} {name} {{ {elem} timeout 1s }}")
        lines.append(f"delete element {FAMILY} {TABLE} {name} {{ {elem} }}")
    if class_text is not None:
        lines.append(f"add element {FAMILY} {TABLE} client_class {{ {ip} : {class_text} }}")
        lines.append(f"delete element {FAMILY} {TABLE} client_class {{ {ip} }}")
    if meter is not None:
        lines += plan_unmeter(meter)
    return "\n".join(lines) + "\n"


def _quote(name: str) -> str:
    # Interface names are validated by the schema ([A-Za-z0-9_.-]); quoting
    # keeps names that look like keywords from confusing the nft parser.
    return f'"{name}"'


def is_ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False
