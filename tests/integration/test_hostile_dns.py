"""Hostile clients against the gateway's DNS and walled garden (issue 9, part dns).

Each technique is tried from a client that has not logged in, and judged by
what reaches the WAN namespace (the ISP resolver's query log, nftables
counters there), next to a positive control: a logged-in client, or the same
action done legitimately, that does get through.
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from desanet_lab import LabInfo, LabSpec, run_in
from desanet_lab import plan as p
from gateway.firewall.planner import (
    DNS_BURST_AUTHORIZED,
    DNS_BURST_BEFORE_LOGIN,
    DNS_RATE_AUTHORIZED,
    DNS_RATE_BEFORE_LOGIN,
    GARDEN_TTL_FLOOR,
)
from gateway.services.prelogin_dns import GATEWAY_NAME_TTL
from tests.integration.conftest import (
    LAB_TOOLS,
    LabFactory,
    http,
    login_terms,
    require_root,
    require_tools,
    retried,
    unique_prefix,
    wait_until,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS, "nft")]

PREFIX = unique_prefix("hd")
TYPE_A, TYPE_NULL, TYPE_TXT = 1, 10, 16  # iodine asks NULL, TXT, CNAME, MX ... records

# A small DNS client run inside a client namespace: one query, or a flood from one socket.
DNS_TOOL = r'''
import json, secrets, socket, struct, sys, time

def query(name, qtype, ident):
    q = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack("!HH", qtype, 1)

def skip(msg, i):
    while True:
        n = msg[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += n + 1

def parse(msg):
    _, flags, qd, an, _, _ = struct.unpack("!HHHHHH", msg[:12])
    i = 12
    for _ in range(qd):
        i = skip(msg, i) + 4
    out, ttls = [], []
    for _ in range(an):
        i = skip(msg, i)
        rtype, _, ttl, rdlen = struct.unpack("!HHIH", msg[i:i + 10])
        i += 10
        if rtype == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(msg[i:i + 4]))
            ttls.append(ttl)
        i += rdlen
    return {"rcode": flags & 0xF, "a": out, "answers": an, "ttl": ttls}

def one(server, name, qtype, transport):
    q = query(name, int(qtype), secrets.randbelow(65536))
    try:
        if transport == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(3)
            s.sendto(q, (server, 53))
            msg = s.recvfrom(4096)[0]
        else:
            s = socket.create_connection((server, 53), timeout=3)
            s.sendall(struct.pack("!H", len(q)) + q)
            buf = b""
            while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            msg = buf[2:]
        return parse(msg)
    except OSError as exc:
        return {"error": type(exc).__name__}

def flood(server, name, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    started = time.monotonic()
    answered = 0
    for k in range(int(count)):
        s.sendto(query(name, 1, k), (server, 53))
        try:
            while True:
                s.recv(4096)
                answered += 1
        except BlockingIOError:
            pass
    elapsed = time.monotonic() - started
    s.settimeout(1.5)  # the answers still on their way
    try:
        while True:
            s.recv(4096)
            answered += 1
    except OSError:
        pass
    return {"sent": int(count), "answered": answered, "elapsed": elapsed}

kind, *args = sys.argv[1:]
print(json.dumps({"one": one, "flood": flood}[kind](*args)))
'''

WATCH_TABLE = "hdwatch"
# name -> match on packets the WAN namespace receives from the gateway
WATCH: Mapping[str, str] = {
    "garden_tcp80": f"ip daddr {p.GOVERNMENT_V4} tcp dport 80",
    "garden_udp": f"ip daddr {p.GOVERNMENT_V4} udp dport {p.UDP_ECHO_PORT}",
    "garden_ssh": f"ip daddr {p.GOVERNMENT_V4} tcp dport 22",
    "evil_tls": f"ip daddr {p.INTERNET_V4} tcp dport {p.TLS_PORT}",
}


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    info = make_lab(LabSpec(prefix=PREFIX, clients=3))
    decl = "".join(f"  counter {name} {{}}\n" for name in WATCH)
    rules = "".join(f"    iifname \"{p.ISP_INTERFACE}\" {m} counter name {n}\n"
                    for n, m in WATCH.items())
    script = (f"table inet {WATCH_TABLE} {{\n{decl}  chain pre {{\n"
              "    type filter hook prerouting priority raw; policy accept;\n"
              f"{rules}  }}\n}}\n")
    res = run_in(info.wan, ["nft", "-f", "-"], input=script, timeout=15)
    assert res.returncode == 0, res.stderr
    return info


@pytest.fixture(scope="module")
def c3_online(lab: LabInfo) -> str:
    """c3 accepts the terms: the logged-in client of the positive controls."""
    ns = lab.client(3).name
    res = login_terms(ns)
    assert res.status == 303, res
    return ns


def ns(lab: LabInfo, k: int) -> str:
    return lab.client(k).name


def dns(netns: str, name: str, qtype: int = TYPE_A, transport: str = "udp",
        server: str = p.LAN_IP) -> dict[str, Any]:
    res = run_in(netns, [sys.executable, "-c", DNS_TOOL, "one", server, name, str(qtype),
                         transport], timeout=20)
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def counters(lab: LabInfo) -> dict[str, int]:
    res = run_in(lab.wan, ["nft", "-j", "list", "counters", "table", "inet", WATCH_TABLE],
                 timeout=15, check=True)
    return {item["counter"]["name"]: int(item["counter"]["packets"])
            for item in json.loads(res.stdout)["nftables"] if "counter" in item}


def isp_log(lab: LabInfo) -> str:
    """What the ISP resolver in the WAN namespace was asked (dnsmasq --log-queries)."""
    return (Path(lab.state_dir) / "logs" / "isp-resolver.log").read_text(errors="replace")


def tcp(netns: str, addr: str, port: int) -> str:
    """"connected:<greeting>" or the error's name, from a client."""
    code = ("import socket,sys\ntry:\n s=socket.create_connection((sys.argv[1],int(sys.argv[2])),"
            "timeout=3)\n s.settimeout(2)\n try:\n  g=s.recv(100).decode(errors='replace')\n"
            " except OSError:\n  g=''\n print('connected:'+g.strip())\nexcept OSError as e:\n"
            " print(type(e).__name__)")
    res = run_in(netns, [sys.executable, "-c", code, addr, str(port)], timeout=15)
    return res.stdout.strip()


