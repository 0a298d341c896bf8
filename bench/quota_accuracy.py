"""Data quota accuracy and the per-packet cost of counting (docs/quota.md).

Usage (root; creates and removes its own three scratch network namespaces)::

    .venv/bin/python bench/quota_accuracy.py [--quotas 1,10,100] [--rates 2,10,20] [--runs 3]
        [--max-seconds 30] [--clients 5000] [--rounds 3] [--json out.json]

Namespaces ``bqc<pid>`` (a villager), ``bqg<pid>`` (the gateway) and ``bqs<pid>``
(the internet, an iperf3 server) joined by two veth pairs. The outer process builds
them and runs itself again in the gateway namespace (``--inner``), where it installs
desanet's own ruleset and HTB tree with the daemon's adapters (``Firewall``,
``Shaper``), so what is measured is what the daemon writes.

* **bytes past the quota**: for each quota Q (MB, powers of 1024 as plans count) and
  plan rate R (Mbit/s, the client's HTB class), ``--runs`` times: the client logs in
  with a fresh voucher whose plan has ``quota_down = Q`` and ``after_quota = "cut"``,
  downloads with ``iperf3 -R`` for a little longer than Q takes at R, and the bytes it
  received from the server are counted in its own namespace (an nft input counter: IP
  bytes, the measure of the gateway's quota). Past = received - Q (negative: short of
  it). Combinations that would take longer than ``--max-seconds`` per run are skipped
  (100 MB at 2 Mbit/s takes 7 minutes a run): raise it for the whole matrix.
* **forwarding cost of counting**: ``--clients`` sessions authorized (one real, the
  rest placeholders), shaping off, then iperf3 downloads at full speed through three
  rulesets, interleaved for ``--rounds``: the ruleset before counting existed (no
  ``client_up``/``client_down`` chains: what Step 10 shipped), the ruleset with a
  counter per client (every voucher metered, no quota), and with a counter and a
  quota per client. Median of the rounds; ratios against the first, same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LAN, WAN = "bqlan", "bqwan"
LAN_GW, CLIENT = "10.77.0.1", "10.77.0.100"
WAN_GW, SERVER = "198.18.0.1", "198.18.0.2"
CLIENT_MAC = "02:b7:00:00:00:64"
PORT = 5201
NOW = int(time.time())
MIB = 1024**2


def _ns(kind: str, pid: int) -> str:
    return f"bq{kind}{pid}"


# -- inner: runs in the gateway namespace ------------------------------------------------------------


def _config(rates: list[int], shaping: bool) -> Any:
    from gateway.config import parse_config

    plans = {f"r{r}": {"down": f"{r}mbit", "up": "2mbit", "ceil_down": f"{r}mbit",
                       "ceil_up": "2mbit"} for r in rates}
    return parse_config({
        "site": {"name": "bench", "village": "bench"},
        "network": {"lan_interface": LAN, "wan_interface": WAN, "lan_address": f"{LAN_GW}/24"},
        "dhcp": {"range_start": "10.77.0.100", "range_end": "10.77.0.200"},
        "shaping": {"enabled": shaping, "uplink_down": "1000mbit", "uplink_up": "1000mbit",
                    "plans": plans},
    })


def _client_ns(pid: int, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", _ns("c", pid), *argv], capture_output=True,
                          text=True, timeout=timeout, check=False)


def _reset_rx(pid: int) -> None:
    script = ("table inet qbench {}\ndelete table inet qbench\ntable inet qbench {\n"
              "  counter rx { }\n  chain input {\n"
              "    type filter hook input priority filter; policy accept;\n"
              f"    ip saddr {SERVER} counter name rx\n  }}\n}}\n")
    proc = subprocess.run(["ip", "netns", "exec", _ns("c", pid), "nft", "-f", "-"],
                          input=script, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"client counter: {proc.stderr}")


def _rx(pid: int) -> int:
    out = _client_ns(pid, "nft", "-j", "list", "counter", "inet", "qbench", "rx").stdout
    return int(next(i["counter"]["bytes"] for i in json.loads(out)["nftables"] if "counter" in i))


_ports = iter(range(PORT, PORT + 10_000))


def _server(pid: int) -> int:
    """A fresh iperf3 server (one per download: a server whose test was cut off by the
    quota stays busy with it for minutes). They all end with their namespace."""
    port = next(_ports)
    proc = subprocess.run(["ip", "netns", "exec", _ns("s", pid), "iperf3", "-s", "-D", "-B",
                           SERVER, "-p", str(port)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"iperf3 server: {proc.stderr}")
    for _ in range(100):  # until it listens (a daemonized iperf3 returns before)
        if _client_ns(pid, "iperf3", "-c", SERVER, "-p", str(port), "-t", "1", "-n", "1",
                      "--connect-timeout", "200").returncode == 0:
            break
    return port


def _iperf(pid: int, seconds: float) -> float | None:
    """A download from a fresh server for ``seconds``; its goodput, or None when it was
    cut (the quota drops the flow and its control connection: iperf3 then never ends)."""
    t = max(1, round(seconds))
    port = _server(pid)
    proc = _client_ns(pid, "timeout", str(t + 8), "iperf3", "-c", SERVER, "-p", str(port), "-R",
                      "-t", str(t), "-J", "--connect-timeout", "3000", timeout=t + 20)
    try:
        data = json.loads(proc.stdout)
        return float(data["end"]["sum_received"]["bits_per_second"])
    except (ValueError, KeyError):
        return None


def accuracy(pid: int, quotas: list[int], rates: list[int], runs: int,
             max_seconds: float) -> list[dict[str, Any]]:
    from gateway.firewall.adapter import Firewall
    from gateway.meter import Meter
    from gateway.model import Session
    from gateway.shaping.plan import classid_text, client_minor, plan_trees
    from gateway.shaping.tc import Shaper

    cfg = _config(rates, shaping=True)
    fw, shaper = Firewall(sysctl_root=None), Shaper()
    out: list[dict[str, Any]] = []
    serial = 0
    try:
        for rate in rates:
            base = Session(CLIENT_MAC, CLIENT, NOW, NOW + 86400, 86400, "voucher", "warmup",
                           f"r{rate}")
            for tree in plan_trees(cfg, [base]):
                shaper.reconcile(tree)
            fw.apply(cfg, [base], NOW)
            cls = classid_text(client_minor(cfg, CLIENT))
            for q in quotas:
                seconds = q * MIB * 8 / (rate * 1e6)
                row: dict[str, Any] = {"quota_mb": q, "rate_mbit": rate, "past": []}
                if seconds > max_seconds:
                    row["skipped"] = f"{seconds:.0f} s a run > --max-seconds {max_seconds:g}"
                    out.append(row)
                    print(f"  {q} MB at {rate} Mbit/s: skipped ({row['skipped']})",
                          file=sys.stderr)
                    continue
                for _ in range(runs):
                    serial += 1
                    code = f"BENCH{serial}"
                    s = Session(CLIENT_MAC, CLIENT, NOW, NOW + 86400, 86400, "voucher", code,
                                f"r{rate}")
                    fw.authorize(s, NOW, cls, Meter(CLIENT, code, {"down": q * MIB}, "cut"))
                    _reset_rx(pid)
                    _iperf(pid, seconds * 1.15 + 2)
                    got = _rx(pid)
                    row["past"].append(got - q * MIB)
                    print(f"  {q} MB at {rate} Mbit/s: received {got:,} B "
                          f"({got - q * MIB:+,})", file=sys.stderr)
                out.append(row)
    finally:
        fw.remove()
        shaper.remove(LAN)
        shaper.close()
    return out


def _placeholders(n: int) -> list[Any]:
    from gateway.model import Session

    out = []
    for i in range(n):
        hi, lo = divmod(i, 250)
        out.append(Session(f"02:b8:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                           f"10.{90 + hi // 256}.{hi % 256}.{lo + 1}", NOW, NOW + 86400, 86400,
                           "voucher", f"P{i}", None))
    return out


def throughput(pid: int, clients: int, rounds: int) -> dict[str, Any]:
    from gateway.firewall.adapter import Firewall
    from gateway.firewall.nft import Nft
    from gateway.firewall.planner import plan_ruleset
    from gateway.meter import Meter
    from gateway.model import Session

    cfg = _config([2], shaping=False)
    real = Session(CLIENT_MAC, CLIENT, NOW, NOW + 86400, 86400, "voucher", "REAL", None)
    sessions = [real, *_placeholders(clients - 1)]
    counters = [Meter(s.ip, s.voucher or "", {}) for s in sessions]
    quotas = [Meter(s.ip, s.voucher or "", {"total": 1024**4}) for s in sessions]
    with_counters = plan_ruleset(cfg, sessions, NOW, None, counters)
    lan = f'"{LAN}"'
    # the ruleset as it was before counting: authorized uploads accepted at once, no
    # download chain (and its maps left empty)
    before = plan_ruleset(cfg, sessions, NOW, None, []).replace(
        "goto client_up", "accept").replace(f"    oifname {lan} jump client_down\n", "")
    variants = {"no counting (Step 10 ruleset)": before,
                "counter per client": with_counters,
                "counter + quota per client": plan_ruleset(cfg, sessions, NOW, None, quotas)}
    nft = Nft()
    results: dict[str, list[float]] = {k: [] for k in variants}
    reads: dict[str, list[float]] = {"quotas": [], "quotas + counters (reset)": []}
    try:
        for _ in range(rounds):
            for name, script in variants.items():
                nft.run(script)
                bps = _iperf(pid, 4)
                if bps is None:
                    raise RuntimeError(f"iperf3 failed under {name!r}")
                results[name].append(bps)
                print(f"  {name}: {bps / 1e9:.2f} Gbit/s", file=sys.stderr)
        # the quota service's reads with every client metered and under a quota
        fw = Firewall(nft, sysctl_root=None)
        for _ in range(5):
            for what, counters in (("quotas", False), ("quotas + counters (reset)", True)):
                t0 = time.perf_counter()
                fw.read_meters(counters)
                reads[what].append(time.perf_counter() - t0)
    finally:
        nft.run("table inet desanet {}\ndelete table inet desanet\n"
                "table bridge desanet {}\ndelete table bridge desanet\n"
                "table arp desanet {}\ndelete table arp desanet\n")
    return {"clients": clients, "rounds": rounds, "bps": results, "reads": reads}


def inner(args: argparse.Namespace) -> dict[str, Any]:
    pid = args.pid
    started = time.monotonic()
    data: dict[str, Any] = {"machine": _machine()}
    data["accuracy"] = accuracy(pid, _ints(args.quotas), _ints(args.rates), args.runs,
                                args.max_seconds)
    data["throughput"] = throughput(pid, args.clients, args.rounds)
    data["runtime_s"] = time.monotonic() - started
    return data


# -- outer: the namespaces ---------------------------------------------------------------------------


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def _setup(pid: int) -> None:
    c, g, s = _ns("c", pid), _ns("g", pid), _ns("s", pid)
    for n in (c, g, s):
        _run("ip", "netns", "add", n)
    _run("ip", "link", "add", LAN, "netns", g, "type", "veth", "peer", "eth0", "netns", c)
    _run("ip", "link", "add", WAN, "netns", g, "type", "veth", "peer", "eth0", "netns", s)
    for ns_, dev, addr in ((g, LAN, f"{LAN_GW}/24"), (g, WAN, f"{WAN_GW}/24"),
                           (c, "eth0", f"{CLIENT}/24"), (s, "eth0", f"{SERVER}/24")):
        _run("ip", "-n", ns_, "addr", "add", addr, "dev", dev)
        _run("ip", "-n", ns_, "link", "set", dev, "up")
        _run("ip", "-n", ns_, "link", "set", "lo", "up")
    _run("ip", "-n", c, "link", "set", "eth0", "address", CLIENT_MAC)
    _run("ip", "-n", c, "route", "add", "default", "via", LAN_GW)
    _run("ip", "netns", "exec", g, "sysctl", "-qw", "net.ipv4.ip_forward=1")


def _teardown(pid: int) -> None:
    # the iperf3 servers (daemons) do not end with their namespace: end them first
    pids = subprocess.run(["ip", "netns", "pids", _ns("s", pid)], capture_output=True,
                          text=True, check=False).stdout.split()
    for p in pids:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(p), 15)
    for kind in ("c", "g", "s"):
        subprocess.run(["ip", "netns", "del", _ns(kind, pid)], check=False, capture_output=True)


def _machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nft = subprocess.run(["nft", "--version"], capture_output=True, text=True,
                         check=False).stdout.strip()
    return f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, {nft}"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def report(data: dict[str, Any]) -> str:
    lines = [f"machine: {data['machine']}", "",
             "| quota | plan rate | runs | bytes past the quota: median | max |",
             "| --- | --- | --- | --- | --- |"]
    for row in data["accuracy"]:
        label = f"| {row['quota_mb']} MB | {row['rate_mbit']} Mbit/s |"
        if row.get("skipped"):
            lines.append(f"{label} - | skipped: {row['skipped']} | |")
            continue
        past = row["past"]
        lines.append(f"{label} {len(past)} | {statistics.median(past):+,.0f} B | "
                     f"{max(past):+,} B |")
    t = data["throughput"]
    names = list(t["bps"])
    base = statistics.median(t["bps"][names[0]])
    lines += ["", f"forwarding, {t['clients']:,} authorized clients, median of {t['rounds']} "
              "interleaved rounds (iperf3 -R, one TCP flow, shaping off):", "",
              "| ruleset | throughput | against no counting |", "| --- | --- | --- |"]
    for name in names:
        med = statistics.median(t["bps"][name])
        lines.append(f"| {name} | {med / 1e9:.2f} Gbit/s | {med / base:.2f}x |")
    reads = t.get("reads", {})
    if reads:
        lines += ["", f"the quota service's read with {t['clients']:,} vouchers metered, each "
                  "with a quota (`Firewall.read_meters`, best of 5):", ""]
        for what, secs in reads.items():
            lines.append(f"- {what}: {min(secs) * 1000:.0f} ms")
    return "\n".join(lines)


def outer(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("bench/quota_accuracy.py needs root (network namespaces, nftables, tc)",
              file=sys.stderr)
        return 2
    pid = os.getpid()
    _setup(pid)
    try:
        argv = [sys.executable, str(Path(__file__).resolve()), "--inner", "--pid", str(pid),
                "--quotas", args.quotas, "--rates", args.rates, "--runs", str(args.runs),
                "--max-seconds", str(args.max_seconds), "--clients", str(args.clients),
                "--rounds", str(args.rounds)]
        proc = subprocess.run(["ip", "netns", "exec", _ns("g", pid), *argv], stdout=subprocess.PIPE,
                              text=True, check=False)
        if proc.returncode != 0:
            return proc.returncode
        data = json.loads(proc.stdout)
    finally:
        _teardown(pid)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))
    print(report(data))
    print(f"\ntotal runtime {data['runtime_s']:.0f} s")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quotas", default="1,10,100", help="quotas in MB (powers of 1024)")
    ap.add_argument("--rates", default="2,10,20", help="plan rates in Mbit/s")
    ap.add_argument("--runs", type=int, default=3, help="runs per quota and rate")
    ap.add_argument("--max-seconds", type=float, default=30.0,
                    help="skip combinations whose one run would take longer")
    ap.add_argument("--clients", type=int, default=5000, help="authorized clients (throughput)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds")
    ap.add_argument("--json", help="also write the raw figures here")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pid", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        print(json.dumps(inner(args)))
        return 0
    return outer(args)


if __name__ == "__main__":
    sys.exit(main())
