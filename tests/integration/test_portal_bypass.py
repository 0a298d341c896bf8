"""Can a villager get past the captive portal without logging in?

Every test runs real traffic from client namespaces of one virtual village
(the real daemon, dnsmasq and nftables in the gateway namespace) and asserts
what the client sees; where "no answer" could also mean "the packet got out
but the answer was lost", named nftables counters in the WAN namespace
prove that nothing reached the lab's internet at all.

c1 and c2 stay unauthorized for the whole module; c3 logs in (terms).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from desanet_lab import Lab, LabSpec
from desanet_lab import plan as p
from tests.integration import _bypass_helpers as h

pytestmark = pytest.mark.integration

if os.geteuid() != 0:
    pytest.skip("portal bypass tests need root (network namespaces, nftables)",
                allow_module_level=True)
_missing = h.missing_tools(["ip", "nft", "busybox", "curl", "ping"])
if not Path("/usr/sbin/dnsmasq").exists():
    _missing.append("/usr/sbin/dnsmasq")
if _missing:
    pytest.skip(f"portal bypass tests need {', '.join(_missing)}", allow_module_level=True)

PREFIX = f"bp{os.getpid() % 1000}"
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
def lab() -> Iterator[Lab]:
    lab = Lab(LabSpec(prefix=PREFIX, clients=3))
    try:
        lab.up()
        h.install_wan_watch(lab)
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def gw_mac(lab: Lab) -> str:
    return str(h.link_info(lab, "gw", p.LAN_INTERFACE)["address"])


def ipv4(lab: Lab, k: int) -> str:
    info = lab.status().client(k)
    assert info.ipv4, f"client c{k} has no IPv4 address"
    return info.ipv4


@pytest.fixture(scope="module")
def login_c3(lab: Lab) -> dict[str, Any]:
    """c3 accepts the terms on the portal, as a villager's browser does."""
    res = h.curl(lab, "c3", PORTAL + "login", "-d", "action=terms")
    h.ping(lab, "c3", p.LAN_IP)  # settle ARP / bridge learning before the next test
    return res


def _v6_attack_setup(lab: Lab, role: str, k: int) -> None:
    """Give client ``role`` a global IPv6 address and a route to the internet via the
    gateway's link-local address, with a static neighbour entry so not even NDP is needed."""
    ll = h.link_local(lab, "gw", p.LAN_INTERFACE)
    mac = str(h.link_info(lab, "gw", p.LAN_INTERFACE)["address"])
    for argv in (
        ["ip", "-6", "addr", "replace", f"{ATTACKER_V6.format(k=k)}/64", "dev", "eth0", "nodad"],
        ["ip", "-6", "neigh", "replace", ll, "lladdr", mac, "dev", "eth0", "nud", "permanent"],
        ["ip", "-6", "route", "replace", "2001:db8:100::/64", "via", ll, "dev", "eth0"],
    ):
        lab.exec(role, argv, timeout=10, check=True)


def _assert_ipv6_blocked(lab: Lab, role: str) -> None:
    before = h.wan_counts(lab)
    res = h.curl(lab, role, f"http://[{p.INTERNET_V6}]/", "-6", "-g", timeout=1.5)
    assert res["status"] == 0, f"IPv6 HTTP got an answer: {res}"
    assert h.probe(lab, role, "udp", p.INTERNET_V6, str(p.UDP_ECHO_PORT), "1")["reply"] is None
    assert h.probe(lab, role, "tcp", p.INTERNET_V6, "443", "1")["result"] != "connected"
    assert not h.ping(lab, role, p.INTERNET_V6)
    moved = h.wan_counts(lab)
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
    env = h.dhcp_options(lab, "c1", tmp_path, "114")
    assert env["ip"] == ip1
    assert env["router"] == p.LAN_IP and env["dns"] == p.LAN_IP
    assert bytes.fromhex(env["opt114"]).decode() == "http://portal.desa/api/captive"


# 2 -------------------------------------------------------------------------

def test_http_is_redirected_to_the_portal(lab: Lab) -> None:
    res = h.curl(lab, "c1", "http://internet.lab/")
    assert res["status"] == 302
    assert res["headers"]["location"] == "http://portal.desa/?url=http%3A%2F%2Finternet.lab%2F"
    assert "internet OK" not in res["body"]


@pytest.mark.parametrize("url", [url for url, _, _ in CONNCHECKS])
def test_connectivity_checks_see_the_portal(lab: Lab, url: str) -> None:
    res = h.curl(lab, "c2", url)
    assert res["status"] == 302, res
    assert res["headers"]["location"].startswith("http://portal.desa/?url=http%3A%2F%2F")


