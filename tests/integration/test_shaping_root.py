"""The HTB root on a device: whatever was there before, one reconcile leaves ours.

Real tc (through pyroute2) in a scratch network namespace.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.conftest import require_root, require_tools, unique_prefix

pytestmark = [pytest.mark.integration, require_root, require_tools("ip", "tc")]

NS = unique_prefix("shr")  # a scratch namespace, not a lab

RECONCILE = """
from gateway.shaping.tc import Shaper
from gateway.shaping.plan import plan_trees
from tests.unit.conftest import make_config
cfg = make_config(shaping={"enabled": True}, network={"lan_interface": "v0", "wan_interface": "v1"})
down, _ = plan_trees(cfg, [])
shaper = Shaper()
print(len(shaper.reconcile(down)), len(shaper.reconcile(down)))
"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=20).stdout


@pytest.fixture
def netns() -> object:
    subprocess.run(["ip", "netns", "del", NS], capture_output=True, timeout=10)
    sh("ip", "netns", "add", NS)
    try:
        sh("ip", "-n", NS, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        sh("ip", "-n", NS, "link", "set", "v0", "up")
        sh("ip", "-n", NS, "link", "set", "v1", "up")
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, timeout=10)


@pytest.mark.parametrize("before", [
    [],  # a fresh device (noqueue)
    ["tc", "qdisc", "add", "dev", "v0", "root", "handle", "5:", "tbf", "rate", "1mbit",
     "burst", "10k", "latency", "50ms"],  # someone else's qdisc
    ["tc", "qdisc", "add", "dev", "v0", "root", "handle", "1:", "htb", "default", "2"],  # old desanet
])
def test_reconcile_installs_our_root_once(netns: str, before: list[str]) -> None:
    if before:
        sh("ip", "netns", "exec", netns, *before)
    out = sh("ip", "netns", "exec", netns, sys.executable, "-c", RECONCILE)
    first, second = (int(x) for x in out.split())
    assert first == 4 and second == 0  # uplink, unauthorized, trusted, local; then nothing
    root = sh("ip", "netns", "exec", netns, "tc", "qdisc", "show", "dev", "v0").splitlines()[0]
    assert root.startswith("qdisc htb 1: root")
    assert "default 0x3" in root  # unclassifiable ARP/DHCP go to the gateway's local class