def udp_echo(netns: str, addr: str) -> bool:
    code = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "s.settimeout(2)\ns.sendto(b'x',(sys.argv[1],int(sys.argv[2])))\ntry:\n"
            " s.recvfrom(100)\n print('reply')\nexcept OSError:\n print('none')")
    res = run_in(netns, [sys.executable, "-c", code, addr, str(p.UDP_ECHO_PORT)], timeout=15)
    return res.stdout.strip() == "reply"


def garden_set(lab: LabInfo) -> str:
    return run_in(lab.gw, ["nft", "list", "set", "inet", "desanet", "garden_dns4"],
                  timeout=15, check=True).stdout


# 1 -- IP over DNS before login ------------------------------------------------------------


def test_tunnel_queries_never_reach_the_internet_before_login(lab: LabInfo,
                                                              c3_online: str) -> None:
    c1 = ns(lab, 1)
    tunnel = f"t{secrets.token_hex(8)}.tunnel.{p.INTERNET_HOST}"  # what iodine sends
    for transport in ("udp", "tcp"):
        for server in (p.LAN_IP, p.OUTSIDE_RESOLVER):  # ours, or any other address
            for qtype in (TYPE_A, TYPE_TXT, TYPE_NULL):
                ans = dns(c1, tunnel, qtype, transport, server)
                assert "error" not in ans, ans  # answered at once, by the gateway
                # A: the gateway (its port 80 is the portal); other types: no data
                assert ans["a"] == ([p.LAN_IP] if qtype == TYPE_A else []), ans
    # positive control: the same kind of name from a logged-in client reaches the resolver
    control = f"t{secrets.token_hex(8)}.tunnel.{p.INTERNET_HOST}"
    assert "error" not in dns(c3_online, control, TYPE_TXT)
    wait_until(lambda: control in isp_log(lab), 10, "the logged-in query at the ISP resolver")
    assert tunnel not in isp_log(lab)


def test_outside_names_resolve_normally_after_login(lab: LabInfo, c3_online: str) -> None:
    assert dns(c3_online, p.INTERNET_HOST)["a"] == [p.INTERNET_V4]
    assert dns(ns(lab, 1), p.INTERNET_HOST)["a"] == [p.LAN_IP]  # not logged in
    assert dns(ns(lab, 1), "connectivitycheck.gstatic.com")["a"] == [p.CONNCHECK_V4]
    assert dns(ns(lab, 1), p.PORTAL_HOSTNAME)["a"] == [p.LAN_IP]


