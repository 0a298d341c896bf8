"""Portal authorization latency: desanet's set elements vs one rule per client.

Usage (root; builds and removes its own virtual village)::

    .venv/bin/python bench/portal_auth.py [--sizes 10,1000,5000] [--ops 200] [--prefix bpa]

For each size N the script

1. fills the lab gateway to N active sessions through the control API
   (POST /v1/clients/auth, a few threads with one connection each);
2. times ``--ops`` authorizations of new clients and then ``--ops``
   deauthorizations of those clients, one control API call per operation,
   sequentially (each call: HTTP over the unix socket, SQLite write, one
   libnftables transaction on the ``auth4``/``active4`` sets);
3. checks the kernel: ``nft -j list set inet desanet auth4`` (and
   ``active4``) in the gateway namespace must hold exactly N elements, and
   the daemon must report N active sessions;
4. runs bench/_rule_per_client.py in the gateway namespace, which times the
   same operations kernel-only with the same libnftables binding: one set
   element, the daemon's own transaction, one rule per client (the layout of
   openNDS / nodogsplash), and one ``nft`` process per operation.

Client addresses are 10.99.x.y (and MACs 02:b0:...): the control API does
not check "ip" against the LAN, and the lab LAN is a fixed /24, too small
for 5,000 clients. The lab is always torn down at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _rule_per_client import ip_of, mac_of

from desanet_lab import LabSpec, lab_down, lab_up
from gateway.control.client import ControlClient
from gateway.errors import ControlError

HERE = Path(__file__).resolve().parent
HELPER = HERE / "_rule_per_client.py"
FILL_THREADS = 4
PROBE_BASE = 1_000_000  # client numbers of timed desanet operations (never used by the fill)
KERNEL_BASE = 2_000_000  # ... of the kernel-only operations
BURST_BASE = 3_000_000  # ... and of the concurrent bursts

ROWS: list[tuple[str, str, str, str]] = [
    # key, label, add series, delete series
    ("e2e", "desanet end-to-end (control API + SQLite + sets)", "e2e_add", "e2e_del"),
    ("txn", "desanet nft transaction alone (libnftables)", "txn_add", "txn_del"),
    ("set", "set element alone (libnftables)", "set_add", "set_del"),
    ("rule", "rule per client (libnftables, handle known)", "rule_add", "rule_del"),
    ("echo", "rule per client, add with --echo for the handle", "rule_echo_add", ""),
    ("proc", "rule per client, one `nft` process per op", "proc_add", "proc_del"),
    ("look", "rule per client, `nft -a list chain` + delete", "", "proc_lookup_del"),
]


def pct(values: Sequence[int], p: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in milliseconds."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[k - 1] / 1e6


def fmt(ms: float) -> str:
    if math.isnan(ms):
        return "-"
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


class Api:
    """Control API calls with per-thread connections."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._local = threading.local()
        self._all: list[ControlClient] = []
        self._lock = threading.Lock()

    def client(self) -> ControlClient:
        c = getattr(self._local, "client", None)
        if c is None:
            c = ControlClient(self.socket_path, timeout=60.0)
            self._local.client = c
            with self._lock:
                self._all.append(c)
        return c

    def auth(self, i: int) -> Any:
        return self.client().request("POST", "/v1/clients/auth", {"mac": mac_of(i), "ip": ip_of(i)})

    def deauth(self, i: int) -> Any:
        return self.client().request("POST", "/v1/clients/deauth", {"mac": mac_of(i)})

    def status(self) -> dict[str, Any]:
        data = self.client().request("GET", "/v1/status")
        assert isinstance(data, dict)
        return data

    def close(self) -> None:
        for c in self._all:
            c.close()


def timed(items: Sequence[int], op: Callable[[int], object]) -> list[int]:
    out = []
    for i in items:
        t0 = time.perf_counter_ns()
        op(i)
        out.append(time.perf_counter_ns() - t0)
    return out


def fill(api: Api, start: int, stop: int) -> float:
    """Authorize clients start..stop-1 with a few threads; return seconds taken."""
    if stop <= start:
        return 0.0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(FILL_THREADS) as pool:
        for _ in pool.map(api.auth, range(start, stop), chunksize=64):
            pass
    return time.perf_counter() - t0


def kernel_count(gw_ns: str, set_name: str) -> int:
    proc = subprocess.run(
        ["ip", "netns", "exec", gw_ns, "nft", "-j", "list", "set", "inet", "desanet", set_name],
        capture_output=True, text=True, timeout=60, check=True,
    )
    items = json.loads(proc.stdout)["nftables"]
    return sum(len(x["set"].get("elem", [])) for x in items if "set" in x)


