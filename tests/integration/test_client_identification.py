"""Who is behind an address, with 1,000 neighbours on the LAN (issue #8, "slower with every phone").

The portal identifies a client (IP -> MAC) from the daemon's client map, fed
by the kernel's neighbour events. Here the lab gateway's LAN carries 1,000
extra permanent neighbour entries (10.99.x.y, as many phones would leave),
and:

- through the real portal: c1 logs in and is the one that is online, c2 is
  still captive (the positive control); when c1's MAC changes (its interface
  and the gateway's entry), the portal sees the new MAC at once, and the old
  one again after the change back;
- the daemon's own adapter, run in the gateway namespace against the real
  kernel: entries are identified from the map without a netlink request, a
  changed MAC is seen from the event, a deleted or FAILED entry no longer
  identifies, and a client the map has never heard of costs one single
  lookup, not a dump.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from desanet_lab import LabInfo, LabSpec
from desanet_lab import netns as nsa
from desanet_lab import plan as p
from tests.integration.conftest import (
    LAB_TOOLS,
    PORTAL,
    LabFactory,
    desanet_json,
    http,
    in_namespace,
    login_terms,
    require_root,
    require_tools,
    unique_prefix,
    wait_until,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS)]

PREFIX = unique_prefix("ci")
FILL = 1000
LAN = p.LAN_INTERFACE


def fill_ip(i: int) -> str:
    return f"10.99.{i // 250}.{i % 250 + 1}"


def fill_mac(i: int) -> str:
    return f"02:c1:00:00:{i // 256:02x}:{i % 256:02x}"


def neigh(gw: str, *args: str) -> None:
    in_namespace(gw, nsa.IP, "neigh", *args)


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    info = make_lab(LabSpec(prefix=PREFIX, clients=2))
    lines = [f"neigh replace {fill_ip(i)} lladdr {fill_mac(i)} dev {LAN} nud permanent"
             for i in range(FILL)]
    with tempfile.NamedTemporaryFile("w", suffix=".batch") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        in_namespace(info.gw, nsa.IP, "-batch", f.name, timeout=60)
    shown = in_namespace(info.gw, nsa.IP, "-4", "neigh", "show", "dev", LAN)
    assert shown.count("10.99.") == FILL
    return info


def captive(ns: str) -> bool:
    r = http(ns, f"{PORTAL}/api/captive")
    assert r.status == 200, r.error or r.body
    return bool(json.loads(r.body)["captive"])


def set_client_mac(lab: LabInfo, k: int, mac: str) -> None:
    """Client k takes ``mac``; the gateway's entry for its address follows, as ARP would."""
    c = lab.client(k)
    assert c.ipv4
    in_namespace(c.name, nsa.IP, "link", "set", "eth0", "address", mac)
    neigh(lab.gw, "replace", c.ipv4, "lladdr", mac, "dev", LAN, "nud", "reachable")


def test_a_client_among_1000_neighbours_is_identified(lab: LabInfo) -> None:
    c1, c2 = lab.client(1), lab.client(2)
    assert captive(c1.name) and captive(c2.name)
    assert login_terms(c1.name).status == 303
    rows = desanet_json(lab.control_socket, "clients")["clients"]
    online = {(r["mac"], r["ip"]) for r in rows if r["authorized"]}
    assert (c1.mac, c1.ipv4) in online and len(online) == 1
    assert not captive(c1.name)
    assert captive(c2.name)  # positive control: the portal tells the two apart


def test_a_changed_mac_for_the_same_address_is_seen(lab: LabInfo) -> None:
    c1 = lab.client(1)
    if captive(c1.name):  # run alone: log in first
        assert login_terms(c1.name).status == 303
    assert not captive(c1.name)
    new_mac = "02:c1:ff:00:00:01"
    try:
        set_client_mac(lab, 1, new_mac)
        # The same address, another device: it has no session.
        wait_until(lambda: captive(c1.name), 10, "the portal to see c1's new MAC")
    finally:
        set_client_mac(lab, 1, c1.mac)
    wait_until(lambda: not captive(c1.name), 10, "the portal to see c1's own MAC again")


# -- the adapter against the real kernel -----------------------------------------------------

# Runs in the gateway namespace: the daemon's KernelNeighbours on the lab's LAN,
# counting the netlink requests it makes; one JSON answer per "mac_of IP" line.
AGENT = r'''
import asyncio, json, sys
from gateway.kernel import KernelWorker
from gateway.netinfo.neighbours import KernelNeighbours, Neighbours, open_event_socket

class Counting(Neighbours):
    gets = 0
    dumps = 0
    def kernel_mac_of(self, ip, interface):
        Counting.gets += 1
        return super().kernel_mac_of(ip, interface)
    def dump(self, interface):
        Counting.dumps += 1
        return super().dump(interface)

async def main():
    worker = KernelWorker()
    buffer = int(sys.argv[2])
    port = KernelNeighbours(Counting("/nonexistent/leases"), worker, lambda: sys.argv[1],
                            lambda: open_event_socket(buffer))
    await port.start()
    loop = asyncio.get_running_loop()
    print(json.dumps({"entries": len(port.map), "synced": port.map.synced}), flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        cmd, arg = line.split()
        if cmd == "pause":  # stop taking events: they pile up in the socket (test only)
            port._stop_reading()
        elif cmd == "resume":
            port._start_reading()
        mac = await port.mac_of(arg)
        print(json.dumps({"mac": mac, "gets": Counting.gets, "dumps": Counting.dumps,
                          "events": port.map.applied, "synced": port.map.synced}), flush=True)
    await port.close()
    worker.shutdown()

asyncio.run(main())
'''


