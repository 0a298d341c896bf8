"""Batched tc changes: many classes per netlink send, errors mapped back to their class.

Real tc in a scratch network namespace; each scenario runs as a small script
inside it (``ip netns exec``) and prints JSON that the test checks against
what the ``tc`` tool reads back from the kernel.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.integration.conftest import require_root, require_tools, unique_prefix

pytestmark = [pytest.mark.integration, require_root, require_tools("ip", "tc")]

NS = unique_prefix("shb")

SETUP = """
import json
from dataclasses import replace
from gateway.errors import ShapingError
from gateway.model import Session
from gateway.shaping.plan import TcOp, plan_device
from gateway.shaping.tc import Shaper
from tests.unit.conftest import make_config
cfg = make_config(shaping={"enabled": True}, network={"lan_interface": "v0", "wan_interface": "v1",
                                                      "lan_address": "10.42.0.1/17"})
def sessions(n, first=0):
    out = []
    for i in range(first, first + n):
        k = i + 2
        out.append(Session(f"02:b6:00:00:{k >> 8:02x}:{k & 255:02x}", f"10.42.{k >> 8}.{k & 255}",
                           1, 10**10, 1800, "terms"))
    return out
shaper = Shaper()
"""

# More classes than one send holds (tcnl.CHUNK), then changes, removals, no-op.
BIG = SETUP + """
full = plan_device(cfg, sessions(300), "down")
first = shaper.reconcile(full)
noop = shaper.reconcile(full)
faster = tuple(replace(c, rate=c.rate * 2) if c.minor % 3 == 0 and c.minor >= 0x100 else c
               for c in full.classes)
smaller = replace(full, classes=faster[:-40])
ops = shaper.reconcile(smaller)
fresh = Shaper().reconcile(smaller)
seen = shaper.observe("v0")
want = smaller.by_minor()
faster_n = sum(1 for c in smaller.classes if c.minor % 3 == 0 and c.minor >= 0x100)
same = seen.keys() == want.keys() and all(seen[m].same_shape(c) for m, c in want.items())
print(json.dumps({"first": len(first), "noop": len(noop), "actions": sorted({o.action for o in ops}),
                  "changed": len(ops), "faster": faster_n, "fresh": len(fresh), "same": same}))
"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


def run(script: str) -> Any:
    return json.loads(sh("ip", "netns", "exec", NS, sys.executable, "-c", script).splitlines()[-1])


def classes() -> set[str]:
    out = sh("ip", "netns", "exec", NS, "tc", "class", "show", "dev", "v0")
    return {line.split()[2] for line in out.splitlines() if line.startswith("class htb")}


def leaves() -> set[str]:
    out = sh("ip", "netns", "exec", NS, "tc", "qdisc", "show", "dev", "v0")
    return {line.split(" parent ")[1].split()[0] for line in out.splitlines() if " parent 1:" in line}


@pytest.fixture(autouse=True)
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


def test_batches_install_change_and_remove_many_classes() -> None:
    out = run(BIG)
    assert out["first"] == 304 and out["noop"] == 0
    # every third client's rate doubled (in place), the last 40 removed
    assert out["actions"] == ["change", "delete"] and out["changed"] == out["faster"] + 40
    assert out["faster"] > 80
    assert out["fresh"] == 0 and out["same"]
    assert len(classes()) == 264 and len(leaves()) == 263  # every class but the uplink has a leaf


REFUSED = SETUP + """
tree = plan_device(cfg, sessions(5), "down")
shaper.reconcile(tree)
good = plan_device(cfg, sessions(3, first=10), "down").classes[-3:]
dup = tree.classes[-1]  # already there: the kernel refuses to add it again
try:
    shaper.apply("v0", [TcOp("add", good[0]), TcOp("add", dup), TcOp("add", good[1])])
    error = ""
except ShapingError as exc:
    error = str(exc)
import socket
from gateway.shaping.tcnl import qdisc_kinds
between = [f"1:{m:x}" for m in shaper.observe("v0")]
between_leaves = [f"1:{p & 0xFFFF:x}" for _k, _h, p in qdisc_kinds(socket.if_nametoindex("v0"))]
repaired = shaper.reconcile(tree)
print(json.dumps({"error": error, "dup": f"1:{dup.minor:x}", "label": dup.label,
                  "good": [f"1:{c.minor:x}" for c in good[:2]], "between": between,
                  "between_leaves": between_leaves,
                  "repaired": sorted({o.action for o in repaired}), "n": len(repaired)}))
"""


