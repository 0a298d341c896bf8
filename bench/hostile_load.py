"""Portal latency for a villager while two others attack the gateway.

Usage (root; builds and removes its own virtual village)::

    .venv/bin/python bench/hostile_load.py [--rounds 3] [--seconds 20] [--prefix bhl] [--json out.json]

Question: when one client holds slow TCP connections to the portal ports
(a slowloris: headers sent one byte at a time) and another floods the DNS
resolver with random names, does a third villager still log in and load the
portal, and does the technician's ``desanet status`` still answer?

The lab has ``--slow-clients`` + 2 client namespaces (DHCP from the gateway's
dnsmasq; shaping on as in every lab). Each role is a small stdlib agent (this
file, ``--agent ...``) started with ``ip netns exec`` in its own namespace:

* **victim** (last client), for the whole run: a cycle of a DNS query for
  ``portal.desa`` to the gateway, ``GET /`` on a new connection, ``POST /login``
  (terms), ``GET /`` again (now the online page) and ``POST /logout``; a pause
  of ``--interval`` between requests. Every request is stamped with
  CLOCK_MONOTONIC (shared by all namespaces) so the outer process can sort the
  samples into windows. Success: DNS answered, ``GET`` 200, ``POST`` 303.
* **slow** (first ``--slow-clients`` clients): opens TCP connections to the
  portal ports (``http_port`` and ``redirect_port``) at up to ``--slow-rate``
  per second, up to ``--slow-conns`` at once, sends ``GET / HTTP/1.1\\r\\n``
  and then one more header byte per connection every ``--slow-byte`` seconds,
  never finishing the headers; each connection the gateway resets or closes is
  replaced. It counts connects, refusals/resets and server closes.
* **dns flood** (one client): UDP queries for random names under random
  domains to the gateway's port 53, ``--dns-rate`` a second (default 2,000,
  100 times the pre-login limit), counting answers.

The run alternates ``--rounds`` times a **baseline window** (the victim alone)
and an **attack window** (attackers started, ``--ramp`` seconds to build up,
then ``--seconds`` measured; attackers stopped, ``--settle`` to drain). Both
windows are ``--seconds`` long. Throughout, a thread in the outer process runs
``desanet status --socket ...`` (the CLI, a new process each time) every
``--status-every`` seconds and records its latency and exit code, then asks
``GET /v1/status`` straight on the control socket (the daemon's own answer
time, without the CLI's interpreter start-up).

At the end it prints, per window, the victim's latency p50 / p99 / max per
request kind and its success rate, the attack/baseline ratios, the attackers'
own counters, the ``desanet status`` latency and failures per window, and the
gateway log's warnings and errors (counted, first ones printed). The lab is
always removed, also on failure. Exit status 1 when the victim's success rate
under attack is below ``--min-success`` or ``desanet status`` failed.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import json
import os
import platform
import random
import re
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from portal_under_load import (  # a sibling script, not a package
    LAN_IP,
    PORTAL_HOST,
    fmt,
    gateway_log_findings,
    lab_api,
    pct,
)

HERE = Path(__file__).resolve()
AGENT_TIMEOUT = 10.0  # seconds per victim request
KINDS = ("dns", "page", "login", "online page", "logout")


# -- agents: run inside a client namespace, stdlib only ---------------------------------------------


def _watch_stdin(stop: threading.Event) -> None:
    for _line in sys.stdin:
        pass
    stop.set()


def _dns_query(name: str, qid: int) -> bytes:
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD set, one question
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return header + labels + struct.pack("!HH", 1, 1)  # A, IN


def agent_victim(args: argparse.Namespace) -> int:
    """Cycle DNS, page, login, online page, logout until stdin closes; samples as JSON."""
    stop = threading.Event()
    threading.Thread(target=_watch_stdin, args=(stop,), daemon=True).start()
    deadline = time.monotonic() + args.max_seconds
    samples: list[list[Any]] = []  # [kind, t0_ns, latency_ns, ok, detail]
    headers = {"Host": PORTAL_HOST, "Accept-Language": "en"}
    post_headers = {**headers, "Content-Type": "application/x-www-form-urlencoded",
                    "Origin": f"http://{PORTAL_HOST}"}
    token = ""
    qid = 0

    def http_req(method: str, path: str, body: str | None, want: int) -> tuple[bool, str, bytes]:
        conn = http.client.HTTPConnection(args.target, 80, timeout=AGENT_TIMEOUT)
        try:
            conn.request(method, path, body=body, headers=post_headers if body else headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status == want, f"HTTP {resp.status}", data
        except (OSError, http.client.HTTPException) as exc:
            return False, f"{type(exc).__name__}: {exc}", b""
        finally:
            conn.close()

    def dns() -> tuple[bool, str]:
        nonlocal qid
        qid = (qid + 1) & 0xFFFF
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2.0)
            try:
                s.sendto(_dns_query(PORTAL_HOST, qid), (args.target, 53))
                while True:
                    data = s.recv(2048)
                    if data[:2] == struct.pack("!H", qid):
                        rcode = data[3] & 0x0F
                        return rcode == 0, f"rcode {rcode}"
            except OSError as exc:
                return False, f"{type(exc).__name__}: {exc}"

    while not stop.is_set() and time.monotonic() < deadline:
        for kind in KINDS:
            if stop.is_set():
                break
            t0 = time.monotonic_ns()
            if kind == "dns":
                ok, detail = dns()
            elif kind in ("page", "online page"):
                ok, detail, data = http_req("GET", "/", None, 200)
                found = re.search(rb'name="csrf" value="([0-9a-f]*)"', data)
                if found:
                    token = found.group(1).decode()
            elif kind == "login":
                ok, detail, _ = http_req("POST", "/login",
                                         f"action=terms&lang=en&url=&csrf={token}", 303)
            else:
                ok, detail, _ = http_req("POST", "/logout", f"csrf={token}", 303)
            samples.append([kind, t0, time.monotonic_ns() - t0, ok, "" if ok else detail])
            stop.wait(args.interval)
    json.dump({"samples": samples}, sys.stdout)
    sys.stdout.write("\n")
    return 0


def agent_slow(args: argparse.Namespace) -> int:
    """Hold slow connections to the portal ports until stdin closes; counters as JSON."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stop = threading.Event()
    threading.Thread(target=_watch_stdin, args=(stop,), daemon=True).start()
    ports = [int(p) for p in args.ports.split(",")]
    sel = selectors.DefaultSelector()
    live: dict[socket.socket, float] = {}  # connected socket -> when its next byte is due
    pending: set[socket.socket] = set()  # connect in progress
    c = {"attempts": 0, "connected": 0, "refused": 0, "closed_by_server": 0, "max_open": 0,
         "bytes": 0, "errors": 0}
    header = b"X-a: " + b"b" * 4000  # never ends: no CRLF
    spent: dict[socket.socket, int] = {}
    t_last = time.monotonic()
    budget = 0.0
    n = 0

    def drop(s: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(s)
        live.pop(s, None)
        pending.discard(s)
        spent.pop(s, None)
        s.close()

    while not stop.is_set():
        now = time.monotonic()
        budget = min(budget + (now - t_last) * args.slow_rate, args.slow_rate)
        t_last = now
        while budget >= 1 and len(live) + len(pending) < args.slow_conns:
            budget -= 1
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            c["attempts"] += 1
            err = s.connect_ex((args.target, ports[n % len(ports)]))
            n += 1
            if err not in (0, errno.EINPROGRESS):
                c["refused" if err == errno.ECONNREFUSED else "errors"] += 1
                s.close()
                if err in (errno.EMFILE, errno.ENFILE):
                    break
                continue
            pending.add(s)
            sel.register(s, selectors.EVENT_WRITE)
        for key, _ev in sel.select(timeout=0.05):
            s = key.fileobj  # type: ignore[assignment]
            assert isinstance(s, socket.socket)
            if s in pending:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    c["refused" if err in (errno.ECONNREFUSED, errno.ECONNRESET) else "errors"] += 1
                    drop(s)
                    continue
                pending.discard(s)
                c["connected"] += 1
                try:
                    s.send(b"GET / HTTP/1.1\r\n")
                except OSError:
                    c["refused"] += 1
                    drop(s)
                    continue
                live[s] = time.monotonic() + args.slow_byte
                spent[s] = 0
                sel.modify(s, selectors.EVENT_READ)
            else:  # readable: the server answered (408/400) or closed
                with contextlib.suppress(OSError):
                    s.recv(4096)
                c["closed_by_server"] += 1
                drop(s)
        c["max_open"] = max(c["max_open"], len(live))
        now = time.monotonic()
        for s, due in list(live.items()):
            if due <= now:
                i = spent[s] % len(header)
                try:
                    s.send(header[i:i + 1])
                    c["bytes"] += 1
                    spent[s] += 1
                    live[s] = now + args.slow_byte
                except OSError:
                    c["closed_by_server"] += 1
                    drop(s)
    for s in list(live) + list(pending):
        drop(s)
    json.dump(c, sys.stdout)
    sys.stdout.write("\n")
    return 0


def agent_dnsflood(args: argparse.Namespace) -> int:
    """Random-name UDP queries to the gateway as fast as possible until stdin closes."""
    stop = threading.Event()
    threading.Thread(target=_watch_stdin, args=(stop,), daemon=True).start()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.connect((args.target, 53))
    rng = random.Random()
    c = {"sent": 0, "answers": 0, "send_errors": 0}
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    t0 = time.monotonic()
    while not stop.is_set():
        for _ in range(64):
            name = "".join(rng.choices(letters, k=12)) + "." + "".join(
                rng.choices(letters, k=8)) + ".com"
            try:
                s.send(_dns_query(name, rng.getrandbits(16)))
                c["sent"] += 1
            except BlockingIOError:
                break
            except OSError:
                c["send_errors"] += 1
                break
        while True:
            try:
                s.recv(2048)
                c["answers"] += 1
            except (BlockingIOError, ConnectionRefusedError):
                break
        if args.dns_rate:  # optional pacing
            ahead = c["sent"] / args.dns_rate - (time.monotonic() - t0)
            if ahead > 0:
                stop.wait(ahead)
    c["seconds"] = time.monotonic() - t0  # type: ignore[assignment]
    s.close()
    json.dump(c, sys.stdout)
    sys.stdout.write("\n")
    return 0


# -- outer: builds the lab, drives the windows -----------------------------------------------------


def agent_argv(ns: str, *extra: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-u", str(HERE), *extra]


def desanet_cli() -> str:
    """The CLI next to this interpreter (the worktree's), else the one on PATH."""
    near = Path(sys.executable).with_name("desanet")
    return str(near) if near.exists() else "desanet"


class StatusProbe(threading.Thread):
    """Runs ``desanet status`` every few seconds, then GET /v1/status on the socket:
    [t0_ns, CLI latency_ns, exit code, error, socket latency_ns, socket error]."""

    def __init__(self, socket_path: str, every: float) -> None:
        super().__init__(daemon=True)
        self.argv = [desanet_cli(), "status", "--socket", socket_path]
        self.socket_path = socket_path
        self.every = every
        self.stop = threading.Event()
        self.samples: list[list[Any]] = []

    def run(self) -> None:
        from gateway.control.client import ControlClient
        from gateway.errors import ControlError

        while not self.stop.is_set():
            t0 = time.monotonic_ns()
            try:
                proc = subprocess.run(self.argv, capture_output=True, text=True, timeout=30,
                                      check=False)
                code, err = proc.returncode, proc.stderr.strip()[-200:]
            except subprocess.TimeoutExpired:
                code, err = -1, "timeout after 30 s"
            lat = time.monotonic_ns() - t0
            # The same question straight on the socket (a new connection): the daemon's own
            # answer time, without the CLI's interpreter start-up.
            t1 = time.monotonic_ns()
            api_err = ""
            client = ControlClient(self.socket_path, timeout=30.0)
            try:
                client.status()
            except (ControlError, OSError) as exc:
                api_err = f"{type(exc).__name__}: {exc}"[:200]
            finally:
                client.close()
            self.samples.append([t0, lat, code, "" if code == 0 else err,
                                 time.monotonic_ns() - t1, api_err])
            self.stop.wait(self.every)


def inside(t: int, windows: list[tuple[int, int]]) -> bool:
    return any(a <= t < b for a, b in windows)


def victim_stats(samples: list[list[Any]], windows: list[tuple[int, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in (*KINDS, "all"):
        mine = [s for s in samples if (kind == "all" or s[0] == kind) and inside(s[1], windows)]
        ok = [s[2] for s in mine if s[3]]
        out[kind] = {"n": len(mine), "ok": len(ok),
                     "success": len(ok) / len(mine) if mine else float("nan"),
                     "p50": pct(ok, 50), "p99": pct(ok, 99), "max": pct(ok, 100),
                     "errors": sorted({str(s[4]) for s in mine if not s[3]})[:4]}
    return out


def status_stats(samples: list[list[Any]], windows: list[tuple[int, int]]) -> dict[str, Any]:
    mine = [s for s in samples if inside(s[0], windows)]
    ok = [s[1] for s in mine if s[2] == 0]
    api_ok = [s[4] for s in mine if not s[5]]
    return {"n": len(mine), "ok": len(ok), "p50": pct(ok, 50), "p99": pct(ok, 99),
            "max": pct(ok, 100), "errors": sorted({str(s[3]) for s in mine if s[2] != 0})[:4],
            "socket": {"ok": len(api_ok), "p50": pct(api_ok, 50), "p99": pct(api_ok, 99),
                       "max": pct(api_ok, 100),
                       "errors": sorted({str(s[5]) for s in mine if s[5]})[:4]}}


def stop_agent(proc: subprocess.Popen[str]) -> dict[str, Any]:
    try:
        stdout, _ = proc.communicate(timeout=60)  # closes stdin: the agent stops
        return dict(json.loads(stdout.strip().splitlines()[-1]))
    except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        proc.kill()
        proc.wait()
        return {"error": f"{type(exc).__name__}: {exc}"}


def ratio(a: float, b: float) -> str:
    return "-" if not (a == a and b == b) or b == 0 else f"{a / b:.2f}x"


def outer(args: argparse.Namespace) -> int:
    lab_mod = lab_api()
    if os.geteuid() != 0:
        print("hostile_load: needs root (network namespaces, nftables)", file=sys.stderr)
        return 1
    print(f"machine: {os.cpu_count()} CPUs, kernel {platform.release()}, "
          f"Python {platform.python_version()}")
    print(f"{args.rounds} rounds of {args.seconds:.0f} s baseline + {args.seconds:.0f} s attack "
          f"({args.ramp:.0f} s ramp); {args.slow_clients} slow client(s) x up to {args.slow_conns} "
          f"connections at {args.slow_rate}/s, one DNS flood client", flush=True)
    t_start = time.perf_counter()
    n_clients = args.slow_clients + 2
    spec = lab_mod.LabSpec(prefix=args.prefix, clients=n_clients, dhcp=True)
    results: dict[str, Any] = {"args": vars(args), "machine": {
        "nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}}
    procs: list[subprocess.Popen[str]] = []
    log_path = f"/run/desanet-lab/{args.prefix}/gateway.log"
    findings: dict[str, Any] = {}
    base_w: list[tuple[int, int]] = []
    attack_w: list[tuple[int, int]] = []
    attackers: list[dict[str, Any]] = []
    status = StatusProbe("", args.status_every)
    victim_out: dict[str, Any] = {"samples": []}
    try:
        print(f"bringing up lab {args.prefix!r} with {n_clients} clients ...", flush=True)
        lab = lab_mod.lab_up(spec)
        log_path = f"{lab.state_dir}/gateway.log"
        ns = [c.name for c in lab.clients]
        slow_ns, flood_ns, victim_ns = ns[:args.slow_clients], ns[-2], ns[-1]
        cfg = lab_mod_config(lab.config_path)
        ports = f"{cfg.get('http_port', 80)},{cfg.get('redirect_port', 2050)}"
        status = StatusProbe(lab.control_socket, args.status_every)
        status.start()
        victim = subprocess.Popen(
            agent_argv(victim_ns, "--agent", "victim", "--target", LAN_IP, "--interval",
                       str(args.interval), "--max-seconds", str(args.max_seconds)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(victim)
        time.sleep(args.settle)
        for k in range(1, args.rounds + 1):
            b0 = time.monotonic_ns()
            time.sleep(args.seconds)
            base_w.append((b0, time.monotonic_ns()))
            running = [subprocess.Popen(
                agent_argv(n, "--agent", "slow", "--target", LAN_IP, "--ports", ports,
                           "--slow-conns", str(args.slow_conns), "--slow-rate",
                           str(args.slow_rate), "--slow-byte", str(args.slow_byte)),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for n in slow_ns]
            running.append(subprocess.Popen(
                agent_argv(flood_ns, "--agent", "dnsflood", "--target", LAN_IP,
                           "--dns-rate", str(args.dns_rate)),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            procs += running
            time.sleep(args.ramp)
            a0 = time.monotonic_ns()
            time.sleep(args.seconds)
            attack_w.append((a0, time.monotonic_ns()))
            got = [stop_agent(p) for p in running]
            for i, g in enumerate(got):
                g["role"] = "slow" if i < len(slow_ns) else "dnsflood"
                g["round"] = k
            attackers += got
            slow = [g for g in got if g["role"] == "slow"]
            fl = got[-1]
            print(f"round {k}: slow: " + "; ".join(
                f"{g.get('attempts', 0)} connects tried, {g.get('connected', 0)} accepted, "
                f"{g.get('refused', 0)} reset/refused, {g.get('closed_by_server', 0)} closed "
                f"by the gateway, at most {g.get('max_open', 0)} open" for g in slow)
                + f" | dns flood: {fl.get('sent', 0)} queries sent "
                f"({fl.get('sent', 0) / max(fl.get('seconds', 1), 1e-9):.0f}/s), "
                f"{fl.get('answers', 0)} answered "
                f"({fl.get('answers', 0) / max(fl.get('seconds', 1), 1e-9):.0f}/s)", flush=True)
            time.sleep(args.settle)
        victim_out = stop_agent(victim)
        status.stop.set()
        status.join(timeout=40)
        findings = gateway_log_findings(log_path)
    finally:
        status.stop.set()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if not findings:
            findings = gateway_log_findings(log_path)
        lab_mod.lab_down(args.prefix)
    samples = victim_out.get("samples", [])
    vb, va = victim_stats(samples, base_w), victim_stats(samples, attack_w)
    sb, sa = status_stats(status.samples, base_w), status_stats(status.samples, attack_w)
    results.update({"victim": {"baseline": vb, "attack": va},
                    "status": {"baseline": sb, "attack": sa, "all": status_stats(
                        status.samples, [(0, 2**63)])},
                    "attackers": attackers, "gateway_log": findings})
    print(f"\nvictim latency, ms (ok answers; {args.interval * 1e3:.0f} ms between requests)")
    head = (f"  {'request':<12} {'window':<9} {'n':>5} {'ok %':>6} {'p50':>7} {'p99':>7} "
            f"{'max':>7}   {'p50 ratio':>9} {'p99 ratio':>9}")
    print(head)
    print("  " + "-" * (len(head) - 2))
    for kind in (*KINDS, "all"):
        for w, st in (("baseline", vb[kind]), ("attack", va[kind])):
            extra = (f"   {ratio(va[kind]['p50'], vb[kind]['p50']):>9} "
                     f"{ratio(va[kind]['p99'], vb[kind]['p99']):>9}") if w == "attack" else ""
            print(f"  {kind:<12} {w:<9} {st['n']:>5} {100 * st['success']:>6.1f} "
                  f"{fmt(st['p50']):>7} {fmt(st['p99']):>7} {fmt(st['max']):>7}{extra}")
            if st["errors"]:
                print(f"      errors: {'; '.join(st['errors'])}")
    print(f"\ndesanet status (CLI, new process each {args.status_every:.1f} s), ms")
    for w, st in (("baseline", sb), ("attack", sa)):
        print(f"  {w:<9} {st['ok']}/{st['n']} answered, p50 {fmt(st['p50'])} p99 "
              f"{fmt(st['p99'])} max {fmt(st['max'])}"
              + (f"; errors: {'; '.join(st['errors'])}" if st["errors"] else ""))
    print(f"  attack / baseline: p50 {ratio(sa['p50'], sb['p50'])}, p99 {ratio(sa['p99'], sb['p99'])}")
    print("GET /v1/status straight on the control socket (new connection), ms")
    for w, st in (("baseline", sb["socket"]), ("attack", sa["socket"])):
        print(f"  {w:<9} {st['ok']}/{(sb if w == 'baseline' else sa)['n']} answered, p50 "
              f"{fmt(st['p50'])} p99 {fmt(st['p99'])} max {fmt(st['max'])}"
              + (f"; errors: {'; '.join(st['errors'])}" if st["errors"] else ""))
    sbs, sas = sb["socket"], sa["socket"]
    print(f"  attack / baseline: p50 {ratio(sas['p50'], sbs['p50'])}, "
          f"p99 {ratio(sas['p99'], sbs['p99'])}")
    print(f"gateway log: {findings.get('lines', 0)} lines, {findings.get('warnings', 0)} warnings, "
          f"{findings.get('errors', 0)} errors")
    for ln in findings.get("first", []):
        print(f"    {ln[:200]}")
    checks = {
        f"victim success under attack >= {args.min_success:.0%}":
            va["all"]["success"] >= args.min_success,
        "desanet status answered every time": sa["n"] > 0 and all(
            s[2] == 0 and not s[5] for s in status.samples),
    }
    ok = True
    for what, good in checks.items():
        print(f"check: {what}: {'OK' if good else 'FAILED'}")
        ok &= good
    results["checks"] = checks
    results["runtime_s"] = time.perf_counter() - t_start
    print(f"\nlab {args.prefix!r} removed; total {results['runtime_s']:.0f} s; "
          f"checks {'passed' if ok else 'FAILED'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


def lab_mod_config(path: str) -> dict[str, Any]:
    """The lab gateway's ``[portal]`` table (for its ports)."""
    import tomllib

    return dict(tomllib.loads(Path(path).read_text()).get("portal", {}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="baseline + attack window pairs")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each measured window")
    ap.add_argument("--ramp", type=float, default=5.0,
                    help="seconds the attack runs before its window opens")
    ap.add_argument("--settle", type=float, default=3.0, help="pause after an attack stops (s)")
    ap.add_argument("--interval", type=float, default=0.05,
                    help="victim's pause between requests (s)")
    ap.add_argument("--slow-clients", type=int, default=1, help="client namespaces attacking")
    ap.add_argument("--slow-conns", type=int, default=5000,
                    help="slow connections each slow client tries to hold at once")
    ap.add_argument("--slow-rate", type=float, default=500.0,
                    help="new connections per second per slow client")
    ap.add_argument("--slow-byte", type=float, default=1.0,
                    help="seconds between two header bytes on a slow connection")
    ap.add_argument("--dns-rate", type=float, default=2000.0,
                    help="DNS flood queries per second (100x the pre-login limit; 0: as fast "
                         "as one process can send, which on a small machine also measures "
                         "the attacker's own CPU use)")
    ap.add_argument("--status-every", type=float, default=1.0,
                    help="seconds between two `desanet status` runs")
    ap.add_argument("--min-success", type=float, default=0.99,
                    help="victim success rate under attack that passes")
    ap.add_argument("--max-seconds", type=float, default=900.0,
                    help="the victim agent stops by itself after this long")
    ap.add_argument("--prefix", default="bhl", help="lab prefix (namespaces PREFIX-gw, ...)")
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    ap.add_argument("--agent", choices=("victim", "slow", "dnsflood"), help=argparse.SUPPRESS)
    ap.add_argument("--target", default=LAN_IP, help=argparse.SUPPRESS)
    ap.add_argument("--ports", default="80,2050", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.agent == "victim":
        return agent_victim(args)
    if args.agent == "slow":
        return agent_slow(args)
    if args.agent == "dnsflood":
        return agent_dnsflood(args)
    if args.rounds < 1 or args.slow_clients < 1 or args.seconds <= 0:
        ap.error("--rounds and --slow-clients must be >= 1, --seconds > 0")
    return outer(args)


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # run the finally blocks: the lab goes down


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