def test_a_dns_flood_before_login_is_cut_and_others_still_resolve(lab: LabInfo) -> None:
    c1, c2 = ns(lab, 1), ns(lab, 2)
    res = run_in(c1, [sys.executable, "-c", DNS_TOOL, "flood", p.LAN_IP, p.PORTAL_HOSTNAME,
                      "600"], timeout=60)
    assert res.returncode == 0, res.stderr
    flood = json.loads(res.stdout)
    allowed = DNS_BURST_BEFORE_LOGIN + DNS_RATE_BEFORE_LOGIN * (flood["elapsed"] + 2)
    assert flood["answered"] <= allowed, flood
    if allowed < flood["sent"]:
        assert flood["answered"] < flood["sent"], flood
    # positive control: another client, not logged in either, is not held back
    assert dns(c2, p.PORTAL_HOSTNAME)["a"] == [p.LAN_IP]
    # and c1's own rate comes back once it stops
    wait_until(lambda: dns(c1, p.PORTAL_HOSTNAME).get("a") == [p.LAN_IP], 10,
               "c1 to resolve again after its flood")


def test_a_dns_flood_after_login_is_bounded_too(lab: LabInfo, c3_online: str) -> None:
    """A DNS tunnel through the full resolver escapes the quota counters and fair use
    (red team): a logged-in client has its own query rate at the gateway."""
    def flood(count: int) -> dict[str, Any]:
        res = run_in(c3_online, [sys.executable, "-c", DNS_TOOL, "flood", p.LAN_IP,
                                 p.PORTAL_HOSTNAME, str(count)], timeout=60)
        assert res.returncode == 0, res.stderr
        out: dict[str, Any] = json.loads(res.stdout)
        return out

    # the control: a page load's worth of queries at once is all answered
    burst = flood(DNS_BURST_AUTHORIZED // 2)
    assert burst["answered"] == burst["sent"], burst
    big = flood(1500)
    allowed = DNS_BURST_AUTHORIZED + DNS_RATE_AUTHORIZED * (big["elapsed"] + 2)
    assert big["answered"] <= allowed, big
    if allowed < big["sent"]:
        assert big["answered"] < big["sent"], big
    # its rate comes back once it stops
    wait_until(lambda: dns(c3_online, p.PORTAL_HOSTNAME).get("a") == [p.LAN_IP], 15,
               "c3 to resolve again after its flood")


# 2 -- the walled garden --------------------------------------------------------------------


def test_the_walled_garden_is_web_only(lab: LabInfo) -> None:
    c1 = ns(lab, 1)
    wait_until(lambda: http(c1, f"http://{p.GOVERNMENT_HOST}/").status == 200, 20,
               "the walled-garden site before login")
    before = counters(lab)
    assert udp_echo(c1, p.GOVERNMENT_V4) is False
    assert not tcp(c1, p.GOVERNMENT_V4, 22).startswith("connected")
    assert http(c1, f"http://{p.GOVERNMENT_HOST}/").status == 200  # TCP 80 still works
    after = counters(lab)
    assert after["garden_udp"] == before["garden_udp"], "UDP to a garden address left the LAN"
    assert after["garden_ssh"] == before["garden_ssh"], "port 22 to a garden address left the LAN"
    assert after["garden_tcp80"] > before["garden_tcp80"]


def test_garden_subdomains_and_cnames_open_nothing(lab: LabInfo, c3_online: str) -> None:
    c1 = ns(lab, 1)
    for name in (p.GARDEN_EVIL_HOST, p.GARDEN_CNAME_HOST):
        assert dns(c1, name)["a"] == [p.LAN_IP], name  # not forwarded, not opened
        # a logged-in client asking the full resolver fills no garden set either
        assert dns(c3_online, name)["a"] == [p.INTERNET_V4], name
    assert p.INTERNET_V4 not in garden_set(lab)
    before = counters(lab)
    assert not tcp(c1, p.INTERNET_V4, p.TLS_PORT).startswith("connected")
    assert counters(lab)["evil_tls"] == before["evil_tls"]
    # positive control: the logged-in client reaches the same address and port (tried
    # again for a while: on a busy machine one greeting may come late)
    tls = retried(lambda: tcp(c3_online, p.INTERNET_V4, p.TLS_PORT),
                  lambda r: r == "connected:tls-lab")
    assert tls == "connected:tls-lab", tls


def test_garden_addresses_follow_the_dns_ttl(lab: LabInfo) -> None:
    # the lab's resolver answers with TTL 0: the element gets the floor, not a day
    wait_until(lambda: p.GOVERNMENT_V4 in garden_set(lab), 20,
               "the garden name's address in the set")
    text = garden_set(lab)
    line = next(x for x in text.replace(",", "\n").splitlines() if p.GOVERNMENT_V4 in x)
    assert f"timeout {GARDEN_TTL_FLOOR // 60}m" in line, line


# 3 -- DHCP names that would shadow the gateway's ------------------------------------------

UDHCPC_SCRIPT = "#!/bin/sh\nexit 0\n"  # asks for a lease and configures nothing


def _dhcp_with_hostname(lab: LabInfo, k: int, hostname: str) -> None:
    script = Path(lab.state_dir) / "hd-udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    res = run_in(ns(lab, k), ["busybox", "udhcpc", "-f", "-q", "-n", "-t", "5", "-T", "1",
                              "-i", p.CLIENT_INTERFACE, "-s", str(script),
                              "-x", f"hostname:{hostname}"], timeout=30)
    assert res.returncode == 0, res.stderr


