"""A hostile villager on the LAN cannot take another's identity or reflect forged traffic.

Real daemon, dnsmasq and nftables in the gateway namespace; the attacker (c1)
writes its frames with scapy. c2 is the victim (logged in), c3 a bystander
that serves as a positive control. Client isolation is off in this lab, so
clients hear each other's ARP: the bridge's checks are what protects them.

Each attack is tried and fails, and beside it the same action done by the
owner (or by a legitimate client) works. Where "the guard stopped it" could
also mean "the attack never worked in this lab", the guard is taken away for a
moment (its chain flushed, then restored by `desanet reload`), and the attack
must then succeed: the test can see it.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from desanet_lab import LabInfo, LabSpec, run_in
from desanet_lab import plan as p
from tests.integration.conftest import (
    LAB_TOOLS,
    LabFactory,
    desanet,
    desanet_json,
    desanet_ok,
    has_internet,
    login_terms,
    require_root,
    require_tools,
    unique_prefix,
    wait_until,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS, "ping")]

PREFIX = unique_prefix("hl")
FORGED_SOURCE = "203.0.113.77"  # an internet address the attacker pretends to be
ATTACKER, VICTIM, BYSTANDER = 1, 2, 3


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    info = make_lab(LabSpec(prefix=PREFIX, clients=3, extra={
        "network": {"client_isolation": False},
        "dhcp": {"new_client_rate": 4, "new_client_burst": 40},  # the defaults, whatever the lab's
    }))
    assert login_terms(info.client(VICTIM).name).status == 303
    wait_until(lambda: leases_in_firewall(info) >= 3, 20, "the three leases in the firewall")
    return info


# --- small facts --------------------------------------------------------------

def gw_ns(lab: LabInfo) -> str:
    return lab.gw


def ns(lab: LabInfo, k: int) -> str:
    return lab.client(k).name


def ip_of(lab: LabInfo, k: int) -> str:
    ip = lab.client(k).ipv4
    assert ip, f"c{k} has no address"
    return ip


def run(namespace: str, *argv: str, timeout: float = 20.0) -> str:
    res = run_in(namespace, list(argv), timeout=timeout)
    assert res.returncode == 0, f"{' '.join(argv)} in {namespace}: {res.stderr}"
    return res.stdout


def gw_mac(lab: LabInfo) -> str:
    data = json.loads(run(gw_ns(lab), "ip", "-j", "link", "show", "dev", p.LAN_INTERFACE))
    return str(data[0]["address"])


def neighbour_mac(namespace: str, dev: str, ip: str) -> str:
    """The lladdr of ``ip`` in ``namespace``'s neighbour table ("" when none)."""
    data = json.loads(run(namespace, "ip", "-j", "neigh", "show", "dev", dev, "to", ip))
    return str(data[0].get("lladdr", "")) if data else ""


def lease_file(lab: LabInfo) -> dict[str, str]:
    """The gateway's DHCP leases: address -> MAC (the file dnsmasq writes).

    dnsmasq rewrites the file in place (truncate, then write), so a read can catch
    it empty or cut short. A read counts when it is whole: not empty (the lab's
    clients always hold leases), every line complete (expiry, MAC, address, name,
    client id), and the same text as the read just before it.
    """
    path = Path(lab.state_dir) / "state" / "dnsmasq.leases"
    before: list[str] = []  # the previous read

    def whole() -> str | None:
        text = path.read_text()
        same, before[:] = before == [text], [text]
        complete = text.endswith("\n") and all(
            len(line.split()) >= 5 for line in text.splitlines() if not line.startswith("duid "))
        return text if same and complete else None

    text = wait_until(whole, 10, f"two equal, whole reads of {path}", interval=0.05)
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out[parts[2]] = parts[1].lower()
    return out


def leases_in_firewall(lab: LabInfo) -> int:
    data = json.loads(run(gw_ns(lab), "nft", "-j", "list", "set", "inet", "desanet", "lease4"))
    return sum(len(item["set"].get("elem", [])) for item in data["nftables"] if "set" in item)


def reload(lab: LabInfo) -> None:
    """Restore every rule (a full apply of the same config)."""
    desanet_ok(lab.control_socket, "reload")


