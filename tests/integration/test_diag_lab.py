"""`desanet diag` in the virtual village: what a technician's diagnostics see on a real LAN.

The diagnostics run as the technician runs them on a box: `desanet diag --json` inside
the gateway's namespace, reading the lab's config file. Each fault is made real (a second
DHCP server on a villager's device, an nftables drop in the WAN) and each test has its
positive control: the same check, without the fault, finds nothing wrong.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from desanet_lab import LabInfo, LabSpec, services
from desanet_lab import netns as nsa
from desanet_lab import plan as p
from gateway.diag import CHECKS
from tests.integration.conftest import (
    LAB_TOOLS,
    LabFactory,
    desanet_argv,
    ensure_gateway,
    in_namespace,
    require_root,
    require_tools,
    stop_gateway,
    unique_prefix,
    wait_exit,
    wait_until,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS, "ss")]

PREFIX = unique_prefix("dg")
BLOCK = "diagblock"  # the nftables table of this module's faults in the WAN
CHECK_NAMES = tuple(CHECKS)
ROGUE_RANGE = ("10.42.0.50", "10.42.0.60")  # the rogue server offers from outside the gateway's


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    return make_lab(LabSpec(prefix=PREFIX, clients=2))


def diag(lab: LabInfo, *checks: str, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    """`desanet diag --json CHECKS` in the gateway's namespace: (exit status, name -> result)."""
    proc = subprocess.run(
        [nsa.IP, "netns", "exec", lab.gw, *desanet_argv(), "diag", "--config", lab.config_path,
         "--json", "--timeout", str(timeout), *checks],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode in (0, 1), f"desanet diag exited {proc.returncode}: {proc.stderr}"
    results = json.loads(proc.stdout)
    assert [r["name"] for r in results] == list(checks)
    return proc.returncode, {r["name"]: r for r in results}


def listening_dhcp(ns: str) -> bool:
    return bool(in_namespace(ns, "ss", "-Hlun", "sport = :67").strip())


@pytest.fixture
def rogue_dhcp(lab: LabInfo, tmp_path: Path) -> Iterator[str]:
    """A second DHCP server (dnsmasq) on villager c2's device; its MAC."""
    ns = lab.client(2).name
    proc = subprocess.Popen(
        [nsa.IP, "netns", "exec", ns, services.DNSMASQ, "--keep-in-foreground",
         "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--port=0", "--user=root",
         f"--interface={p.CLIENT_INTERFACE}", "--bind-interfaces", "--no-ping",
         f"--dhcp-range={ROGUE_RANGE[0]},{ROGUE_RANGE[1]},255.255.255.0,2m",
         f"--dhcp-leasefile={tmp_path / 'rogue.leases'}", f"--pid-file={tmp_path / 'rogue.pid'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: proc.poll() is not None or listening_dhcp(ns), 10,
                   "the rogue dnsmasq to listen on port 67")
        assert proc.poll() is None, f"rogue dnsmasq exited: {proc.stderr.read() if proc.stderr else ''}"
        yield p.client_mac(2)
    finally:
        proc.terminate()
        wait_exit(proc.pid, 10)


def test_lan_devices_and_no_rogue_dhcp_on_a_clean_lan(lab: LabInfo) -> None:
    """Positive control: the clients answer the ARP scan; only the gateway serves DHCP."""
    rc, res = diag(lab, "arp-scan", "rogue-dhcp")
    devices = {d["ip"]: d for d in res["arp-scan"]["details"]["devices"]}
    for k in (1, 2):
        c = lab.client(k)
        assert c.ipv4 in devices, res["arp-scan"]
        assert devices[c.ipv4]["mac"] == p.client_mac(k)
        assert devices[c.ipv4]["vendor"] == "random"  # 02:...: a locally administered MAC
    assert res["arp-scan"]["status"] == "ok"
    assert res["rogue-dhcp"]["status"] == "ok", res["rogue-dhcp"]
    assert "dnsmasq" in res["rogue-dhcp"]["details"]["own_server"]
    assert not any(s["rogue"] for s in res["rogue-dhcp"]["details"]["servers"])
    assert rc == 0


def test_second_dhcp_server_on_the_lan_is_reported_as_rogue(lab: LabInfo,
                                                             rogue_dhcp: str) -> None:
    rc, res = diag(lab, "rogue-dhcp")
    r = res["rogue-dhcp"]
    assert r["status"] == "fail", r
    rogue = [s for s in r["details"]["servers"] if s["rogue"]]
    assert [s["mac"] for s in rogue] == [rogue_dhcp]
    assert rogue[0]["server"] == lab.client(2).ipv4
    assert rogue[0]["offered"].startswith("10.42.0.5") or rogue[0]["offered"] == "10.42.0.60"
    assert rogue_dhcp in r["summary_en"] and rogue_dhcp in r["summary_id"]
    assert rc == 1


@pytest.fixture
def blocked_government(lab: LabInfo) -> Iterator[None]:
    """An nftables drop in the WAN of everything toward the government origin."""
    rules = [f"add table inet {BLOCK}",
             f"add chain inet {BLOCK} input {{ type filter hook input priority -10; }}",
             f"add rule inet {BLOCK} input ip daddr {p.GOVERNMENT_V4} drop"]
    try:
        for rule in rules:
            in_namespace(lab.wan, "nft", rule)
        yield
    finally:
        subprocess.run([nsa.IP, "netns", "exec", lab.wan, "nft", "delete", "table", "inet",
                        BLOCK], capture_output=True, check=False)


def test_reachable_upstream_dns_and_broker_are_ok(lab: LabInfo) -> None:
    """Positive control of the next tests: nothing blocked, all reachable."""
    rc, res = diag(lab, "dns", "http", "mqtt")
    assert res["http"]["status"] == "ok", res["http"]
    assert res["http"]["details"]["services"][0]["service"] == "dukcapil"
    assert res["dns"]["status"] == "ok", res["dns"]
    assert res["dns"]["details"]["gateway"]["addresses"] == [p.GOVERNMENT_V4]
    assert res["mqtt"]["details"]["stage"] == "connected", res["mqtt"]
    assert res["mqtt"]["status"] == "ok"  # the lab's certificate has a year left
    assert rc == 0


def test_blocked_upstream_is_reported_as_blocked(lab: LabInfo, blocked_government: None) -> None:
    rc, res = diag(lab, "http")
    r = res["http"]
    assert r["status"] == "fail", r
    svc = r["details"]["services"][0]
    assert (svc["service"], svc["status"], svc["reason"]) == ("dukcapil", 0, "timeout")
    assert "dukcapil" in r["summary_en"] and "blocked" in r["summary_en"]
    assert "diblokir" in r["summary_id"]
    assert rc == 1


@pytest.mark.parametrize("action, reason", [("drop", "timeout"),
                                            ("reject with tcp reset", "refused")])
def test_unreachable_broker_is_reported_with_the_reason(lab: LabInfo, action: str,
                                                        reason: str) -> None:
    rules = [f"add table inet {BLOCK}",
             f"add chain inet {BLOCK} input {{ type filter hook input priority -10; }}",
             f"add rule inet {BLOCK} input ip daddr {p.MQTT_V4} tcp dport {p.MQTT_PORT} {action}"]
    try:
        for rule in rules:
            in_namespace(lab.wan, "nft", rule)
        rc, res = diag(lab, "mqtt", timeout=1.5)
    finally:
        subprocess.run([nsa.IP, "netns", "exec", lab.wan, "nft", "delete", "table", "inet",
                        BLOCK], capture_output=True, check=False)
    r = res["mqtt"]
    assert r["status"] == "fail", r
    assert (r["details"]["stage"], r["details"]["reason"]) == ("tcp", reason)
    assert rc == 1


@pytest.mark.parametrize("target, status", [("1kbit", "ok"), ("100gbit", "warn")])
def test_uplink_speed_against_the_target(lab: LabInfo, target: str, status: str) -> None:
    """A 1 MB download from the government origin, judged against the target given."""
    proc = subprocess.run(
        [nsa.IP, "netns", "exec", lab.gw, *desanet_argv(), "diag", "--config", lab.config_path,
         "--json", "speed", "--speed-url", f"http://{p.DUKCAPIL_HOST}/big?mb=1",
         "--speed-target", target], capture_output=True, text=True, timeout=60, check=False)
    [r] = json.loads(proc.stdout)
    assert r["status"] == status, r
    assert r["details"]["bytes"] == 1024 * 1024 and r["details"]["bits_per_second"] > 0
    assert proc.returncode == 0  # slow is a warning, not a failure


def test_diagnostics_work_with_the_daemon_down(lab: LabInfo) -> None:
    """Every check runs and says so when the daemon is stopped; the lab's daemon is
    started again afterwards."""
    stop_gateway(lab)
    try:
        rc, res = diag(lab, *CHECK_NAMES)
        assert res["config"]["status"] == "ok"
        assert res["daemon"]["status"] == "fail"
        assert "not running" in res["daemon"]["summary_en"]
        # dnsmasq went with the daemon: no DHCP server at all on the LAN now
        assert res["rogue-dhcp"]["status"] == "warn", res["rogue-dhcp"]
        assert res["dns"]["status"] == "fail"  # the gateway's DNS is dnsmasq too
        assert res["http"]["status"] == "ok"  # the uplink itself still works
        assert res["wifi"]["status"] == "skip"  # the lab has no radio
        assert res["mqtt"]["details"]["stage"] == "connected"  # the daemon's link is not needed
        assert rc == 1
    finally:
        ensure_gateway(lab)
