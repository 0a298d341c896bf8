"""The virtual village without the gateway daemon: topology, WAN services,
DHCP hook, and a teardown that leaves nothing behind (root, netns)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from desanet_lab import LabInfo, LabSpec, client_ns, lab_dhcp, lab_down, lab_status, lab_up, run_in
from desanet_lab import netns as nsa
from desanet_lab import plan as p
from gateway.errors import LabError
from tests.integration.conftest import (
    LabFactory,
    require_root,
    require_tools,
    retried,
    unique_prefix,
)

pytestmark = [pytest.mark.integration, require_root,
              require_tools("ip", "busybox", "curl", "/usr/sbin/dnsmasq")]

PREFIX = unique_prefix("tl")
LEFTOVER_PREFIX = unique_prefix("tm")


def _pids(prefix: str) -> list[int]:
    return [pid for ns in nsa.list_namespaces() if p.owns_namespace(prefix, ns)
            for pid in nsa.namespace_pids(ns)]


def assert_gone(prefix: str, pids: list[int]) -> None:
    assert not [ns for ns in nsa.list_namespaces() if p.owns_namespace(prefix, ns)]
    etc = p.NETNS_ETC
    assert not (etc.is_dir() and [d for d in etc.iterdir() if p.owns_namespace(prefix, d.name)])
    assert not p.state_dir(prefix).exists()
    assert pids, "the lab should have had processes to stop"
    assert not [pid for pid in pids if nsa.pid_alive(pid)]


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    return make_lab(LabSpec(prefix=PREFIX, clients=2, start_gateway=False))


def _ip_json(ns: str, *args: str) -> list[dict[str, object]]:
    out = nsa.ip("-n", ns, "-j", *args)
    data: list[dict[str, object]] = json.loads(out)
    return data


def test_namespaces_and_addresses(lab: LabInfo) -> None:
    names = set(nsa.list_namespaces())
    assert {f"{PREFIX}-wan", f"{PREFIX}-gw", f"{PREFIX}-c1", f"{PREFIX}-c2"} <= names
    assert "100.64.0.2/30" in lab.gw_addresses
    assert "2001:db8:64::2/64" in lab.gw_addresses
    assert "10.42.0.1/24" in lab.gw_addresses
    assert "100.64.0.1/30" in lab.wan_addresses
    for addr in ("198.51.100.53/32", "198.51.100.10/32", "198.51.100.20/32",
                 "198.51.100.30/32", "198.51.100.99/32", "2001:db8:100::10/128"):
        assert addr in lab.wan_addresses
    assert [(c.name, c.mac, c.ipv4) for c in lab.clients] == [
        (client_ns(PREFIX, 1), "02:d5:00:00:00:01", None),
        (client_ns(PREFIX, 2), "02:d5:00:00:00:02", None),
    ]
    links = {link["ifname"]: link for link in _ip_json(lab.gw, "link", "show")}
    for k in (1, 2):
        assert links[f"lan-c{k}"].get("master") == "br-lan"
        assert "UP" in str(links[f"lan-c{k}"]["flags"])
        eth0 = _ip_json(client_ns(PREFIX, k), "link", "show", "dev", "eth0")[0]
        assert eth0["address"] == p.client_mac(k)
        assert "UP" in str(eth0["flags"])
    routes = _ip_json(lab.gw, "route", "show", "default")
    assert routes and routes[0]["gateway"] == "100.64.0.1"
    # No route back to the LAN in the WAN: only the gateway's NAT can work.
    back = nsa.ip("-n", lab.wan, "route", "get", "10.42.0.100", check=False)
    assert back == ""  # "Network is unreachable"
    fwd = run_in(lab.gw, ["sysctl", "-n", "net.ipv4.ip_forward",
                          "net.ipv6.conf.all.forwarding"], check=True)
    assert fwd.stdout.split() == ["1", "1"]


def test_origin_answers_from_gateway(lab: LabInfo) -> None:
    res = run_in(lab.gw, ["curl", "-sS", "-m", "5", "-H", "Host: internet.lab",
                          "http://198.51.100.10/"], timeout=10, check=True)
    assert res.stdout == "desanet-lab internet OK\n"
    res = run_in(lab.gw, ["curl", "-sS", "-m", "5", "-g", "http://[2001:db8:100::10]/any"],
                 timeout=10, check=True)
    assert "internet OK" in res.stdout
    res = run_in(lab.gw, ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                          "http://connectivitycheck.gstatic.com/generate_204"], timeout=10)
    assert res.stdout == "204"  # name resolved through the gateway's resolv.conf
    res = run_in(lab.gw, ["curl", "-sSi", "-m", "5", "http://layanan.lab/"], timeout=10)
    assert "Layanan pemerintah (lab)" in res.stdout
    assert "Cache-Control: max-age=60" in res.stdout and "ETag:" in res.stdout
    res = run_in(lab.gw, ["curl", "-sS", "-m", "5", "http://captive.apple.com/hotspot-detect.html"])
    assert "<TITLE>Success</TITLE>" in res.stdout


def _lookup(ns: str, name: str, server: str) -> str:
    return run_in(ns, ["busybox", "nslookup", "-type=a", name, server], timeout=10).stdout


def test_resolvers_answer_from_gateway(lab: LabInfo) -> None:
    assert "Address: 198.51.100.10" in _lookup(lab.gw, "internet.lab", p.ISP_RESOLVER)
    assert "Address: 198.51.100.20" in _lookup(lab.gw, "layanan.lab", p.ISP_RESOLVER)
    assert "Address: 198.51.100.30" in _lookup(lab.gw, "captive.apple.com", p.ISP_RESOLVER)
    assert "NXDOMAIN" in _lookup(lab.gw, "nosuch.example", p.ISP_RESOLVER)
    assert "NXDOMAIN" in _lookup(lab.gw, "outside.lab", p.ISP_RESOLVER)
    # The outside resolver gives a distinct answer for internet.lab.
    assert "Address: 198.51.100.99" in _lookup(lab.gw, "internet.lab", p.OUTSIDE_RESOLVER)
    assert "Address: 198.51.100.10" in _lookup(lab.gw, "outside.lab", p.OUTSIDE_RESOLVER)


_ECHO = """
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
u = socket.socket(fam, socket.SOCK_DGRAM); u.settimeout(3)
u.sendto(b"ping", (sys.argv[1], 9999)); data, src = u.recvfrom(100)
t = socket.create_connection((sys.argv[1], 443), timeout=3)
print(data.decode(), src[0], t.recv(100).decode().strip())
"""


@pytest.mark.parametrize("addr", ["198.51.100.10", "2001:db8:100::10"])
def test_udp_echo_and_tls_listener(lab: LabInfo, addr: str) -> None:
    want = ["echo:ping", addr, "tls-lab"]
    res = retried(lambda: run_in(lab.gw, [sys.executable, "-c", _ECHO, addr], timeout=15),
                  lambda r: r.stdout.split() == want)  # a positive check: tried again
    assert res.stdout.split() == want, res.stderr


def test_status_json_shape(lab: LabInfo) -> None:
    data = lab_status(PREFIX).to_json()
    assert data["prefix"] == PREFIX and data["present"]
    assert data["namespaces"]["wan"]["name"] == f"{PREFIX}-wan"
    assert data["namespaces"]["gw"]["name"] == f"{PREFIX}-gw"
    assert [c["name"] for c in data["namespaces"]["clients"]] == [f"{PREFIX}-c1", f"{PREFIX}-c2"]
    assert data["gateway_lan_ip"] == "10.42.0.1"
    assert data["portal_url"] == "http://portal.desa/"
    assert data["portal_ip_url"] == "http://10.42.0.1/"
    assert data["control_socket"] == f"/run/desanet-lab/{PREFIX}/control.sock"
    assert data["hosts"]["internet"] == "internet.lab"
    assert data["hosts"]["government"] == "layanan.lab"
    assert data["gateway"]["running"] is False
    assert any("curl" in cmd for cmd in data["try"])
    json.dumps(data)


def test_dhcp_hook_with_a_plain_dnsmasq(lab: LabInfo) -> None:
    """The udhcpc hook sets address, route and the namespace's resolv.conf."""
    sd = p.state_dir(PREFIX)
    proc = nsa.spawn(PREFIX, lab.gw, [
        "/usr/sbin/dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
        "--no-hosts", "--bind-interfaces", "--interface=br-lan", "--port=0", "--no-ping",
        "--dhcp-range=10.42.0.100,10.42.0.199,1h", "--dhcp-option=6,10.42.0.1",
        f"--dhcp-leasefile={sd}/run/test.leases", "--log-facility=-",
    ], sd / "logs" / "test-dhcp.log")
    try:
        leases = lab_dhcp(PREFIX)
    finally:
        nsa.stop_pids([proc.pid])
        proc.wait(timeout=5)
    ips = [leases[client_ns(PREFIX, k)] for k in (1, 2)]
    assert all(ip.startswith("10.42.0.") for ip in ips) and len(set(ips)) == 2
    c1 = client_ns(PREFIX, 1)
    assert (p.NETNS_ETC / c1 / "resolv.conf").read_text().splitlines()[-1] == (
        "nameserver 10.42.0.1")
    assert "nameserver 10.42.0.1" in run_in(c1, ["cat", "/etc/resolv.conf"]).stdout
    assert _ip_json(c1, "route", "show", "default")[0]["gateway"] == "10.42.0.1"
    assert lab_status(PREFIX).client(1).ipv4 == leases[c1]
    # Across the bridge, client to gateway (a positive check: tried again).
    ping = retried(lambda: run_in(c1, ["busybox", "ping", "-c1", "-W2", "10.42.0.1"], timeout=10),
                   lambda r: r.returncode == 0)
    assert ping.returncode == 0, ping.stdout