def _leases(lab: LabInfo) -> str:
    return (Path(lab.state_dir) / "state" / "dnsmasq.leases").read_text()


def test_a_dhcp_hostname_never_takes_the_gateways_names(lab: LabInfo, c3_online: str) -> None:
    ip1 = lab.client(1).ipv4
    assert ip1 is not None
    # positive control: an ordinary name is published for its client
    _dhcp_with_hostname(lab, 1, "budi")
    wait_until(lambda: dns(c3_online, "budi.desa")["a"] == [ip1], 10,
               "budi.desa to resolve to c1")
    assert dns(ns(lab, 2), "budi.desa")["a"] == [ip1]  # before login too (local names)
    for name in ("portal", "layanan", "wpad"):
        _dhcp_with_hostname(lab, 1, name)  # dnsmasq took the name (or not) before its ACK
        assert f" {name} " not in _leases(lab)
        for k_ns in (c3_online, ns(lab, 2)):  # logged in, and not
            assert dns(k_ns, p.PORTAL_HOSTNAME)["a"] == [p.LAN_IP]
            assert dns(k_ns, "layanan.desa")["a"] == [p.LAN_IP]
            wpad = dns(k_ns, "wpad.desa")
            assert wpad["a"] == [] and wpad["rcode"] == 3, wpad  # NXDOMAIN
        assert http(c3_online, "http://portal.desa/").status == 200


def test_prelogin_resolver_runs_beside_the_full_one(lab: LabInfo) -> None:
    udp = run_in(lab.gw, ["ss", "-Hlunp"], timeout=10, check=True).stdout
    listening = {line.split()[3]: line for line in udp.splitlines() if line.strip()}
    assert "dnsmasq" in listening.get(f"{p.LAN_IP}:53", ""), udp
    assert "dnsmasq" in listening.get(f"{p.LAN_IP}:5053", ""), udp
    assert f"{p.LAN_IP}:53" in listening and ":67" in udp  # DHCP: the full one only
    assert sum(":67 " in line for line in udp.splitlines()) == 1, udp
    # the ISP resolver's log is the one the tunnel test reads: it does log queries
    assert "query[" in isp_log(lab)


def test_before_login_the_gateways_names_are_kept_and_other_names_are_not(lab: LabInfo) -> None:
    """A phone (or a page's many requests) may keep the gateway's own names for
    GATEWAY_NAME_TTL: their address never changes at login, and asking again for every
    request would run into the pre-login query rate limit. Every other name keeps TTL 0,
    so nothing of "any name = the gateway" sticks after login (the control)."""
    k_ns = ns(lab, 2)  # never logged in here
    for name in (p.PORTAL_HOSTNAME, "layanan.desa"):
        got = dns(k_ns, name)
        assert got["a"] == [p.LAN_IP] and got["ttl"] == [GATEWAY_NAME_TTL], (name, got)
    other = dns(k_ns, "www.example.com")
    assert other["a"] == [p.LAN_IP] and other["ttl"] == [0], other
