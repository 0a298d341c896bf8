"""Can a villager get past the captive portal without logging in?

Every test runs real traffic from client namespaces of one virtual village
(the real daemon, dnsmasq and nftables in the gateway namespace) and asserts
what the client sees; where "no answer" could also mean "the packet got out
but the answer was lost", named nftables counters in the WAN namespace
prove that nothing reached the lab's internet at all.

c1 and c2 stay unauthorized for the whole module; c3 logs in (terms).
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from desanet_lab import Lab, LabInfo, LabSpec, run_in
from desanet_lab import plan as p
from tests.integration.conftest import (
    LAB_TOOLS,
    RETRY_WITHIN,
    Http,
    LabFactory,
    form_token,
    http,
    require_root,
    require_tools,
    retried,
    unique_prefix,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS, "ping")]

PREFIX = unique_prefix("bp")
PORTAL = "http://portal.desa/"
CONNCHECKS = [
    # (URL, what the OS expects once online)
    ("http://connectivitycheck.gstatic.com/generate_204", 204, ""),
    ("http://captive.apple.com/hotspot-detect.html", 200, "<TITLE>Success</TITLE>"),
    ("http://www.msftconnecttest.com/connecttest.txt", 200, "Microsoft Connect Test"),
    ("http://detectportal.firefox.com/canonical.html", 200, "success"),
]
# An address an attacker gives itself (the gateway hands out no IPv6 at all):
# global scope, so the kernel would forward it and only the firewall can stop it.
ATTACKER_V6 = "2001:db8:42::{k}"


@pytest.fixture(scope="module")
def lab_info(make_lab: LabFactory) -> LabInfo:
    return make_lab(LabSpec(prefix=PREFIX, clients=3))


@pytest.fixture(scope="module")
def lab(lab_info: LabInfo) -> Lab:
    lab = Lab(LabSpec(prefix=lab_info.prefix, clients=3))
    lab.info = lab_info
    install_wan_watch(lab)
    return lab


# --- helpers ------------------------------------------------------------------

# --- what a client (or an attacker on the LAN) can try ----------------------

PROBE = r'''
import json, socket, struct, sys

def udp(addr, port, timeout=2.0):
    timeout = float(timeout)
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(b"bypass", (addr, int(port)))
        data, src = s.recvfrom(512)
        return {"reply": data.decode(errors="replace"), "from": src[0]}
    except socket.timeout:
        return {"reply": None, "error": "timeout"}
    except OSError as exc:
        return {"reply": None, "error": type(exc).__name__ + ": " + str(exc)}

def tcp(addr, port, timeout=2.0, greeting_wait=0.5):
    timeout = float(timeout)
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((addr, int(port)))
    except ConnectionRefusedError:
        return {"result": "refused"}
    except socket.timeout:
        return {"result": "timeout"}
    except OSError as exc:
        return {"result": "error", "error": type(exc).__name__ + ": " + str(exc)}
    s.settimeout(float(greeting_wait))
    try:
        greeting = s.recv(100).decode(errors="replace")
    except OSError:
        greeting = ""
    return {"result": "connected", "greeting": greeting}

def _query(name, qid=0x4242):
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack("!HH", 1, 1)

def _skip_name(msg, i):
    while True:
        n = msg[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += n + 1

def _answers(msg):
    qid, flags, qd, an, _, _ = struct.unpack("!HHHHHH", msg[:12])
    i = 12
    for _ in range(qd):
        i = _skip_name(msg, i) + 4
    out = []
    for _ in range(an):
        i = _skip_name(msg, i)
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[i:i + 10])
        i += 10
        if rtype == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(msg[i:i + 4]))
        i += rdlen
    return {"rcode": flags & 0xF, "a": out}

def dns(server, name, transport, timeout=2.0):
    q = _query(name)
    try:
        if transport == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(timeout)
            s.sendto(q, (server, 53))
            msg, _ = s.recvfrom(4096)
        else:
            s = socket.create_connection((server, 53), timeout=timeout)
            s.sendall(struct.pack("!H", len(q)) + q)
            buf = b""
            while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            msg = buf[2:]
        return _answers(msg)
    except socket.timeout:
        return {"error": "timeout"}
    except OSError as exc:
        return {"error": type(exc).__name__ + ": " + str(exc)}

kind, *args = sys.argv[1:]
print(json.dumps({"udp": udp, "tcp": tcp, "dns": dns}[kind](*args)))
'''


def probe(lab: Lab, role: str, kind: str, *args: str, timeout: float = 15.0) -> dict[str, Any]:
    """Run one probe: "udp ADDR PORT [WAIT]", "tcp ADDR PORT [WAIT [GREETING_WAIT]]",
    "dns SERVER NAME udp|tcp"."""
    res = lab.exec(role, [sys.executable, "-c", PROBE, kind, *args], timeout=timeout)
    assert res.returncode == 0, f"probe {kind} {args} failed in {role}: {res.stderr}"
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def probe_until(lab: Lab, role: str, ok: Callable[[dict[str, Any]], object], kind: str,
                *args: str) -> dict[str, Any]:
    """:func:`probe` for a positive check: tried again (a new socket each time) until
    ``ok`` or RETRY_WITHIN s passed; the last result. Absence checks use :func:`probe`."""
    return retried(lambda: probe(lab, role, kind, *args), ok)


def ping(lab: Lab, role: str, addr: str, *, count: int = 1, wait: int = 1,
         retry: bool = False) -> bool:
    """Did ``addr`` answer a ping from ``role``? ``retry`` for a positive check: one echo
    request a second until the first answer, for up to RETRY_WITHIN s. An absence check
    stays ``count`` requests of ``wait`` s."""
    if retry:
        argv = ["ping", "-n", "-c", "1", "-w", f"{RETRY_WITHIN:.0f}", addr]
    else:
        argv = ["ping", "-n", "-c", str(count), "-W", str(wait), addr]
    if ":" in addr:
        argv.insert(1, "-6")
    return lab.exec(role, argv, timeout=count * wait + RETRY_WITHIN + 10).returncode == 0


# --- scapy, for frames the kernel's own stack would never send ---------------

SPOOF = r'''
import json, sys
from scapy.all import IP, UDP, AsyncSniffer, Ether, conf, sendp
conf.verb = 0
dst_mac, dst_ip, dport = sys.argv[1], sys.argv[2], int(sys.argv[3])
frames = [json.loads(arg) for arg in sys.argv[4:]]  # [src_mac, src_ip, sport]
import threading, time
listening = threading.Event()
sniffer = AsyncSniffer(
    iface="eth0", store=True, started_callback=listening.set,
    lfilter=lambda p: IP in p and UDP in p and p[IP].src == dst_ip and p[UDP].sport == dport,
)
sniffer.start()
if not listening.wait(10):  # the socket is open: nothing sent from now on can be missed
    sys.exit("the sniffer did not start within 10 s")
for _ in range(3):
    for src_mac, src_ip, sport in frames:
        sendp(Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip)
              / UDP(sport=sport, dport=dport) / b"spoofed", iface="eth0")
    time.sleep(0.2)  # three rounds spread out: the test's scenario, not a wait
time.sleep(1.0)  # how long a reply may take to come back: absence is judged after it
got = sniffer.stop()
print(json.dumps([[p[UDP].dport, bytes(p[UDP].payload).decode(errors="replace")] for p in got]))
'''


def spoofed_udp(lab: Lab, role: str, *, dst_mac: str, dst_ip: str, dport: int,
                frames: Sequence[tuple[str, str, int]]) -> list[list[Any]]:
    """Send hand-made UDP frames (src MAC, src IP, src port) from ``role`` with scapy;
    return [port, payload] of every UDP answer from ``dst_ip`` seen on its eth0."""
    argv = [sys.executable, "-c", SPOOF, dst_mac, dst_ip, str(dport)]
    argv += [json.dumps(list(f)) for f in frames]
    res = lab.exec(role, argv, timeout=30)
    assert res.returncode == 0, f"scapy failed in {role}: {res.stderr}"
    replies: list[list[Any]] = json.loads(res.stdout)
    return replies


# --- the WAN side: did anything arrive? --------------------------------------

WATCH_TABLE = "bpwatch"
# name -> match, counted on packets the WAN namespace receives from the gateway.
WATCH_COUNTERS: Mapping[str, str] = {
    "udp_echo4": "ip daddr 198.51.100.10 udp dport 9999",
    "tcp443_4": "ip daddr 198.51.100.10 tcp dport 443",
    "icmp4": "ip daddr 198.51.100.10 icmp type echo-request",
    "outside_resolver": "ip daddr 198.51.100.99",
    "v6_internet": "ip6 daddr 2001:db8:100::10",
    "v6_not_gateway": "ip6 saddr != { 2001:db8:64::/64, fe80::/10 }",
}


def install_wan_watch(lab: Lab, iface: str = "isp0") -> None:
    """Named nftables counters in the WAN namespace (the lab's "internet")."""
    decl = "".join(f"  counter {name} {{}}\n" for name in WATCH_COUNTERS)
    rules = "".join(f"    iifname \"{iface}\" {match} counter name {name}\n"
                    for name, match in WATCH_COUNTERS.items())
    script = (
        f"table inet {WATCH_TABLE} {{}}\ndelete table inet {WATCH_TABLE}\n"
        f"table inet {WATCH_TABLE} {{\n{decl}"
        "  chain pre {\n    type filter hook prerouting priority raw; policy accept;\n"
        f"{rules}  }}\n}}\n"
    )
    res = run_in(lab.ns("wan"), ["nft", "-f", "-"], input=script, timeout=15)
    assert res.returncode == 0, f"cannot install WAN counters: {res.stderr}\n{script}"


def wan_counts(lab: Lab) -> dict[str, int]:
    res = run_in(lab.ns("wan"), ["nft", "-j", "list", "counters", "table", "inet", WATCH_TABLE],
                 timeout=15, check=True)
    counts: dict[str, int] = {}
    for item in json.loads(res.stdout)["nftables"]:
        if "counter" in item:
            counts[item["counter"]["name"]] = int(item["counter"]["packets"])
    return counts


def delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


# --- small facts about the lab ------------------------------------------------

def link_info(lab: Lab, role: str, dev: str) -> dict[str, Any]:
    res = lab.exec(role, ["ip", "-j", "addr", "show", "dev", dev], timeout=10, check=True)
    data: list[dict[str, Any]] = json.loads(res.stdout)
    return data[0]


def link_local(lab: Lab, role: str, dev: str) -> str:
    info = link_info(lab, role, dev)
    return next(a["local"] for a in info["addr_info"]
                if a["family"] == "inet6" and a["scope"] == "link")


UDHCPC_PRINT_ENV = """#!/bin/sh
# prints what the DHCP server sent; configures nothing
[ "$1" = bound ] && env | grep -E '^(ip|router|dns|subnet|mask|opt[0-9]+)='
exit 0
"""


def dhcp_options(lab: Lab, role: str, workdir: Path, *extra_opts: str) -> dict[str, str]:
    """One DHCP exchange with busybox udhcpc from ``role``; its environment on "bound"."""
    script = workdir / "udhcpc-print.sh"
    script.write_text(UDHCPC_PRINT_ENV)
    script.chmod(0o755)
    argv = ["busybox", "udhcpc", "-f", "-q", "-n", "-t", "5", "-T", "1", "-i", "eth0",
            "-s", str(script)]
    for opt in extra_opts:
        argv += ["-O", opt]
    res = lab.exec(role, argv, timeout=20)
    assert res.returncode == 0, f"udhcpc failed: {res.stdout}{res.stderr}"
    env = {}
    for line in res.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value
    return env


def curl(lab: Lab, role: str, url: str, *extra: str, timeout: float = 3.0,
         retry: bool = False) -> Http:
    """curl ``url`` from ``role`` (extra arguments go to curl); ``retry`` for a positive
    check (an answer MUST come), as in :func:`tests.integration.conftest.http`."""
    return http(lab.ns(role), url, extra=extra, timeout=timeout, retry=retry)


@pytest.fixture(scope="module")
def gw_mac(lab: Lab) -> str:
    return str(link_info(lab, "gw", p.LAN_INTERFACE)["address"])


def ipv4(lab: Lab, k: int) -> str:
    info = lab.status().client(k)
    assert info.ipv4, f"client c{k} has no IPv4 address"
    return info.ipv4


@pytest.fixture(scope="module")
def login_c3(lab: Lab) -> Http:
    """c3 accepts the terms on the portal, as a villager's browser does."""
    res = curl(lab, "c3", PORTAL + "login", "-d", "action=terms",
               "-d", f"csrf={form_token(lab.ns('c3'), PORTAL.rstrip('/'))}", retry=True)
    ping(lab, "c3", p.LAN_IP)  # settle ARP / bridge learning before the next test
    return res


def _v6_attack_setup(lab: Lab, role: str, k: int) -> None:
    """Give client ``role`` a global IPv6 address and a route to the internet via the
    gateway's link-local address, with a static neighbour entry so not even NDP is needed."""
    ll = link_local(lab, "gw", p.LAN_INTERFACE)
    mac = str(link_info(lab, "gw", p.LAN_INTERFACE)["address"])
    for argv in (
        ["ip", "-6", "addr", "replace", f"{ATTACKER_V6.format(k=k)}/64", "dev", "eth0", "nodad"],
        ["ip", "-6", "neigh", "replace", ll, "lladdr", mac, "dev", "eth0", "nud", "permanent"],
        ["ip", "-6", "route", "replace", "2001:db8:100::/64", "via", ll, "dev", "eth0"],
    ):
        lab.exec(role, argv, timeout=10, check=True)


def _assert_ipv6_blocked(lab: Lab, role: str) -> None:
    before = wan_counts(lab)
    res = curl(lab, role, f"http://[{p.INTERNET_V6}]/", "-6", "-g", timeout=1.5)
    assert res.status == 0, f"IPv6 HTTP got an answer: {res}"
    assert probe(lab, role, "udp", p.INTERNET_V6, str(p.UDP_ECHO_PORT), "1")["reply"] is None
    assert probe(lab, role, "tcp", p.INTERNET_V6, "443", "1")["result"] != "connected"
    assert not ping(lab, role, p.INTERNET_V6)
    moved = wan_counts(lab)
    assert moved["v6_internet"] == before["v6_internet"], "IPv6 from the LAN reached the WAN"
    assert moved["v6_not_gateway"] == before["v6_not_gateway"], "IPv6 from the LAN reached the WAN"


# 1 -------------------------------------------------------------------------

def test_dhcp_lease_route_resolver_and_captive_option(lab: Lab, tmp_path: Path) -> None:
    ip1 = ipv4(lab, 1)
    assert ip1.startswith("10.42.0.")
    routes = lab.exec("c1", ["ip", "-4", "route", "show", "default"], check=True).stdout
    assert routes.split()[:3] == ["default", "via", p.LAN_IP]
    resolv = lab.exec("c1", ["cat", "/etc/resolv.conf"], check=True).stdout
    assert [ln for ln in resolv.splitlines() if ln.startswith("nameserver")] == [
        f"nameserver {p.LAN_IP}"]
    # Ask again, requesting option 114 (RFC 8910): same lease, plus the API URL.
    env = dhcp_options(lab, "c1", tmp_path, "114")
    assert env["ip"] == ip1
    assert env["router"] == p.LAN_IP and env["dns"] == p.LAN_IP
    assert bytes.fromhex(env["opt114"]).decode() == "http://portal.desa/api/captive"


# 2 -------------------------------------------------------------------------

def test_http_is_redirected_to_the_portal(lab: Lab) -> None:
    res = curl(lab, "c1", "http://internet.lab/", retry=True)
    assert res.status == 302
    assert res.headers["location"] == "http://portal.desa/?url=http%3A%2F%2Finternet.lab%2F"
    assert "internet OK" not in res.body


@pytest.mark.parametrize("url", [url for url, _, _ in CONNCHECKS])
def test_connectivity_checks_see_the_portal(lab: Lab, url: str) -> None:
    res = curl(lab, "c2", url, retry=True)
    assert res.status == 302, res
    assert res.headers["location"].startswith("http://portal.desa/?url=http%3A%2F%2F")


def test_portal_page_and_captive_api(lab: Lab) -> None:
    page = curl(lab, "c1", PORTAL, retry=True)
    assert page.status == 200
    assert 'lang="id"' in page.body
    api = curl(lab, "c1", PORTAL + "api/captive", retry=True)
    assert api.status == 200
    assert api.headers["content-type"].split(";")[0] == "application/captive+json"
    assert '"captive": true' in api.body
    assert '"user-portal-url": "http://portal.desa/"' in api.body


# 3 -------------------------------------------------------------------------

def test_unauthorized_tcp_udp_icmp_do_not_get_out(lab: Lab) -> None:
    before = wan_counts(lab)
    tls = probe(lab, "c1", "tcp", p.INTERNET_V4, str(p.TLS_PORT))
    assert tls["result"] == "refused", tls  # reset at once, not a hang
    echo = probe(lab, "c1", "udp", p.INTERNET_V4, str(p.UDP_ECHO_PORT))
    assert echo["reply"] is None, echo
    assert not ping(lab, "c1", p.INTERNET_V4)
    after = wan_counts(lab)
    for name in ("tcp443_4", "udp_echo4", "icmp4"):
        assert after[name] == before[name], f"{name}: a packet reached the internet"


def test_raw_address_port_80_is_answered_by_the_portal(lab: Lab) -> None:
    res = curl(lab, "c1", f"http://{p.INTERNET_V4}/", retry=True)
    assert res.status == 302
    assert res.headers["location"].startswith("http://portal.desa/?url=")
    assert "internet OK" not in res.body
    assert res.body == ""


def test_ipv6_is_dropped_even_with_a_self_made_address(lab: Lab) -> None:
    _v6_attack_setup(lab, "c1", 1)
    _assert_ipv6_blocked(lab, "c1")


def test_spoofed_mac_or_ip_of_an_online_neighbour(lab: Lab, gw_mac: str,
                                                  login_c3: Http) -> None:
    assert login_c3.status == 303
    c1_mac, c3_mac = p.client_mac(1), p.client_mac(3)
    ip1, ip3 = ipv4(lab, 1), ipv4(lab, 3)
    # The authorized neighbour gets its echo, and the WAN counter sees it: the
    # probe and the counter work.
    before = wan_counts(lab)
    assert probe_until(lab, "c3", lambda r: r["reply"], "udp", p.INTERNET_V4,
                       str(p.UDP_ECHO_PORT))["reply"]
    assert wan_counts(lab)["udp_echo4"] > before["udp_echo4"]  # (one count per try)
    frames = [(c3_mac, ip1, 40001),  # the neighbour's MAC with my own address
              (c1_mac, ip3, 40002)]  # my own MAC with the neighbour's address
    try:
        before = wan_counts(lab)
        replies = spoofed_udp(lab, "c1", dst_mac=gw_mac, dst_ip=p.INTERNET_V4,
                                dport=p.UDP_ECHO_PORT, frames=frames)
        assert replies == [], f"spoofed frames got answers (port, payload): {replies}"
        after = wan_counts(lab)
        assert after["udp_echo4"] == before["udp_echo4"], "a spoofed frame reached the internet"
    finally:
        # The bridge learnt c3's MAC on c1's port; c3 speaking again fixes that.
        ping(lab, "c3", p.LAN_IP)


# 4 -------------------------------------------------------------------------

def answered(res: dict[str, Any]) -> bool:
    """A DNS probe got an answer (no timeout or socket error)."""
    return "error" not in res


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dns_to_an_outside_resolver_is_answered_by_the_gateway(lab: Lab, transport: str) -> None:
    before = wan_counts(lab)
    ans = probe_until(lab, "c1", answered, "dns", p.OUTSIDE_RESOLVER, p.INTERNET_HOST, transport)
    # the outside resolver would say .99; before login the gateway's pre-login
    # resolver answers outside names with the gateway (tests/integration/test_hostile_dns.py)
    assert ans.get("a") == [p.LAN_IP], ans
    outside = probe_until(lab, "c1", answered, "dns", p.OUTSIDE_RESOLVER, p.OUTSIDE_HOST,
                          transport)
    assert outside.get("a") == [p.LAN_IP], outside  # the outside resolver would say .10
    after = wan_counts(lab)
    assert after["outside_resolver"] == before["outside_resolver"]


def test_busybox_nslookup_outside_resolver(lab: Lab) -> None:
    res = lab.exec("c2", ["busybox", "nslookup", "-type=a", p.INTERNET_HOST, p.OUTSIDE_RESOLVER],
                   timeout=15)
    assert f"Address: {p.LAN_IP}" in res.stdout  # the pre-login resolver's answer
    assert f"Address: {p.OUTSIDE_RESOLVER}\n" not in res.stdout.split("Name:", 1)[-1]


def test_dns_over_tls_is_refused(lab: Lab) -> None:
    before = wan_counts(lab)
    res = probe(lab, "c1", "tcp", p.OUTSIDE_RESOLVER, "853")
    assert res["result"] in ("refused", "timeout"), res
    assert wan_counts(lab)["outside_resolver"] == before["outside_resolver"]


# 5 -------------------------------------------------------------------------

def test_walled_garden_hostname_before_login(lab: Lab) -> None:
    res = curl(lab, "c2", f"http://{p.GOVERNMENT_HOST}/", retry=True)
    assert res.status == 200, res
    assert "Layanan pemerintah (lab)" in res.body
    nft = lab.exec("gw", ["nft", "list", "set", "inet", "desanet", "garden_dns4"], check=True)
    assert p.GOVERNMENT_V4 in nft.stdout
    # ... and only the garden: the internet host next to it is still closed.
    assert curl(lab, "c2", "http://internet.lab/", retry=True).status == 302


# 6 -------------------------------------------------------------------------

def test_after_login_the_internet_works(lab: Lab, login_c3: Http) -> None:
    assert login_c3.status == 303, login_c3
    res = curl(lab, "c3", "http://internet.lab/", retry=True)
    assert (res.status, res.body) == (200, "desanet-lab internet OK\n")
    echo = probe_until(lab, "c3", lambda r: r["reply"], "udp", p.INTERNET_V4,
                       str(p.UDP_ECHO_PORT), "3")
    assert echo["reply"] == "echo:bypass" and echo["from"] == p.INTERNET_V4, echo
    assert ping(lab, "c3", p.INTERNET_V4, retry=True)
    tls = probe_until(lab, "c3", lambda r: r.get("greeting"), "tcp", p.INTERNET_V4,
                      str(p.TLS_PORT), "3", "3")
    assert tls.get("greeting", "").strip() == "tls-lab", tls
    api = curl(lab, "c3", PORTAL + "api/captive", retry=True)
    assert '"captive": false' in api.body


@pytest.mark.parametrize(("url", "status", "text"), CONNCHECKS)
def test_after_login_connectivity_checks_pass(lab: Lab, login_c3: Http, url: str,
                                              status: int, text: str) -> None:
    res = curl(lab, "c3", url, retry=True)
    assert res.status == status, res
    assert text in res.body


def test_after_login_ipv6_is_still_dropped(lab: Lab, login_c3: Http) -> None:
    _v6_attack_setup(lab, "c3", 3)
    _assert_ipv6_blocked(lab, "c3")


def test_login_of_one_client_does_not_open_its_neighbours(lab: Lab,
                                                          login_c3: Http) -> None:
    assert curl(lab, "c1", "http://internet.lab/", retry=True).status == 302
    assert probe(lab, "c1", "udp", p.INTERNET_V4, str(p.UDP_ECHO_PORT))["reply"] is None


# 7 -------------------------------------------------------------------------

def test_clients_cannot_reach_each_other(lab: Lab) -> None:
    assert ping(lab, "c1", p.LAN_IP, retry=True) and ping(lab, "c2", p.LAN_IP, retry=True)
    assert not ping(lab, "c1", ipv4(lab, 2))
    assert not ping(lab, "c2", ipv4(lab, 1))


def test_isolation_holds_when_routing_through_the_gateway(lab: Lab,
                                                          login_c3: Http) -> None:
    """Even an authorized client that sends to a neighbour via the gateway
    (a /32 route) must not reach it: the gateway must not hairpin LAN to LAN."""
    ip2 = ipv4(lab, 2)
    lab.exec("c3", ["ip", "route", "replace", f"{ip2}/32", "via", p.LAN_IP], check=True)
    try:
        assert not ping(lab, "c3", ip2)
        res = _udp_to_neighbour(lab, sender="c3", receiver="c2", receiver_ip=ip2)
        assert res == "", f"c2 received {res!r} from c3 through the gateway"
    finally:
        lab.exec("c3", ["ip", "route", "del", f"{ip2}/32"])


def _udp_to_neighbour(lab: Lab, sender: str, receiver: str, receiver_ip: str) -> str:
    """UDP from ``sender`` to ``receiver_ip``; what a listener in ``receiver`` got."""
    listen = ("import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
              "s.bind(('0.0.0.0',7777));s.settimeout(2.5);print('ready',flush=True)\n"
              "try:\n print(s.recvfrom(100)[0].decode())\nexcept OSError:\n print('')")
    proc = subprocess.Popen(["ip", "netns", "exec", lab.ns(receiver), sys.executable, "-c",
                             listen], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        send = ("import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                f"[s.sendto(b'hello-neighbour',('{receiver_ip}',7777)) for _ in range(3)]")
        lab.exec(sender, [sys.executable, "-c", send], timeout=10)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    return out.strip()


# 8 -------------------------------------------------------------------------

@pytest.mark.parametrize("port", [22, 2049, 5000, 54321])
def test_gateway_accepts_only_dns_dhcp_and_portal_from_the_lan(lab: Lab, port: int) -> None:
    res = probe(lab, "c1", "tcp", p.LAN_IP, str(port))
    assert res["result"] == "refused", res


def test_portal_ports_are_open_on_the_gateway(lab: Lab) -> None:
    for port in (80, 2050):
        res = probe_until(lab, "c1", lambda r: r["result"] == "connected", "tcp", p.LAN_IP,
                          str(port))
        assert res["result"] == "connected", res


def test_control_socket_is_a_root_only_unix_socket(lab: Lab) -> None:
    path = Path(lab.status().control_socket)
    st = path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (0, 0)
    # Nothing of the daemon listens on TCP except the portal and dnsmasq's DNS.
    ss = lab.exec("gw", ["ss", "-Hltn"], check=True).stdout
    ports = {line.split()[3].rsplit(":", 1)[1] for line in ss.splitlines() if line.strip()}
    assert ports <= {"53", "5053", "80", "2050"}, ports  # 5053: the pre-login resolver