def test_down_leaves_nothing(lab: LabInfo) -> None:
    pids = _pids(PREFIX)
    lab_down(PREFIX)
    assert_gone(PREFIX, pids)
    lab_down(PREFIX)  # idempotent


def test_leftover_lab_is_replaced() -> None:
    # A crash left a namespace with a process in it, and a stale /etc/netns dir.
    gw = f"{LEFTOVER_PREFIX}-gw"
    nsa.ip("netns", "add", gw)
    stale = p.NETNS_ETC / f"{LEFTOVER_PREFIX}-c7"
    stale.mkdir(parents=True, exist_ok=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", gw, "sleep", "300"],
                               start_new_session=True)
    try:
        info = lab_up(LabSpec(prefix=LEFTOVER_PREFIX, clients=1, start_gateway=False))
        assert sleeper.wait(timeout=10) is not None
        assert not stale.exists()
        assert "10.42.0.1/24" in info.gw_addresses
        res = run_in(info.gw, ["curl", "-sS", "-m", "5", "http://internet.lab/"], timeout=10)
        assert "internet OK" in res.stdout
        pids = _pids(LEFTOVER_PREFIX)
    finally:
        lab_down(LEFTOVER_PREFIX)
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait(timeout=5)
    assert_gone(LEFTOVER_PREFIX, pids)


def test_bad_spec_changes_nothing() -> None:
    before = nsa.list_namespaces()
    with pytest.raises(LabError, match=r"portal\.idle_timeout"):
        lab_up(LabSpec(prefix=LEFTOVER_PREFIX, idle_timeout="later", start_gateway=False))
    assert nsa.list_namespaces() == before
    assert not p.state_dir(LEFTOVER_PREFIX).exists()

