"""The conntrack adapter against the real kernel, in a scratch network namespace.

UDP datagrams and TCP connections over loopback from two source addresses
create tracked flows; TCP to port 80 and UDP to port 53 are redirected by
nftables NAT rules, as the gateway redirects unauthorized http and all DNS.
``Conntrack.end_client`` must delete exactly one address's entries: at login
its redirected http connections, at a cut-off its UDP flows; by the kernel's
filtered flush, and one by one as for kernels that refuse it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.integration.conftest import require_root, require_tools, unique_prefix

pytestmark = [pytest.mark.integration, require_root, require_tools("ip", "nft")]

NS = unique_prefix("ctk")  # a scratch namespace, not a lab

RULES = """
table inet t {
  chain out { type filter hook output priority 0; ct state new counter; }
  chain nat {
    type nat hook output priority -100;
    tcp dport 80 redirect to :8080;
    udp dport 53 redirect to :5353;
  }
}
"""

# Make flows from .2 (one redirected) and .3, then end .2's; print what is left.
SCRIPT = """
import json, socket, sys
from gateway.firewall.conntrack import Conntrack
from pyroute2 import Conntrack as Py
redirected_only, fallback = sys.argv[1] == "1", sys.argv[2] == "1"
servers = [socket.create_server(("127.0.0.1", port)) for port in (6002, 8080)]
held = []
for src in ("127.0.0.2", "127.0.0.3"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    for port in (53, 6000, 6001):
        s.sendto(b"x", ("127.0.0.1", port))
    for port in (80, 6002):
        held.append(socket.create_connection(("127.0.0.1", port), source_address=(src, 0)))
def flows():
    return sorted((str(e.tuple_orig.saddr), int(e.tuple_orig.dport))
                  for e in Py().dump_entries())
before = flows()
ct = Conntrack()
if fallback:
    ct._flush_filter = False  # as on a kernel that refuses a filtered flush
n = ct.end_client("127.0.0.2", redirected_only)
print(json.dumps({"before": before, "after": flows(), "n": n}))
"""


@pytest.fixture
def netns() -> Iterator[str]:
    subprocess.run(["ip", "netns", "del", NS], capture_output=True, timeout=10)
    subprocess.run(["ip", "netns", "add", NS], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True, timeout=10)
        subprocess.run(["ip", "netns", "exec", NS, "nft", "-f", "-"], input=RULES, text=True,
                       check=True, timeout=10)
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, timeout=10)


ALL = [(src, port) for src in ("127.0.0.2", "127.0.0.3") for port in (53, 80, 6000, 6001, 6002)]


@pytest.mark.parametrize("fallback", [False, True], ids=["filtered-flush", "one-by-one"])
@pytest.mark.parametrize(("redirected_only", "gone"), [
    (False, [("127.0.0.2", 53), ("127.0.0.2", 6000), ("127.0.0.2", 6001)]),  # TCP stays
    (True, [("127.0.0.2", 80)]),  # the redirected DNS query stays
], ids=["cut-off", "login"])
def test_end_client_deletes_exactly_that_addresses_entries(
        netns: str, fallback: bool, redirected_only: bool, gone: list[tuple[str, int]]) -> None:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", SCRIPT,
         str(int(redirected_only)), str(int(fallback))],
        capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    before = [tuple(x) for x in got["before"]]
    after = [tuple(x) for x in got["after"]]
    assert all(flow in before for flow in ALL), f"control: every flow was tracked: {before}"
    assert sorted(set(before) - set(after)) == gone
    if fallback:  # counted when deleted one by one
        assert got["n"] == len(gone)