def settle(lab: LabInfo) -> None:
    """Frames with another client's MAC move the bridge's idea of where it is; each
    client speaking again puts it right."""
    for k in (VICTIM, BYSTANDER, ATTACKER):
        run_in(ns(lab, k), ["ping", "-n", "-c", "1", "-W", "1", p.LAN_IP], timeout=10)


# --- scapy in the attacker's namespace ---------------------------------------

SCAPY = r'''
import json, random, sys, threading, time
from scapy.all import ARP, BOOTP, DHCP, IP, UDP, AsyncSniffer, Ether, conf, sendp
conf.verb = 0
kind, arg = sys.argv[1], json.loads(sys.argv[2])

def mac_bytes(mac):
    return bytes.fromhex(mac.replace(":", "")) + b"\0" * 10

if kind == "arp":
    # [ether_dst, op, hwsrc, psrc, hwdst, pdst], sent ``rounds`` times
    for _ in range(arg["rounds"]):
        for dst, op, hwsrc, psrc, hwdst, pdst in arg["frames"]:
            sendp(Ether(src=hwsrc, dst=dst) / ARP(op=op, hwsrc=hwsrc, psrc=psrc,
                                                  hwdst=hwdst, pdst=pdst), iface="eth0")
        time.sleep(0.3)  # spread over the kernel's ARP lock time: the scenario, not a wait
    print("[]")
elif kind == "udp":
    for src_mac, dst_mac, src, dst, dport in arg["frames"]:
        sendp(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst)
              / UDP(sport=40000, dport=dport) / b"forged", iface="eth0", count=3)
    print("[]")
elif kind == "release":
    # [ether_src, ip_src, chaddr, ciaddr, gateway MAC, gateway address]: DHCPRELEASE
    for src, ip_src, chaddr, ciaddr, gw_mac, gw_ip in arg["frames"]:
        sendp(Ether(src=src, dst=gw_mac) / IP(src=ip_src, dst=gw_ip)
              / UDP(sport=68, dport=67) / BOOTP(chaddr=mac_bytes(chaddr), ciaddr=ciaddr,
                                               xid=random.getrandbits(32))
              / DHCP(options=[("message-type", "release"), ("server_id", gw_ip), "end"]),
              iface="eth0")
    print("[]")
elif kind == "dhcp":
    # Full exchanges: [ether_src, chaddr, client_id or null] each; DISCOVER, then a
    # REQUEST for what is offered. Prints per exchange {"offer": ip, "ack": ip}.
    entries = arg["entries"]
    xids = {random.getrandbits(32): i for i in range(len(entries))}
    by_index = {i: x for x, i in xids.items()}
    result = [{"offer": None, "ack": None} for _ in entries]
    done = threading.Event()

    def options(msg, i, extra=()):
        src, chaddr, cid = entries[i]
        opts = [("message-type", msg), *extra]
        if cid:
            opts.append(("client_id", cid.encode()))
        return opts + ["end"]

    def frame(i, opts):
        src, chaddr, cid = entries[i]
        return (Ether(src=src, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                / UDP(sport=68, dport=67)
                / BOOTP(chaddr=mac_bytes(chaddr), xid=by_index[i], flags=0x8000)
                / DHCP(options=opts))

    def answer(pkt):
        if BOOTP not in pkt or pkt[BOOTP].xid not in xids:
            return
        i = xids[pkt[BOOTP].xid]
        kinds = {o[0]: o[1] for o in pkt[DHCP].options if isinstance(o, tuple)}
        if kinds.get("message-type") == 2 and result[i]["offer"] is None:
            result[i]["offer"] = pkt[BOOTP].yiaddr
            sendp(frame(i, options("request", i, [("requested_addr", pkt[BOOTP].yiaddr),
                                                  ("server_id", kinds["server_id"])])),
                  iface="eth0")
        elif kinds.get("message-type") == 5:
            result[i]["ack"] = pkt[BOOTP].yiaddr
            if all(r["ack"] for r in result):
                done.set()

    listening = threading.Event()
    sniffer = AsyncSniffer(iface="eth0", store=False, prn=answer, started_callback=listening.set,
                           lfilter=lambda q: UDP in q and q[UDP].sport == 67)
    sniffer.start()
    if not listening.wait(10):
        sys.exit("the sniffer did not start within 10 s")
    for i in range(len(entries)):
        sendp(frame(i, options("discover", i)), iface="eth0")
    done.wait(arg["window"])  # the attack's length; absence is judged after it
    sniffer.stop()
    print(json.dumps(result))
'''