def run_helper(gw_ns: str, size: int, ops: int, proc_ops: int) -> dict[str, Any]:
    argv = ["ip", "netns", "exec", gw_ns, sys.executable, str(HELPER), "--netns", gw_ns,
            "--size", str(size), "--ops", str(ops), "--proc-ops", str(proc_ops),
            "--base", str(KERNEL_BASE)]
    env = dict(os.environ)
    root = str(HERE.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"kernel bench failed (rc {proc.returncode}): {proc.stderr.strip()}")
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def burst(api_path: str, count: int, base: int) -> dict[str, Any]:
    """``count`` clients call auth at the same moment, each on its own new connection;
    then the ones that got in call deauth the same way."""
    lock = threading.Lock()

    def wave(path: str, clients: list[int]) -> dict[str, Any]:
        barrier = threading.Barrier(len(clients)) if clients else None
        lat: list[int] = []
        ok: list[int] = []
        errors: list[str] = []

        def one(i: int) -> None:
            c = ControlClient(api_path, timeout=120.0)
            # auth takes mac + ip; deauth only the mac (the typed requests refuse unknown keys)
            body = {"mac": mac_of(i), "ip": ip_of(i)} if path.endswith("/auth") else {"mac": mac_of(i)}
            try:
                assert barrier is not None
                barrier.wait()
                t0 = time.perf_counter_ns()
                c.request("POST", path, body)
                with lock:
                    lat.append(time.perf_counter_ns() - t0)
                    ok.append(i)
            except (ControlError, OSError, threading.BrokenBarrierError) as exc:
                with lock:
                    errors.append(str(exc))
            finally:
                c.close()

        threads = [threading.Thread(target=one, args=(i,)) for i in clients]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"ok": len(ok), "ok_ids": ok, "n_errors": len(errors), "errors": errors[:3],
                "wall_s": time.perf_counter() - t0, "p50": pct(lat, 50), "p99": pct(lat, 99)}

    auth = wave("/v1/clients/auth", list(range(base, base + count)))
    admitted = auth.pop("ok_ids")
    deauth = wave("/v1/clients/deauth", admitted)
    left = sorted(set(admitted) - set(deauth.pop("ok_ids")))
    return {"count": count, "auth": auth, "deauth": deauth, "left": left}


def machine() -> dict[str, str]:
    nft = subprocess.run(["nft", "--version"], capture_output=True, text=True, check=False)
    return {"nproc": str(os.cpu_count()), "kernel": platform.release(),
            "nft": nft.stdout.strip(), "python": platform.python_version()}


def print_table(size: int, series: dict[str, list[int]], ops: int, proc_ops: int) -> None:
    print(f"\nN = {size:,} active sessions   (latency per operation, ms)")
    head = f"  {'approach':<50} {'add p50':>8} {'add p99':>8} {'del p50':>8} {'del p99':>8} {'ops':>5}"
    print(head)
    print("  " + "-" * (len(head) - 2))
    for _key, label, add, dele in ROWS:
        a, d = series.get(add, []), series.get(dele, [])
        n = len(a) or len(d)
        print(f"  {label:<50} {fmt(pct(a, 50)):>8} {fmt(pct(a, 99)):>8} "
              f"{fmt(pct(d, 50)):>8} {fmt(pct(d, 99)):>8} {n:>5}")


def ratios(series: dict[str, list[int]]) -> dict[str, float]:
    """rule-per-client / set element and / desanet end-to-end, plus shell style / e2e."""
    cols = {r[0]: r for r in ROWS}
    out = {}
    for num, den, name, ps in (("rule", "set", "rule/set", (50, 99)),
                               ("rule", "e2e", "rule/e2e", (50, 99)),
                               ("proc", "e2e", "nft-process/e2e", (50,))):
        for kind, idx in (("add", 2), ("del", 3)):
            for p in ps:
                out[f"{name} {kind} p{p}"] = (pct(series[cols[num][idx]], p)
                                              / pct(series[cols[den][idx]], p))
    return out