def test_portal_page_and_captive_api(lab: Lab) -> None:
    page = h.curl(lab, "c1", PORTAL)
    assert page["status"] == 200
    assert 'lang="id"' in page["body"]
    api = h.curl(lab, "c1", PORTAL + "api/captive")
    assert api["status"] == 200
    assert api["headers"]["content-type"].split(";")[0] == "application/captive+json"
    assert '"captive": true' in api["body"]
    assert '"user-portal-url": "http://portal.desa/"' in api["body"]


# 3 -------------------------------------------------------------------------

def test_unauthorized_tcp_udp_icmp_do_not_get_out(lab: Lab) -> None:
    before = h.wan_counts(lab)
    tls = h.probe(lab, "c1", "tcp", p.INTERNET_V4, str(p.TLS_PORT))
    assert tls["result"] == "refused", tls  # reset at once, not a hang
    echo = h.probe(lab, "c1", "udp", p.INTERNET_V4, str(p.UDP_ECHO_PORT))
    assert echo["reply"] is None, echo
    assert not h.ping(lab, "c1", p.INTERNET_V4)
    after = h.wan_counts(lab)
    for name in ("tcp443_4", "udp_echo4", "icmp4"):
        assert after[name] == before[name], f"{name}: a packet reached the internet"


def test_raw_address_port_80_is_answered_by_the_portal(lab: Lab) -> None:
    res = h.curl(lab, "c1", f"http://{p.INTERNET_V4}/")
    assert res["status"] == 302
    assert res["headers"]["location"].startswith("http://portal.desa/?url=")
    assert "internet OK" not in res["body"]
    assert res["body"] == ""


def test_ipv6_is_dropped_even_with_a_self_made_address(lab: Lab) -> None:
    _v6_attack_setup(lab, "c1", 1)
    _assert_ipv6_blocked(lab, "c1")


def test_spoofed_mac_or_ip_of_an_online_neighbour(lab: Lab, gw_mac: str,
                                                  login_c3: dict[str, Any]) -> None:
    assert login_c3["status"] == 303
    c1_mac, c3_mac = p.client_mac(1), p.client_mac(3)
    ip1, ip3 = ipv4(lab, 1), ipv4(lab, 3)
    # The authorized neighbour gets its echo, and the WAN counter sees it: the
    # probe and the counter work.
    before = h.wan_counts(lab)
    assert h.probe(lab, "c3", "udp", p.INTERNET_V4, str(p.UDP_ECHO_PORT))["reply"]
    assert h.wan_counts(lab)["udp_echo4"] == before["udp_echo4"] + 1
    frames = [(c3_mac, ip1, 40001),  # the neighbour's MAC with my own address
              (c1_mac, ip3, 40002)]  # my own MAC with the neighbour's address
    try:
        before = h.wan_counts(lab)
        replies = h.spoofed_udp(lab, "c1", dst_mac=gw_mac, dst_ip=p.INTERNET_V4,
                                dport=p.UDP_ECHO_PORT, frames=frames)
        assert replies == [], f"spoofed frames got answers (port, payload): {replies}"
        after = h.wan_counts(lab)
        assert after["udp_echo4"] == before["udp_echo4"], "a spoofed frame reached the internet"
    finally:
        # The bridge learnt c3's MAC on c1's port; c3 speaking again fixes that.
        h.ping(lab, "c3", p.LAN_IP)


# 4 -------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dns_to_an_outside_resolver_is_answered_by_the_gateway(lab: Lab, transport: str) -> None:
    before = h.wan_counts(lab)
    ans = h.probe(lab, "c1", "dns", p.OUTSIDE_RESOLVER, p.INTERNET_HOST, transport)
    assert ans.get("a") == [p.INTERNET_V4], ans  # the outside resolver would say .99
    outside = h.probe(lab, "c1", "dns", p.OUTSIDE_RESOLVER, p.OUTSIDE_HOST, transport)
    assert outside.get("rcode") == 3 and outside["a"] == [], outside  # NXDOMAIN
    after = h.wan_counts(lab)
    assert after["outside_resolver"] == before["outside_resolver"]


def test_busybox_nslookup_outside_resolver(lab: Lab) -> None:
    res = lab.exec("c2", ["busybox", "nslookup", "-type=a", p.INTERNET_HOST, p.OUTSIDE_RESOLVER],
                   timeout=15)
    assert f"Address: {p.INTERNET_V4}" in res.stdout
    assert f"Address: {p.OUTSIDE_RESOLVER}\n" not in res.stdout.split("Name:", 1)[-1]