def scapy(lab: LabInfo, k: int, kind: str, arg: dict[str, Any], timeout: float = 60) -> Any:
    res = run_in(ns(lab, k), [sys.executable, "-c", SCAPY, kind, json.dumps(arg)],
                 timeout=timeout)
    assert res.returncode == 0, f"scapy {kind} failed in c{k}: {res.stderr}"
    return json.loads(res.stdout)


def dhcp(lab: LabInfo, k: int, entries: Sequence[tuple[str, str, str | None]],
         window: float = 10.0) -> list[dict[str, str | None]]:
    """DHCP exchanges by scapy from client k; ``window``: how long it waits for answers
    after sending (it ends sooner once every exchange has its ACK). Generous: scapy in a
    busy machine's namespace is slow to answer an offer with its request."""
    out: list[dict[str, str | None]] = scapy(
        lab, k, "dhcp", {"entries": [list(e) for e in entries], "window": window},
        timeout=window + 60)
    return out


def random_mac(rng: random.Random) -> str:
    return "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))


# --- the WAN side: what left the gateway? -------------------------------------

WATCH = "hlwatch"


def install_wan_watch(lab: LabInfo) -> None:
    script = (
        f"table inet {WATCH} {{}}\ndelete table inet {WATCH}\n"
        f"table inet {WATCH} {{\n  counter reflected {{}}\n  counter echo {{}}\n"
        "  chain pre {\n    type filter hook prerouting priority raw; policy accept;\n"
        f'    iifname "{p.ISP_INTERFACE}" ip daddr {FORGED_SOURCE} counter name reflected\n'
        f'    iifname "{p.ISP_INTERFACE}" udp dport {p.UDP_ECHO_PORT} counter name echo\n'
        "  }\n}\n"
    )
    res = run_in(lab.wan, ["nft", "-f", "-"], input=script, timeout=15)
    assert res.returncode == 0, res.stderr


def wan_counts(lab: LabInfo) -> dict[str, int]:
    data = json.loads(run(lab.wan, "nft", "-j", "list", "counters", "table", "inet", WATCH))
    return {item["counter"]["name"]: int(item["counter"]["packets"])
            for item in data["nftables"] if "counter" in item}


# --- 1. ARP for the gateway's address -----------------------------------------

def test_arp_claiming_the_gateway_does_not_move_the_victims_gateway(lab: LabInfo) -> None:
    gmac, c1mac = gw_mac(lab), p.client_mac(ATTACKER)
    victim = ns(lab, VICTIM)
    run(victim, "ping", "-n", "-c", "1", "-W", "2", p.LAN_IP)
    assert neighbour_mac(victim, "eth0", p.LAN_IP) == gmac
    claim = {"rounds": 6, "frames": [
        [p.client_mac(VICTIM), 2, c1mac, p.LAN_IP, p.client_mac(VICTIM), ip_of(lab, VICTIM)],
        ["ff:ff:ff:ff:ff:ff", 2, c1mac, p.LAN_IP, "ff:ff:ff:ff:ff:ff", p.LAN_IP],
    ]}
    try:
        # The test can see the attack: without the bridge's guard the victim believes it.
        run(gw_ns(lab), "nft", "flush", "chain", "bridge", "desanet", "guard")
        wait_until(lambda: scapy(lab, ATTACKER, "arp", claim) == [] and
                   neighbour_mac(victim, "eth0", p.LAN_IP) == c1mac, 30,
                   "the unguarded victim to take the attacker for its gateway")
        reload(lab)
        run(victim, "ip", "neigh", "flush", "dev", "eth0")
        # Positive control: the real gateway's ARP is believed.
        run(victim, "ping", "-n", "-c", "1", "-W", "2", p.LAN_IP)
        assert neighbour_mac(victim, "eth0", p.LAN_IP) == gmac
        scapy(lab, ATTACKER, "arp", claim)
        assert neighbour_mac(victim, "eth0", p.LAN_IP) == gmac
        assert has_internet(victim, retry=True)
    finally:
        reload(lab)
        run(victim, "ip", "neigh", "flush", "dev", "eth0")
        settle(lab)