def print_summary(results: dict[str, Any]) -> None:
    keys = [r for r in ROWS if r[0] in ("e2e", "set", "rule", "proc")]
    print("\nsummary (ms per operation)")
    head = f"  {'N':>6}  {'approach':<50} {'add p50':>8} {'add p99':>8} {'del p50':>8} {'del p99':>8}"
    print(head)
    print("  " + "-" * (len(head) - 2))
    for size, r in results["sizes"].items():
        for _key, label, add, dele in keys:
            a = r["p"].get(add, {"p50": math.nan, "p99": math.nan})
            d = r["p"].get(dele, {"p50": math.nan, "p99": math.nan})
            print(f"  {int(size):>6,}  {label:<50} {fmt(a['p50']):>8} {fmt(a['p99']):>8} "
                  f"{fmt(d['p50']):>8} {fmt(d['p99']):>8}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,1000,5000", help="comma-separated session counts")
    ap.add_argument("--ops", type=int, default=200, help="timed operations per kind and size")
    ap.add_argument("--proc-ops", type=int, default=20,
                    help="timed operations for the slow one-process-per-op rows")
    ap.add_argument("--burst", default="100,200",
                    help="comma-separated counts of concurrent auth calls at the largest "
                         "size (0: skip)")
    ap.add_argument("--prefix", default="bpa", help="lab prefix (namespaces PREFIX-gw, ...)")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds to wait after the lab is up before measuring")
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    args = ap.parse_args(argv)
    sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()})
    bursts = [int(b) for b in args.burst.split(",") if b.strip() and int(b) > 0]
    if not sizes or sizes[0] < 0 or args.ops < 1:
        ap.error("--sizes needs whole numbers >= 0 and --ops >= 1")
    if os.geteuid() != 0:
        print("portal_auth: needs root (network namespaces, nftables)", file=sys.stderr)
        return 1

    info = machine()
    print(f"machine: {info['nproc']} CPUs, kernel {info['kernel']}, {info['nft']}, "
          f"Python {info['python']}")
    spec = LabSpec(prefix=args.prefix, clients=1, dhcp=False,
                   extra={"portal": {"max_clients": max(20000, sizes[-1] + 2 * args.ops + 1000)},
                          # clients use 10.99.x.y (beyond the lab's /24), which
                          # shaping refuses: class ids come from LAN addresses
                          "shaping": {"enabled": False}})
    results: dict[str, Any] = {"machine": info, "ops": args.ops, "sizes": {}}
    t_start = time.perf_counter()
    print(f"bringing up lab {args.prefix!r} ...", flush=True)
    lab = lab_up(spec)
    api = Api(lab.control_socket)
    time.sleep(args.settle)
    ok = True
    try:
        filled = 0
        for size in sizes:
            secs = fill(api, filled, size)
            if size > filled:
                print(f"filled {filled:,} -> {size:,} sessions in {secs:.1f} s "
                      f"({(size - filled) / secs:.0f}/s with {FILL_THREADS} threads)", flush=True)
            filled = size
            probes = list(range(PROBE_BASE + size * 10, PROBE_BASE + size * 10 + args.ops))
            series: dict[str, list[int]] = {
                "e2e_add": timed(probes, api.auth),
                "e2e_del": timed(probes, api.deauth),
            }
            checks = {"auth4": kernel_count(lab.gw, "auth4"),
                      "active4": kernel_count(lab.gw, "active4"),
                      "sessions_active": int(api.status()["sessions_active"])}
            good = all(v == size for v in checks.values())
            ok &= good
            print(f"check N={size:,}: kernel auth4={checks['auth4']:,} active4="
                  f"{checks['active4']:,} daemon sessions={checks['sessions_active']:,} -> "
                  f"{'OK' if good else 'MISMATCH'}", flush=True)
            kern = run_helper(lab.gw, size, args.ops, args.proc_ops)
            series.update({k: v for k, v in kern.items() if isinstance(v, list)})
            if kern["final_rules"] != size or kern["final_set"] != size:
                ok = False
                print(f"kernel bench left {kern['final_rules']} rules / {kern['final_set']} "
                      f"elements, expected {size}")
            print_table(size, series, args.ops, args.proc_ops)
            r = ratios(series)
            print("  ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in r.items()))
            print(f"  one-batch load of N: set {kern['load_sets_ns'] / 1e6:.1f} ms, "
                  f"rules {kern['load_rules_ns'] / 1e6:.1f} ms", flush=True)
            results["sizes"][str(size)] = {
                "checks": checks, "fill_s": secs, "ratios": r,
                "load_sets_ms": kern["load_sets_ns"] / 1e6,
                "load_rules_ms": kern["load_rules_ns"] / 1e6,
                "p": {k: {"p50": pct(v, 50), "p99": pct(v, 99), "n": len(v)}
                      for k, v in series.items()},
            }
        results["burst"] = []
        for k, count in enumerate(bursts):
            b = burst(lab.control_socket, count, BURST_BASE + k * 10_000)
            results["burst"].append(b)
            print()
            for name in ("auth", "deauth"):
                x = b[name]
                print(f"burst at N={sizes[-1]:,}: {count} concurrent {name} calls (new "
                      f"connection each) -> {x['ok']} ok, {x['n_errors']} failed, "
                      f"{x['wall_s']:.2f} s wall, p50 {fmt(x['p50'])} ms, p99 {fmt(x['p99'])} ms"
                      + (f"\n    first failure: {x['errors'][0]}" if x["errors"] else ""))
            for i in b.pop("left"):  # deauth refused at connect: retry one by one
                api.deauth(i)
            after = {"auth4": kernel_count(lab.gw, "auth4"),
                     "sessions_active": int(api.status()["sessions_active"])}
            good = all(v == sizes[-1] for v in after.values())
            ok &= good
            print(f"after burst: kernel auth4={after['auth4']:,} daemon sessions="
                  f"{after['sessions_active']:,} -> {'OK' if good else 'MISMATCH'}", flush=True)
    finally:
        api.close()
        lab_down(args.prefix)
    results["runtime_s"] = time.perf_counter() - t_start
    print_summary(results)
    for b in results.get("burst", []):
        for name in ("auth", "deauth"):
            if b[name]["n_errors"]:
                print(f"FINDING: {b[name]['n_errors']} of {b['count']} concurrent {name} calls "
                      f"failed: {b[name]['errors'][0]}")
    print(f"\nlab {args.prefix!r} removed; total {results['runtime_s']:.0f} s; "
          f"checks {'passed' if ok else 'FAILED'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