def test_dns_over_tls_is_refused(lab: Lab) -> None:
    before = h.wan_counts(lab)
    res = h.probe(lab, "c1", "tcp", p.OUTSIDE_RESOLVER, "853")
    assert res["result"] in ("refused", "timeout"), res
    assert h.wan_counts(lab)["outside_resolver"] == before["outside_resolver"]


# 5 -------------------------------------------------------------------------

def test_walled_garden_hostname_before_login(lab: Lab) -> None:
    res = h.curl(lab, "c2", f"http://{p.GOVERNMENT_HOST}/")
    assert res["status"] == 200, res
    assert "Layanan pemerintah (lab)" in res["body"]
    nft = lab.exec("gw", ["nft", "list", "set", "inet", "desanet", "garden_dns4"], check=True)
    assert p.GOVERNMENT_V4 in nft.stdout
    # ... and only the garden: the internet host next to it is still closed.
    assert h.curl(lab, "c2", "http://internet.lab/")["status"] == 302


# 6 -------------------------------------------------------------------------

def test_after_login_the_internet_works(lab: Lab, login_c3: dict[str, Any]) -> None:
    assert login_c3["status"] == 303, login_c3
    res = h.curl(lab, "c3", "http://internet.lab/")
    assert (res["status"], res["body"]) == (200, "desanet-lab internet OK\n")
    echo = h.probe(lab, "c3", "udp", p.INTERNET_V4, str(p.UDP_ECHO_PORT))
    assert echo["reply"] == "echo:bypass" and echo["from"] == p.INTERNET_V4
    assert h.ping(lab, "c3", p.INTERNET_V4)
    assert h.probe(lab, "c3", "tcp", p.INTERNET_V4, str(p.TLS_PORT))["greeting"].strip() == "tls-lab"
    api = h.curl(lab, "c3", PORTAL + "api/captive")
    assert '"captive": false' in api["body"]


@pytest.mark.parametrize(("url", "status", "text"), CONNCHECKS)
def test_after_login_connectivity_checks_pass(lab: Lab, login_c3: dict[str, Any], url: str,
                                              status: int, text: str) -> None:
    res = h.curl(lab, "c3", url)
    assert res["status"] == status, res
    assert text in res["body"]


def test_after_login_ipv6_is_still_dropped(lab: Lab, login_c3: dict[str, Any]) -> None:
    _v6_attack_setup(lab, "c3", 3)
    _assert_ipv6_blocked(lab, "c3")


def test_login_of_one_client_does_not_open_its_neighbours(lab: Lab,
                                                          login_c3: dict[str, Any]) -> None:
    assert h.curl(lab, "c1", "http://internet.lab/")["status"] == 302
    assert h.probe(lab, "c1", "udp", p.INTERNET_V4, str(p.UDP_ECHO_PORT))["reply"] is None


# 7 -------------------------------------------------------------------------

def test_clients_cannot_reach_each_other(lab: Lab) -> None:
    assert h.ping(lab, "c1", p.LAN_IP) and h.ping(lab, "c2", p.LAN_IP)
    assert not h.ping(lab, "c1", ipv4(lab, 2))
    assert not h.ping(lab, "c2", ipv4(lab, 1))


def test_isolation_holds_when_routing_through_the_gateway(lab: Lab,
                                                          login_c3: dict[str, Any]) -> None:
    """Even an authorized client that sends to a neighbour via the gateway
    (a /32 route) must not reach it: the gateway must not hairpin LAN to LAN."""
    ip2 = ipv4(lab, 2)
    lab.exec("c3", ["ip", "route", "replace", f"{ip2}/32", "via", p.LAN_IP], check=True)
    try:
        assert not h.ping(lab, "c3", ip2)
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
    res = h.probe(lab, "c1", "tcp", p.LAN_IP, str(port))
    assert res["result"] == "refused", res


def test_portal_ports_are_open_on_the_gateway(lab: Lab) -> None:
    for port in (80, 2050):
        assert h.probe(lab, "c1", "tcp", p.LAN_IP, str(port))["result"] == "connected"


def test_control_socket_is_a_root_only_unix_socket(lab: Lab) -> None:
    path = Path(lab.status().control_socket)
    st = path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (0, 0)
    # Nothing of the daemon listens on TCP except the portal and dnsmasq's DNS.
    ss = lab.exec("gw", ["ss", "-Hltn"], check=True).stdout
    ports = {line.split()[3].rsplit(":", 1)[1] for line in ss.splitlines() if line.strip()}
    assert ports <= {"53", "80", "2050"}, ports