# --- 2. ARP for a neighbour's address, told to the gateway ---------------------

def test_arp_claiming_a_villagers_address_does_not_reach_the_gateways_table(
        lab: LabInfo) -> None:
    gmac, c1mac, c2mac = gw_mac(lab), p.client_mac(ATTACKER), p.client_mac(VICTIM)
    ip2 = ip_of(lab, VICTIM)
    claim = {"rounds": 6, "frames": [[gmac, 2, c1mac, ip2, gmac, p.LAN_IP]]}
    gw = gw_ns(lab)
    try:
        run(gw, "nft", "flush", "chain", "arp", "desanet", "lan_arp")
        run(gw, "nft", "flush", "chain", "bridge", "desanet", "guard")
        wait_until(lambda: scapy(lab, ATTACKER, "arp", claim) == [] and
                   neighbour_mac(gw, p.LAN_INTERFACE, ip2) == c1mac, 30,
                   "the unguarded gateway to send the victim's traffic to the attacker")
        reload(lab)
        run(gw, "ip", "neigh", "flush", "dev", p.LAN_INTERFACE, "to", ip2)
        # Positive control: the victim's own answer is believed.
        run(gw, "ping", "-n", "-c", "1", "-W", "2", ip2)
        assert neighbour_mac(gw, p.LAN_INTERFACE, ip2) == c2mac
        scapy(lab, ATTACKER, "arp", claim)
        assert neighbour_mac(gw, p.LAN_INTERFACE, ip2) == c2mac
        assert has_internet(ns(lab, VICTIM))
    finally:
        reload(lab)
        run(gw, "ip", "neigh", "flush", "dev", p.LAN_INTERFACE, "to", ip2)
        settle(lab)


# --- 3. DHCP in someone else's name ---------------------------------------------

def test_dhcp_whose_client_address_is_not_the_frames_source_gets_no_lease(
        lab: LabInfo) -> None:
    rng = random.Random(9)
    c1mac, other, own, unguarded = (p.client_mac(ATTACKER), random_mac(rng), random_mac(rng),
                                    random_mac(rng))
    forged, honest = dhcp(lab, ATTACKER, [(c1mac, other, None), (own, own, None)])
    assert forged == {"offer": None, "ack": None}, forged
    assert other not in lease_file(lab).values()
    # Positive control: the same exchange with chaddr = source gets its lease.
    assert honest["ack"], honest
    assert lease_file(lab).get(honest["ack"]) == own
    # The test can see the attack: without the DHCP guard the forged one gets a lease.
    try:
        run(gw_ns(lab), "nft", "flush", "chain", "inet", "desanet", "lan_dhcp")
        (forged,) = dhcp(lab, ATTACKER, [(c1mac, unguarded, None)])
        assert forged["ack"] and lease_file(lab).get(forged["ack"]) == unguarded, forged
    finally:
        reload(lab)


def test_a_forged_dhcp_release_does_not_free_anothers_lease(lab: LabInfo) -> None:
    rng = random.Random(4)
    victim, owner, third = random_mac(rng), random_mac(rng), random_mac(rng)
    got = dhcp(lab, ATTACKER, [(victim, victim, None), (owner, owner, None),
                               (third, third, None)])
    ips = [r["ack"] for r in got]
    assert all(ips), got
    gmac, c1mac, ip1 = gw_mac(lab), p.client_mac(ATTACKER), ip_of(lab, ATTACKER)

    def release(src: str, ip_src: str, chaddr: str, ip: str | None) -> None:
        scapy(lab, ATTACKER, "release",
              {"frames": [[src, ip_src, chaddr, ip, gmac, p.LAN_IP]]})

    # The attacker's own frame and address; the victim's lease in the message.
    release(c1mac, ip1, victim, ips[0])
    # Positive control: the owner's own release frees its lease. It was sent after
    # the forged one: once it is seen, the forged one has been handled too.
    release(owner, str(ips[1]), owner, ips[1])
    wait_until(lambda: owner not in lease_file(lab).values(), 10, "the owner's release")
    assert lease_file(lab).get(str(ips[0])) == victim
    # The test can see the attack: without the DHCP guard it frees the lease.
    try:
        run(gw_ns(lab), "nft", "flush", "chain", "inet", "desanet", "lan_dhcp")
        release(c1mac, ip1, third, ips[2])
        wait_until(lambda: third not in lease_file(lab).values(), 10,
                   "the unguarded forged release")
    finally:
        reload(lab)