class Agent:
    def __init__(self, gw: str, buffer: int = 4 << 20) -> None:
        self.proc = subprocess.Popen([nsa.IP, "netns", "exec", gw, sys.executable, "-c", AGENT, LAN,
                                      str(buffer)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the agent died (exit {self.proc.wait(timeout=10)})"
        return dict(json.loads(line))

    def ask(self, ip: str, cmd: str = "mac_of") -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{cmd} {ip}\n")
        self.proc.stdin.flush()
        return self._read()

    def mac_of(self, ip: str) -> str | None:
        mac = self.ask(ip)["mac"]
        return None if mac is None else str(mac)

    def close(self) -> int:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return self.proc.wait(timeout=20)


@pytest.fixture
def agent(lab: LabInfo) -> Iterator[Agent]:
    a = Agent(lab.gw)
    try:
        yield a
    finally:
        if a.close() != 0:
            pytest.fail("the agent did not stop cleanly")


def test_the_map_follows_the_kernel_by_events(lab: LabInfo, agent: Agent) -> None:
    assert agent.hello["synced"] and agent.hello["entries"] >= FILL
    gw, c1 = lab.gw, lab.client(1)
    # Every client is identified from the map: no netlink request per lookup.
    assert agent.mac_of(fill_ip(0)) == fill_mac(0)
    assert agent.mac_of(fill_ip(FILL - 1)) == fill_mac(FILL - 1)
    assert agent.mac_of(str(c1.ipv4)) == c1.mac
    assert agent.ask(fill_ip(500))["gets"] == 0

    # A changed MAC for the same address: seen from the event, still no request.
    ip = fill_ip(10)
    neigh(gw, "replace", ip, "lladdr", "02:c1:ee:00:00:10", "dev", LAN, "nud", "permanent")
    wait_until(lambda: agent.mac_of(ip) == "02:c1:ee:00:00:10", 10, "the new MAC of " + ip)
    answer = agent.ask(ip)
    assert answer["gets"] == 0 and answer["dumps"] == 1 and answer["events"] >= 1

    # Deleted: no longer identifies (one single lookup confirms the kernel has nothing).
    neigh(gw, "del", ip, "dev", LAN)
    wait_until(lambda: agent.mac_of(ip) is None, 10, f"{ip} to be forgotten")
    assert agent.mac_of(fill_ip(11)) == fill_mac(11)  # positive control: its neighbour stays

    # An entry the kernel cannot use (FAILED, INCOMPLETE) identifies nobody.
    neigh(gw, "replace", fill_ip(12), "dev", LAN, "nud", "failed")
    neigh(gw, "replace", fill_ip(13), "dev", LAN, "nud", "incomplete")
    wait_until(lambda: agent.mac_of(fill_ip(12)) is None, 10, "the FAILED entry to not identify")
    wait_until(lambda: agent.mac_of(fill_ip(13)) is None, 10, "the INCOMPLETE entry too")
    neigh(gw, "replace", fill_ip(12), "lladdr", fill_mac(12), "dev", LAN, "nud", "permanent")
    wait_until(lambda: agent.mac_of(fill_ip(12)) == fill_mac(12), 10, "the entry to be usable again")

    # Only the LAN counts: a LAN-looking address whose entry is on the WAN device identifies nobody.
    stray = "10.42.0.77"
    neigh(gw, "replace", stray, "lladdr", "02:c1:aa:00:00:01", "dev", p.WAN_INTERFACE,
          "nud", "permanent")
    try:
        assert agent.mac_of(stray) is None
    finally:
        neigh(gw, "del", stray, "dev", p.WAN_INTERFACE)
    final = agent.ask(fill_ip(0))
    assert final["mac"] == fill_mac(0) and final["dumps"] == 1
    # Lookups of addresses with no entry: ip (deleted), 12 and 13 (unusable: none),
    # the stray one (unknown on the LAN): a single request each time it was unknown.
    assert 1 <= final["gets"] <= 8


def test_an_overrun_is_repaired_by_a_new_dump(lab: LabInfo) -> None:
    # A tiny receive buffer, and the agent stops taking events while 300 entries change:
    # the kernel drops events (ENOBUFS), and the map must be rebuilt from a dump.
    a = Agent(lab.gw, buffer=4096)
    try:
        assert a.hello["synced"]
        first = a.ask(fill_ip(20), "pause")
        assert first["mac"] == fill_mac(20)
        moved = "02:c1:dd:00:{:02x}:{:02x}"
        lines = [f"neigh replace {fill_ip(i)} lladdr {moved.format(i // 256, i % 256)} dev {LAN} "
                 "nud permanent" for i in range(20, 320)]
        with tempfile.NamedTemporaryFile("w", suffix=".batch") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            in_namespace(lab.gw, nsa.IP, "-batch", f.name, timeout=60)
        resumed = a.ask(fill_ip(20), "resume")  # this lookup meets the overrun
        assert not resumed["synced"] or resumed["dumps"] >= 2
        wait_until(lambda: a.ask(fill_ip(319))["dumps"] >= 2, 10, "the map to be dumped again")
        for i in (20, 170, 319):
            assert a.mac_of(fill_ip(i)) == moved.format(i // 256, i % 256)
        assert a.mac_of(fill_ip(320)) == fill_mac(320)  # positive control: untouched entry
    finally:
        assert a.close() == 0
        # put the module's fill back as it was
        lines = [f"neigh replace {fill_ip(i)} lladdr {fill_mac(i)} dev {LAN} nud permanent"
                 for i in range(20, 320)]
        with tempfile.NamedTemporaryFile("w", suffix=".batch") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            in_namespace(lab.gw, nsa.IP, "-batch", f.name, timeout=60)