def test_a_refused_class_is_named_and_the_rest_of_the_batch_still_runs() -> None:
    out = run(REFUSED)
    assert f"add class {out['dup']} ({out['label']})" in out["error"], out["error"]
    assert "EEXIST" in out["error"]
    # positive control: its neighbours in the same send were made, with their leaves
    assert set(out["good"]) <= set(out["between"])
    assert set(out["good"]) <= set(out["between_leaves"])
    # the next reconcile removes what the tree does not want: back to 4 fixed + 5 clients
    assert out["repaired"] == ["delete"] and out["n"] == 2
    assert len(classes()) == 9


LEAF_REFUSED = SETUP + """
tree = plan_device(cfg, sessions(4), "down")
shaper.reconcile(tree)
newcomer = plan_device(cfg, sessions(1, first=20), "down").classes[-1]
shaper.leaf_kind = "nosuchqdisc"  # the kernel refuses the leaf, not the class
try:
    shaper.upsert("v0", newcomer)
    error = ""
except ShapingError as exc:
    error = str(exc)
shaper.leaf_kind = "pfifo"
bigger = plan_device(cfg, sessions(4) + sessions(1, first=20), "down")
again = shaper.reconcile(bigger)
print(json.dumps({"error": error, "minor": f"1:{newcomer.minor:x}", "again": len(again)}))
"""


def test_a_refused_leaf_leaves_no_half_made_class_and_the_next_reconcile_repairs() -> None:
    out = run(LEAF_REFUSED)
    assert "leaf qdisc of class " + out["minor"] in out["error"], out["error"]
    assert out["again"] == 1  # the class was taken back, so the reconcile adds it with its leaf
    assert out["minor"] in classes() and out["minor"] in leaves()


COUNTERS = SETUP + """
import subprocess
from pyroute2 import IPRoute
tree = plan_device(cfg, sessions(3), "down")
shaper.reconcile(tree)
# ARP for an absent neighbour leaves by v0 into the default class 1:3: non-zero counters
subprocess.run(["ip", "addr", "add", "10.9.0.1/24", "dev", "v0"], check=True)
import socket, time
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
    udp.sendto(b"x", ("10.9.0.3", 9))
deadline = time.monotonic() + 5  # the kernel sends its first ARP request at once
while shaper.stats("v0")[3].packets == 0 and time.monotonic() < deadline:
    time.sleep(0.05)
def pyroute2_counters():
    with IPRoute() as ipr:
        out = {}
        for m in ipr.get_classes(ipr.link_lookup(ifname="v0")[0]):
            basic = m.get_attr("TCA_STATS2").get_attr("TCA_STATS_BASIC")
            queue = m.get_attr("TCA_STATS2").get_attr("TCA_STATS_QUEUE")
            out[m["handle"] & 0xFFFF] = [basic["bytes"], basic["packets"], queue["drops"],
                                         queue["backlog"], queue["overlimits"]]
        return out
def our_counters():
    return {k: [v.bytes, v.packets, v.drops, v.backlog, v.overlimits]
            for k, v in shaper.stats("v0").items()}
for _ in range(20):  # an ARP retry may land between two dumps: read until they agree
    mine, theirs, again = our_counters(), pyroute2_counters(), our_counters()
    if mine == theirs == again:
        break
print(json.dumps({"mine": mine, "theirs": theirs}))
"""


def test_counters_match_a_full_decode_of_the_same_dump() -> None:
    out = run(COUNTERS)
    assert out["mine"] == out["theirs"]
    assert len(out["mine"]) == 7
    assert out["mine"]["3"][1] > 0  # positive control: the ARP requests were counted