# --- 4. A second lease under the victim's MAC, then staff authorize "that MAC" ---

def test_a_mac_with_two_leases_is_refused_by_clients_auth(lab: LabInfo) -> None:
    c2mac, ip2 = p.client_mac(VICTIM), ip_of(lab, VICTIM)
    try:
        # Another client id under the victim's MAC: dnsmasq gives a second lease.
        (second,) = dhcp(lab, ATTACKER, [(c2mac, c2mac, "attacker")])
        assert second["ack"] and second["ack"] != ip2, second
        res = desanet(lab.control_socket, "clients", "auth", c2mac)
        assert res.rc != 0
        assert ip2 in res.stderr and second["ack"] in res.stderr and "--ip" in res.stderr, \
            res.stderr
        # Nothing changed: the victim's session is where it was.
        rows = desanet_json(lab.control_socket, "clients")["clients"]
        assert next((r["ip"], r["authorized"]) for r in rows if r["mac"] == c2mac) == (ip2, True)
    finally:
        settle(lab)
    # Positive control: a MAC with one lease is authorized by MAC alone.
    c3mac = p.client_mac(BYSTANDER)
    out = desanet_json(lab.control_socket, "clients", "auth", c3mac)
    assert out["client"]["ip"] == ip_of(lab, BYSTANDER)
    desanet_ok(lab.control_socket, "clients", "deauth", c3mac)


# --- 5. Forged sources ----------------------------------------------------------

def test_a_forged_internet_source_produces_nothing_on_the_wan(lab: LabInfo) -> None:
    install_wan_watch(lab)
    gmac = gw_mac(lab)
    gw = gw_ns(lab)
    forged = {"frames": [[p.client_mac(k), gmac, FORGED_SOURCE, p.INTERNET_V4, p.UDP_ECHO_PORT]
                         for k in (ATTACKER,)]}
    # Authorized and unauthorized alike: the victim is online, the attacker is not.
    forged_by_victim = {"frames": [[p.client_mac(VICTIM), gmac, FORGED_SOURCE, p.INTERNET_V4,
                                    p.UDP_ECHO_PORT]]}
    try:
        # The test can see the reflection: without the guard and rp_filter it happens.
        run(gw, "nft", "flush", "chain", "inet", "desanet", "lan_source")
        run(gw, "sysctl", "-qw", f"net.ipv4.conf.{p.LAN_INTERFACE}.rp_filter=0")
        before = wan_counts(lab)
        scapy(lab, ATTACKER, "udp", forged)
        wait_until(lambda: wan_counts(lab)["reflected"] > before["reflected"], 10,
                   "the unguarded gateway to reflect its rejection to the forged source")
        reload(lab)
        assert run(gw, "sysctl", "-n", f"net.ipv4.conf.{p.LAN_INTERFACE}.rp_filter").strip() \
            == "1"
        before = wan_counts(lab)
        scapy(lab, ATTACKER, "udp", forged)
        scapy(lab, VICTIM, "udp", forged_by_victim)
        # Positive control: the victim's own packet is seen on the WAN, after the forged
        # ones, through the same gateway: had any of those left, it would be counted.
        attempts: list[bool] = []
        wait_until(lambda: attempts.append(udp_echo(lab, VICTIM)) or attempts[-1], 10,
                   "the victim's echo")
        after = wan_counts(lab)
        # Every echo the WAN counted is one of the victim's: no forged frame got through.
        assert after["echo"] == before["echo"] + len(attempts), (before, after, attempts)
        assert after["reflected"] == before["reflected"], (before, after)
    finally:
        reload(lab)
        settle(lab)


