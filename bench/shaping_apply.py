"""Shaping tree apply time: desanet's netlink adapter vs `tc -batch` vs one `tc` per command.

Usage (root; creates and removes its own scratch network namespace)::

    .venv/bin/python bench/shaping_apply.py [--sizes 100,1000,5000] [--ops 200] [--json out.json]

The outer process creates the namespace ``bsh<pid>`` with a veth pair
(``bshlan`` / ``bshwan``, both up) and runs itself again inside it with
``ip netns exec bsh<pid> python bench/shaping_apply.py --inner``; the
namespace is always deleted at the end.

Inside, on the LAN end of the veth (the download tree; the daemon builds the
same tree a second time for uploads on the WAN device, so a real client costs
twice the figures below):

* **full install, N clients** - an empty device to the whole tree: the root
  qdisc, the 4 fixed classes and, per client, one HTB class and its leaf
  qdisc (pfifo here: this kernel has no fq_codel/cake, so the adapter also
  pays one failed fq_codel and one failed cake probe on its first leaf).
  desanet: ``Shaper.reconcile(tree)``, exactly what the daemon runs at
  start (class and leaf requests batched, many per netlink send).
  ``tc -batch``: the same commands in one file, one process (the fair "fast
  tc" baseline, as LibreQoS loads its trees). tc per command: ``tc qdisc
  replace ... htb`` and then ``tc class add`` + ``tc qdisc add ... pfifo`` per
  class, one process each, as wondershaper and sqm-scripts do.
* **reconcile with nothing to do, N present** (desanet only) - a new
  ``Shaper`` (as after a daemon restart), then the same one three more times
  (the periodic check; best of 3): root check, class dump, diff, no ops;
  and ``Shaper.stats`` (the counters the reconcile loop samples; best of 3).
* **add / remove one client with 1,000 present** - ``--ops`` new clients, each
  added then removed. desanet: ``Shaper.upsert`` / ``Shaper.delete`` (one
  class + one leaf qdisc / one class delete). tc: ``tc class add`` + ``tc
  qdisc add`` / ``tc class del``.

The tree is checked after every full install (class and leaf counts read
back from the kernel) and torn down between sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LAN, WAN = "bshlan", "bshwan"
NOW = 1_700_000_000


# -- inner: runs inside the scratch namespace --------------------------------------------------------


def _config(lan: str, wan: str) -> Any:
    from gateway.config import parse_config

    return parse_config({
        "site": {"name": "bench", "village": "bench"},
        "network": {"lan_interface": lan, "wan_interface": wan, "lan_address": "10.42.0.1/17"},
        "dhcp": {"range_start": "10.42.0.100", "range_end": "10.42.127.200"},
        "shaping": {"enabled": True, "uplink_down": "100mbit", "uplink_up": "20mbit",
                    "client_down": "2mbit", "client_up": "512kbit"},
    })


def _sessions(first: int, count: int) -> list[Any]:
    from gateway.model import Session

    out = []
    for i in range(first, first + count):
        n = i + 2  # 10.42.0.2 onwards
        out.append(Session(f"02:b5:00:00:{n >> 8 & 255:02x}:{n & 255:02x}",
                           f"10.42.{n >> 8}.{n & 255}", NOW, NOW + 3600, 1800, "terms"))
    return out


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _kernel_counts(dev: str) -> tuple[int, int]:
    """(htb classes, leaf qdiscs under 1:) on ``dev``, read with the tc tool."""
    classes = subprocess.run(["tc", "class", "show", "dev", dev], capture_output=True, text=True,
                             check=True).stdout.count("class htb 1:")
    leaves = sum(1 for ln in subprocess.run(["tc", "qdisc", "show", "dev", dev], capture_output=True,
                                            text=True, check=True).stdout.splitlines()
                 if " parent 1:" in ln)
    return classes, leaves


def _tc(*args: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(["tc", *args], capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"tc {' '.join(args)} failed: {proc.stderr.strip()}")
    return elapsed


def _tc_add(dev: str, cls: Any) -> list[float]:
    from gateway.shaping.plan import classid_text, leaf_limit_packets

    parent = "1:" if cls.parent_minor is None else classid_text(cls.parent_minor)
    times = [_tc("class", "add", "dev", dev, "parent", parent, "classid", classid_text(cls.minor),
                 "htb", "rate", f"{cls.rate}bit", "ceil", f"{cls.ceil}bit", "prio", str(cls.prio),
                 "quantum", str(cls.quantum))]
    if cls.minor != 1:
        times.append(_tc("qdisc", "add", "dev", dev, "parent", classid_text(cls.minor),
                         "handle", f"{cls.minor:x}:", "pfifo", "limit", str(leaf_limit_packets(cls))))
    return times


def _tc_install(dev: str, tree: Any) -> list[float]:
    from gateway.shaping.plan import diff_classes

    times = [_tc("qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "3")]
    for op in diff_classes(tree, {}):  # the same classes, parents first
        times += _tc_add(dev, op.cls)
    return times


def _tc_batch_install(dev: str, tree: Any, path: Path) -> float:
    """The same tree as one `tc -batch` file (all classes, then all leaves), timed."""
    from gateway.shaping.plan import classid_text, diff_classes, leaf_limit_packets

    lines = [f"qdisc replace dev {dev} root handle 1: htb default 3"]
    for op in diff_classes(tree, {}):
        cls = op.cls
        parent = "1:" if cls.parent_minor is None else classid_text(cls.parent_minor)
        lines.append(f"class add dev {dev} parent {parent} classid {classid_text(cls.minor)} htb "
                     f"rate {cls.rate}bit ceil {cls.ceil}bit prio {cls.prio} quantum {cls.quantum}")
        if cls.minor != 1:
            lines.append(f"qdisc add dev {dev} parent {classid_text(cls.minor)} handle "
                         f"{cls.minor:x}: pfifo limit {leaf_limit_packets(cls)}")
    path.write_text("\n".join(lines) + "\n")
    return _tc("-batch", str(path))


def _clear(dev: str) -> None:
    subprocess.run(["tc", "qdisc", "del", "dev", dev, "root"], capture_output=True, check=False)


def inner(sizes: list[int], ops: int) -> dict[str, Any]:
    import pyroute2  # noqa: F401  imported once by the daemon too: not part of any timing

    from gateway.shaping.plan import client_class, plan_device
    from gateway.shaping.tc import Shaper

    cfg = _config(LAN, WAN)
    out: dict[str, Any] = {"install": {}, "ops": {}}
    for n in sizes:
        tree = plan_device(cfg, _sessions(0, n), "down")
        expected = (len(tree.classes), len(tree.classes) - 1)
        row: dict[str, Any] = {"classes": len(tree.classes)}
        _clear(LAN)
        shaper = Shaper()
        row["desanet_s"] = _timed(lambda: shaper.reconcile(tree))  # noqa: B023
        row["leaf"] = shaper.leaf_kind
        assert _kernel_counts(LAN) == expected, (_kernel_counts(LAN), expected)
        shaper.close()
        again = Shaper()
        ops_run: list[Any] = []
        row["restart_s"] = _timed(lambda: ops_run.extend(again.reconcile(tree)))  # noqa: B023
        assert not ops_run, f"restart reconcile ran {len(ops_run)} ops"
        # the periodic check: the same Shaper again (leaf kind known), nothing to do
        row["noop_s"] = min(_timed(lambda: ops_run.extend(again.reconcile(tree)))  # noqa: B023
                            for _ in range(3))
        assert not ops_run, f"no-op reconcile ran {len(ops_run)} ops"
        row["stats_s"] = min(_timed(lambda: again.stats(LAN)) for _ in range(3))  # noqa: B023
        again.close()
        _clear(LAN)
        row["tc_batch_s"] = _tc_batch_install(LAN, tree, Path(f"/tmp/bsh{os.getpid()}.tc"))
        Path(f"/tmp/bsh{os.getpid()}.tc").unlink()
        assert _kernel_counts(LAN) == expected
        _clear(LAN)
        per_cmd = _tc_install(LAN, tree)
        row["tc_s"] = sum(per_cmd)
        row["tc_processes"] = len(per_cmd)
        row["tc_cmd_p50_ms"] = statistics.median(per_cmd) * 1000
        assert _kernel_counts(LAN) == expected
        _clear(LAN)
        out["install"][str(n)] = row

    # add / remove one client with 1,000 present
    present = 1000
    tree = plan_device(cfg, _sessions(0, present), "down")
    newcomers = [client_class(cfg, s, "down") for s in _sessions(present, ops)]
    shaper = Shaper()
    shaper.reconcile(tree)
    series: dict[str, list[float]] = {"desanet_add": [], "desanet_del": [], "tc_add": [], "tc_del": []}
    for cls in newcomers:
        series["desanet_add"].append(_timed(lambda: shaper.upsert(LAN, cls)))  # noqa: B023
        series["desanet_del"].append(_timed(lambda: shaper.delete(LAN, cls)))  # noqa: B023
    assert _kernel_counts(LAN)[0] == len(tree.classes)
    for cls in newcomers:
        series["tc_add"].append(sum(_tc_add(LAN, cls)))
        series["tc_del"].append(_tc("class", "del", "dev", LAN, "classid", f"1:{cls.minor:x}"))
    assert _kernel_counts(LAN)[0] == len(tree.classes)
    shaper.close()
    _clear(LAN)
    out["ops"] = {k: v for k, v in series.items()}
    out["ops_present"] = present
    return out


# -- outer: namespace, table ---------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def _machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import pyroute2

    tc_ver = subprocess.run(["tc", "-V"], capture_output=True, text=True, check=False).stdout.strip()
    return (f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python "
            f"{platform.python_version()}, pyroute2 {pyroute2.__version__}, {tc_ver}")


def report(data: dict[str, Any]) -> str:
    lines = [f"machine: {data['machine']}", f"leaf qdisc: {data['leaf']} (one device, the download tree)", ""]
    lines.append("| full install | desanet (netlink batches) | `tc -batch` (one process) | "
                 "desanet / tc -batch | tc process per command |")
    lines.append("| --- | --- | --- | --- | --- |")
    for n, row in data["install"].items():
        n_i = int(n)
        py, batch, tc = row["desanet_s"], row["tc_batch_s"], row["tc_s"]
        lines.append(
            f"| {n_i:,} clients ({row['classes']:,} classes + leaves) | "
            f"{py:.2f} s = {py / n_i * 1000:.3f} ms/client | "
            f"{batch:.2f} s = {batch / n_i * 1000:.3f} ms/client | {py / batch:.1f}x | "
            f"{tc:.2f} s = {tc / n_i * 1000:.2f} ms/client ({row['tc_processes']:,} processes, "
            f"p50 {row['tc_cmd_p50_ms']:.2f} ms each) |")
    lines += ["", "| reconcile with nothing to do | restart (new Shaper) | periodic check "
              "(same Shaper, best of 3) | counters (`Shaper.stats`, best of 3) |",
              "| --- | --- | --- | --- |"]
    for n, row in data["install"].items():
        lines.append(f"| {int(n):,} present (root check + class dump + diff, 0 ops) | "
                     f"{row['restart_s'] * 1000:.0f} ms | {row['noop_s'] * 1000:.0f} ms | "
                     f"{row['stats_s'] * 1000:.0f} ms |")
    lines += ["", "| single client | desanet | tc process per command | tc / desanet |",
              "| --- | --- | --- | --- |"]
    ops = data["ops"]
    for what, label in (("add", "add one client"), ("del", "remove one client")):
        py, tc = ops[f"desanet_{what}"], ops[f"tc_{what}"]
        lines.append(
            f"| {label}, {data['ops_present']:,} present, p50 / p99 ({len(py)} ops) | "
            f"{_pct(py, .5) * 1000:.2f} / {_pct(py, .99) * 1000:.2f} ms | "
            f"{_pct(tc, .5) * 1000:.2f} / {_pct(tc, .99) * 1000:.2f} ms | "
            f"{_pct(tc, .5) / _pct(py, .5):.1f}x |")
    lines.append("")
    lines.append("references: LibreQoS full reload ~0.73 ms/subscriber; Magma 600 attaches: "
                 "9.85 s pyroute2 (16 ms each) vs 22.1 s tc (37 ms each)")
    return "\n".join(lines)


def outer(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("bench/shaping_apply.py needs root (network namespace, tc)", file=sys.stderr)
        return 2
    if shutil.which("tc") is None or shutil.which("ip") is None:
        print("needs `ip` and `tc` (apt-get install iproute2)", file=sys.stderr)
        return 2
    ns = f"bsh{os.getpid()}"
    started = time.monotonic()
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", LAN, "type", "veth", "peer", "name", WAN],
                       check=True)
        for dev in ("lo", LAN, WAN):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, str(Path(__file__).resolve()), "--inner",
             "--sizes", args.sizes, "--ops", str(args.ops)],
            capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    data = json.loads(proc.stdout)
    data["machine"] = _machine()
    data["leaf"] = next(iter(data["install"].values()))["leaf"]
    data["runtime_s"] = time.monotonic() - started
    print(report(data))
    print(f"\ntotal runtime {data['runtime_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,1000,5000", help="client counts for the full install")
    ap.add_argument("--ops", type=int, default=200, help="single-client add/remove operations")
    ap.add_argument("--json", help="also write the raw results to this file")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        print(json.dumps(inner(sizes, args.ops)))
        return 0
    return outer(args)


if __name__ == "__main__":
    sys.exit(main())
