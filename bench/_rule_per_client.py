"""Kernel-only half of bench/portal_auth.py: set elements vs one rule per client.

Runs inside the lab's gateway namespace (``ip netns exec P-gw``) and refuses
to run anywhere else (``--netns`` must name the namespace it is in), so it
can never touch the host's ruleset. For one size N it builds two scratch
tables next to the daemon's ``inet desanet``:

* ``inet bench_sets``: sets ``auth4`` / ``active4`` (``ether_addr .
  ipv4_addr``, flags timeout) with N elements each, referenced by one rule;
* ``inet bench_rules``: one base chain (forward, priority -10, policy
  accept) with N rules ``ether saddr M ip saddr A accept``, loaded in one
  batch -- the layout of portals that keep one firewall rule per client
  (openNDS, nodogsplash).

It then times single operations with the same in-process libnftables
binding the daemon uses (:class:`gateway.firewall.nft.Nft`) and, for the
shell-script style, one ``nft`` process per operation. Both tables are
deleted before it exits. Output: one JSON object on stdout with raw
latencies in nanoseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.errors import FirewallError
from gateway.firewall.nft import Nft
from gateway.firewall.planner import plan_authorize, plan_revoke
from gateway.model import Session

SETS = "bench_sets"
RULES = "bench_rules"
SESSION_SECONDS = 4 * 3600
IDLE_SECONDS = 1800
# libnftables output flags (nftables/libnftables.h)
_OUTPUT_HANDLE = 1 << 3
_OUTPUT_ECHO = 1 << 5
_HANDLE_RE = re.compile(r"ether saddr (\S+) ip saddr \S+ accept # handle (\d+)")


def mac_of(i: int) -> str:
    """Locally administered MAC for client number ``i`` (0 <= i < 2**24)."""
    return f"02:b0:00:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"


def ip_of(i: int) -> str:
    """IPv4 for client number ``i``: 10.99.0.1, 10.99.0.2, ... (hosts .1-.250)."""
    hi, lo = divmod(i, 250)
    return f"10.{99 + hi // 256}.{hi % 256}.{lo + 1}"


def _drop(table: str) -> str:
    return f"table inet {table} {{}}\ndelete table inet {table}\n"


def _sets_script(n: int) -> str:
    auth = ", ".join(f"{mac_of(i)} . {ip_of(i)} timeout {SESSION_SECONDS}s" for i in range(n))
    active = ", ".join(f"{mac_of(i)} . {ip_of(i)} timeout {IDLE_SECONDS}s" for i in range(n))
    kind = "type ether_addr . ipv4_addr; flags timeout;"
    return (
        _drop(SETS)
        + f"table inet {SETS} {{\n"
        + f"  set auth4 {{ {kind} elements = {{ {auth} }}; }}\n"
        + f"  set active4 {{ {kind} timeout {IDLE_SECONDS}s; elements = {{ {active} }}; }}\n"
        + "  chain c {\n"
        + "    type filter hook forward priority -10; policy accept;\n"
        + "    ether saddr . ip saddr @auth4 accept\n"
        + "  }\n}\n"
    )


def _rules_script(n: int) -> str:
    rules = "".join(f"    ether saddr {mac_of(i)} ip saddr {ip_of(i)} accept\n" for i in range(n))
    return (
        _drop(RULES)
        + f"table inet {RULES} {{\n  chain c {{\n"
        + "    type filter hook forward priority -10; policy accept;\n"
        + rules
        + "  }\n}\n"
    )


def _rule(i: int) -> str:
    return f"add rule inet {RULES} c ether saddr {mac_of(i)} ip saddr {ip_of(i)} accept"


def _timed(ops: list[int], op: Callable[[int], object]) -> list[int]:
    out = []
    for i in ops:
        t0 = time.perf_counter_ns()
        op(i)
        out.append(time.perf_counter_ns() - t0)
    return out


def _handles(text: str) -> dict[str, int]:
    return {mac: int(h) for mac, h in _HANDLE_RE.findall(text)}


class _Flags:
    """Temporarily add libnftables output flags (the Nft binding keeps one context)."""

    def __init__(self, nft: Nft, extra: int) -> None:
        self.nft, self.extra, self.saved = nft, extra, 0

    def __enter__(self) -> None:
        lib, ctx = self.nft._lib, self.nft._ctx
        self.saved = lib.nft_ctx_output_get_flags(ctx)
        lib.nft_ctx_output_set_flags(ctx, self.saved | self.extra)

    def __exit__(self, *exc: object) -> None:
        self.nft._lib.nft_ctx_output_set_flags(self.nft._ctx, self.saved)


def _list_handles(nft: Nft) -> dict[str, int]:
    with _Flags(nft, _OUTPUT_HANDLE):
        return _handles(nft.run(f"list chain inet {RULES} c"))


def _nft_proc(*args: str) -> str:
    proc = subprocess.run(["nft", *args], capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise FirewallError(f"nft {' '.join(args)[:120]} failed: {proc.stderr.strip()[:500]}")
    return proc.stdout


def run(size: int, ops: int, proc_ops: int, base: int) -> dict[str, Any]:
    """Time every approach at ``size`` clients; probes use client numbers from ``base``."""
    nft = Nft()
    if nft.backend != "libnftables":
        raise FirewallError("libnftables.so.1 is not loadable; the comparison needs it")
    res: dict[str, Any] = {"size": size, "ops": ops, "proc_ops": proc_ops}
    t0 = time.perf_counter_ns()
    nft.run(_sets_script(size))
    res["load_sets_ns"] = time.perf_counter_ns() - t0
    t0 = time.perf_counter_ns()
    nft.run(_rules_script(size))
    res["load_rules_ns"] = time.perf_counter_ns() - t0
    try:
        probes = list(range(base, base + ops))
        now = int(time.time())

        # 1. one set element (what a set-based portal needs per client)
        res["set_add"] = _timed(probes, lambda i: nft.run(
            f"add element inet {SETS} auth4 {{ {mac_of(i)} . {ip_of(i)} "
            f"timeout {SESSION_SECONDS}s }}"))
        res["set_del"] = _timed(probes, lambda i: nft.run(
            f"delete element inet {SETS} auth4 {{ {mac_of(i)} . {ip_of(i)} }}"))

        # 2. the daemon's own transactions (planner output), on the scratch table
        def session(i: int) -> Session:
            return Session(mac=mac_of(i), ip=ip_of(i), started=now,
                           expires=now + SESSION_SECONDS, idle_timeout=IDLE_SECONDS,
                           source="manual")

        def retarget(script: str) -> str:
            return script.replace("inet desanet ", f"inet {SETS} ")

        res["txn_add"] = _timed(probes, lambda i: nft.run(retarget(plan_authorize(session(i), now))))
        res["txn_del"] = _timed(probes, lambda i: nft.run(retarget(plan_revoke(mac_of(i), ip_of(i)))))

        # 3. one rule per client, in-process; handles read back untimed (best case)
        res["rule_add"] = _timed(probes, lambda i: nft.run(_rule(i)))
        handles = _list_handles(nft)
        res["rule_del"] = _timed(probes, lambda i: nft.run(
            f"delete rule inet {RULES} c handle {handles[mac_of(i)]}"))

        # 3b. the same add, asking libnftables to echo the new rule's handle
        echo_probes = list(range(base + ops, base + ops + proc_ops))
        with _Flags(nft, _OUTPUT_ECHO | _OUTPUT_HANDLE):
            res["rule_echo_add"] = _timed(echo_probes, lambda i: nft.run(_rule(i)))
        handles = _list_handles(nft)
        for i in echo_probes:
            nft.run(f"delete rule inet {RULES} c handle {handles[mac_of(i)]}")

        # 4. shell-script style: one `nft` process per operation
        sh_probes = list(range(base + ops + proc_ops, base + ops + 2 * proc_ops))
        res["proc_add"] = _timed(sh_probes, lambda i: _nft_proc(_rule(i)))
        handles = _list_handles(nft)
        res["proc_del"] = _timed(sh_probes, lambda i: _nft_proc(
            "delete", "rule", "inet", RULES, "c", "handle", str(handles[mac_of(i)])))

        # 4b. deauth when the script must first find the handle (nft cannot
        #     delete a rule by its match): `nft -a list chain`, then delete.
        for i in sh_probes:
            nft.run(_rule(i))

        def lookup_delete(i: int) -> None:
            h = _handles(_nft_proc("-a", "list", "chain", "inet", RULES, "c"))[mac_of(i)]
            _nft_proc("delete", "rule", "inet", RULES, "c", "handle", str(h))

        res["proc_lookup_del"] = _timed(sh_probes, lookup_delete)

        res["final_rules"] = len(_list_handles(nft))
        data = nft.run_json(f"list set inet {SETS} auth4")
        res["final_set"] = sum(len(x.get("set", {}).get("elem", [])) for x in data)
    finally:
        nft.run(_drop(SETS) + _drop(RULES))
    return res


def _same_netns(name: str) -> bool:
    try:
        return os.stat("/proc/self/ns/net").st_ino == os.stat(Path("/run/netns") / name).st_ino
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--netns", required=True, help="namespace this must run in (safety check)")
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--ops", type=int, default=200)
    ap.add_argument("--proc-ops", type=int, default=30)
    ap.add_argument("--base", type=int, default=1_000_000,
                    help="first client number used for timed operations")
    args = ap.parse_args(argv)
    if not _same_netns(args.netns):
        print(f"refusing to run: not inside network namespace {args.netns!r}", file=sys.stderr)
        return 2
    json.dump(run(args.size, args.ops, args.proc_ops, args.base), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