def udp_echo(lab: LabInfo, k: int) -> bool:
    code = ("import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(2);"
            f"s.sendto(b'hi',('{p.INTERNET_V4}',{p.UDP_ECHO_PORT}));print(s.recvfrom(64)[0])")
    return run_in(ns(lab, k), [sys.executable, "-c", code], timeout=10).returncode == 0


# --- 6. A cloned MAC logging in from another address ------------------------------

def test_a_cloned_mac_on_another_address_does_not_end_the_victims_session(
        lab: LabInfo) -> None:
    c1mac, c2mac, ip2 = p.client_mac(ATTACKER), p.client_mac(VICTIM), ip_of(lab, VICTIM)
    attacker, victim = ns(lab, ATTACKER), ns(lab, VICTIM)
    ip1 = ip_of(lab, ATTACKER)
    static = "10.42.0.240"  # outside the leases: the attacker configures it by hand
    try:
        run(attacker, "ip", "addr", "flush", "dev", "eth0")
        run(attacker, "ip", "link", "set", "dev", "eth0", "address", c2mac)
        run(attacker, "ip", "addr", "add", f"{static}/24", "dev", "eth0")
        run(attacker, "ip", "route", "replace", "default", "via", p.LAN_IP)
        res = login_terms(attacker)
        assert res.status == 403, res
        assert "sudah masuk" in res.body
    finally:
        run(attacker, "ip", "addr", "flush", "dev", "eth0")
        run(attacker, "ip", "link", "set", "dev", "eth0", "address", c1mac)
        run(attacker, "ip", "addr", "add", f"{ip1}/24", "dev", "eth0")
        run(attacker, "ip", "route", "replace", "default", "via", p.LAN_IP)
        settle(lab)
    rows = desanet_json(lab.control_socket, "clients")["clients"]
    assert [(r["ip"], r["authorized"]) for r in rows if r["mac"] == c2mac] == [(ip2, True)]
    ended = [e for e in desanet_json(lab.control_socket, "events", "--no-follow")
             if e.get("type") == "session_ended" and e.get("mac") == c2mac]
    assert ended == [], ended
    wait_until(lambda: has_internet(victim), 10, "the victim's internet")
    # Positive control: the victim's own login from its own address works, through the
    # same check (staff end the session first, so the portal really logs it in).
    desanet_ok(lab.control_socket, "clients", "deauth", c2mac)
    again = login_terms(victim)
    assert again.status == 303, again
    assert has_internet(victim, retry=True)


# --- 7. A DHCP flood of invented MACs ----------------------------------------------

def test_a_dhcp_flood_does_not_empty_the_pool(lab: LabInfo) -> None:
    rng = random.Random(110)
    pool = int(p.DHCP_RANGE[1].rsplit(".", 1)[1]) - int(p.DHCP_RANGE[0].rsplit(".", 1)[1]) + 1
    macs = [random_mac(rng) for _ in range(110)]
    got = dhcp(lab, ATTACKER, [(m, m, None) for m in macs], window=8.0)
    acked = [r["ack"] for r in got if r["ack"]]
    assert acked, "the flood got no lease at all: it would prove nothing"
    leases = lease_file(lab)
    assert len(leases) < pool, f"{len(leases)} leases of {pool}: the pool is empty"
    # Positive control: a villager with a lease gets it again at once (udhcpc fails
    # without one), while the flood's budget is still spent.
    run(ns(lab, BYSTANDER), "busybox", "udhcpc", "-f", "-q", "-n", "-t", "5", "-T", "1",
        "-i", "eth0", "-s", "/bin/true")
    assert lease_file(lab).get(ip_of(lab, BYSTANDER)) == p.client_mac(BYSTANDER)
    # The test can see the attack: without the DHCP guard the same flood empties the
    # pool (the module's last test: the lab is left without free addresses).
    run(gw_ns(lab), "nft", "flush", "chain", "inet", "desanet", "lan_dhcp")
    more = [random_mac(rng) for _ in range(110)]
    # The window is the attack's length: long enough for a slowed scapy to ask for every
    # offer it gets (the pool is full before all 110 are served, so it always runs out).
    dhcp(lab, ATTACKER, [(m, m, None) for m in more], window=20.0)
    wait_until(lambda: len(lease_file(lab)) == pool, 30, f"all {pool} addresses leased",
               interval=0.5)
    reload(lab)
