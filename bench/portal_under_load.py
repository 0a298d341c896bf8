"""Portal page latency while 100 clients log in and the config is reloaded.

Usage (root; builds and removes its own virtual village)::

    .venv/bin/python bench/portal_under_load.py [--rounds 10] [--prefix bpl] [--json out.json]

Question: does a villager who opens the portal page notice when many others
log in at the same moment and the technician changes the terms text?

The lab has ``2 + --portal-clients`` client namespaces (DHCP from the
gateway's dnsmasq, shaping on as in every lab). Two *probe agents* run for the
whole measurement, each a small stdlib script (this file, ``--agent probe``)
started with ``ip netns exec`` in its own client namespace:

* ``c1`` (keep-alive): ``GET /`` with ``Host: portal.desa`` to the gateway's
  LAN address, all on ONE keep-alive connection, so a restart of the portal
  listener shows up as a dropped connection;
* ``c2`` (new connection): the same page, a new TCP connection per request, as
  a phone that opens the portal.

Each sends one request, waits ``--interval`` and sends the next, and stamps
every request with CLOCK_MONOTONIC (shared by all namespaces), so the outer
process can sort the samples into windows afterwards. Then ``--rounds``
rounds, each:

1. **load window**: at the same moment (a barrier) ``--api-logins`` control
   API authorizations (``POST /v1/clients/auth``, each on its own new
   connection, LAN addresses 10.42.0.2.. with MACs 02:b1:...), and in each of
   ``--portal-clients`` client namespaces a *login agent* that runs
   ``--cycles`` portal terms logins (``POST /login action=terms``, then
   ``POST /logout``); and ``--reload-delay`` seconds later one config change of
   ``portal.terms_en`` only, alternately through ``POST /v1/config/apply`` and
   through the config file + ``POST /v1/reload``. Defaults: 80 + 4 x 5 = 100
   logins per round. The window closes when all of it has answered.
2. untimed: the API clients are deauthorized again;
3. **baseline window**: nothing but the probes, as long as the load window
   was (at least ``--min-idle`` s).

At the end it prints page latency p50 / p90 / p99 / max per probe for the
baseline and the load windows and their ratio, the login and reload
latencies, and counts every non-200 page answer, failed request and
dropped keep-alive connection (there must be none: a terms-only reload
leaves the portal listeners alone). Checks: every login and reload
succeeded, the last terms text is on the page, the portal's listening
socket (inode, from ``ss``) is the same before and after, and the daemon
is the same process. The gateway log's warnings and errors are counted
and the first ones printed. The lab is always removed, also on failure.

Run against the code before Step 4 (no config apply, a reload is SIGHUP)
with ``--reload sighup`` from a checkout of that commit on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
LAN_IP = "10.42.0.1"
PORTAL_HOST = "portal.desa"
API_MAC = "02:b1:00:00:{:02x}:{:02x}"
API_IP = "10.42.0.{}"  # .2 .. .99: below the lab's DHCP range (.100-.199)
AGENT_TIMEOUT = 10.0  # seconds per HTTP request inside the lab
DROP_ERRORS = (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine,
               BrokenPipeError)


# -- agents: run inside a client namespace, stdlib only ---------------------------------------------


def _stdin_closed(stop: threading.Event) -> None:
    for _line in sys.stdin:
        pass
    stop.set()


def agent_probe(args: argparse.Namespace) -> int:
    """GET the page until stdin closes (or --max-seconds); print the samples as JSON."""
    stop = threading.Event()
    threading.Thread(target=_stdin_closed, args=(stop,), daemon=True).start()
    deadline = time.monotonic() + args.max_seconds
    samples: list[list[Any]] = []  # [t0_ns, latency_ns, status or 0, error or "", connection no]
    conn: http.client.HTTPConnection | None = None
    conn_no = 0
    headers = {"Host": PORTAL_HOST, "Accept-Language": "en"}
    while not stop.is_set() and time.monotonic() < deadline:
        if conn is None:
            conn = http.client.HTTPConnection(args.target, 80, timeout=AGENT_TIMEOUT)
            conn_no += 1
        t0 = time.monotonic_ns()
        status, error = 0, ""
        try:
            conn.request("GET", args.path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            status = resp.status
            if resp.will_close:
                error = "server_closed"  # answered, but the server ends the connection
        except DROP_ERRORS as exc:
            error = f"dropped: {type(exc).__name__}: {exc}"
        except TimeoutError as exc:
            error = f"timeout: {exc}"
        except OSError as exc:
            error = f"oserror: {type(exc).__name__}: {exc}"
        samples.append([t0, time.monotonic_ns() - t0, status, error, conn_no])
        if error or not args.keepalive:
            conn.close()
            conn = None
        stop.wait(args.interval)
    if conn is not None:
        conn.close()
    json.dump({"samples": samples, "connections": conn_no}, sys.stdout)
    sys.stdout.write("\n")
    return 0


def _post(target: str, path: str, body: str) -> tuple[int, int, str]:
    """One form POST on a new connection: (latency ns, status, error)."""
    conn = http.client.HTTPConnection(target, 80, timeout=AGENT_TIMEOUT)
    t0 = time.monotonic_ns()
    try:
        conn.request("POST", path, body=body, headers={
            "Host": PORTAL_HOST, "Content-Type": "application/x-www-form-urlencoded",
            "Origin": f"http://{PORTAL_HOST}"})
        resp = conn.getresponse()
        resp.read()
        return time.monotonic_ns() - t0, resp.status, ""
    except (OSError, http.client.HTTPException) as exc:
        return time.monotonic_ns() - t0, 0, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def _form_token(target: str) -> str:
    conn = http.client.HTTPConnection(target, 80, timeout=AGENT_TIMEOUT)
    try:
        conn.request("GET", "/", headers={"Host": PORTAL_HOST})
        found = re.search(rb'name="csrf" value="([0-9a-f]*)"', conn.getresponse().read())
    finally:
        conn.close()
    return found.group(1).decode() if found else ""


def agent_login(args: argparse.Namespace) -> int:
    """For every "go N" line on stdin: N terms logins + logouts; one JSON line per go."""
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] != "go":
            continue
        out: dict[str, Any] = {"login": [], "logout": [], "failures": [], "t0": time.monotonic_ns()}
        token = "csrf=" + _form_token(args.target)  # the forms' token, bound to this client
        for _ in range(int(parts[1])):
            for name, path, body in (("login", "/login", f"action=terms&lang=en&url=&{token}"),
                                     ("logout", "/logout", token)):
                lat, status, err = _post(args.target, path, body)
                out[name].append(lat)
                if status != 303 or err:
                    out["failures"].append(f"{name}: status {status} {err}".strip())
        out["t1"] = time.monotonic_ns()
        print(json.dumps(out), flush=True)
    return 0


# -- outer: builds the lab, drives the rounds --------------------------------------------------------


def pct(values: list[int], p: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in milliseconds."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1] / 1e6


def fmt(ms: float) -> str:
    return "-" if math.isnan(ms) else (f"{ms:.2f}" if ms < 10 else f"{ms:.1f}")


def lab_api() -> Any:
    """desanet_lab (Step 4 and later), or gateway.lab (the code before it)."""
    try:
        import gateway.lab as lab_mod  # type: ignore[import-not-found]  # before Step 4
    except ImportError:
        import desanet_lab as lab_mod
    return lab_mod


def agent_argv(ns: str, *extra: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-u", str(HERE), *extra]


def listen_inode(gw_ns: str) -> str:
    """Inode of the portal's listening socket on LAN_IP:80 ("" when none)."""
    proc = subprocess.run(["ip", "netns", "exec", gw_ns, "ss", "-Hltne", f"src {LAN_IP}:80"],
                          capture_output=True, text=True, timeout=20, check=False)
    m = re.search(r"ino:(\d+)", proc.stdout)
    return m.group(1) if m else ""


def page_text(ns: str, path: str) -> str:
    code = ("import http.client,sys; c=http.client.HTTPConnection(sys.argv[1],80,timeout=10);"
            "c.request('GET',sys.argv[2],headers={'Host':'portal.desa','Accept-Language':'en'});"
            "sys.stdout.write(c.getresponse().read().decode())")
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, LAN_IP, path],
                          capture_output=True, text=True, timeout=30, check=False)
    return proc.stdout


class Round:
    """One load window: API logins, portal logins and one terms-only reload."""

    def __init__(self, k: int, args: argparse.Namespace, socket_path: str, config_path: str,
                 pid: int | None, login_agents: list[subprocess.Popen[str]]) -> None:
        self.k, self.args = k, args
        self.socket_path, self.config_path, self.pid = socket_path, config_path, pid
        self.agents = login_agents
        self.lock = threading.Lock()
        self.api_lat: list[int] = []
        self.api_fail: list[str] = []
        self.reload: dict[str, Any] = {}
        self.terms = f"Terms of round {k}: use the internet wisely (bench {os.getpid()})."

    def method(self) -> str:
        if self.args.reload != "alternate":
            return str(self.args.reload)
        return "apply" if self.k % 2 else "reload"

    def api_login(self, i: int, barrier: threading.Barrier) -> None:
        from gateway.control.client import ControlClient
        from gateway.errors import ControlError

        c = ControlClient(self.socket_path, timeout=120.0)
        try:
            barrier.wait()
            t0 = time.monotonic_ns()
            c.request("POST", "/v1/clients/auth",
                      {"mac": API_MAC.format(i // 256, i % 256), "ip": API_IP.format(2 + i)})
            with self.lock:
                self.api_lat.append(time.monotonic_ns() - t0)
        except (ControlError, OSError, threading.BrokenBarrierError) as exc:
            with self.lock:
                self.api_fail.append(str(exc))
        finally:
            c.close()

    def new_text(self) -> str:
        import tomllib

        import tomli_w

        data = tomllib.loads(Path(self.config_path).read_text())
        data.setdefault("portal", {})["terms_en"] = self.terms
        return tomli_w.dumps(data)

    def do_reload(self, barrier: threading.Barrier | None) -> None:
        from gateway.control.client import ControlClient
        from gateway.errors import ControlError

        method = self.method()
        text = self.new_text()
        c = ControlClient(self.socket_path, timeout=120.0)
        out: dict[str, Any] = {"method": method}
        try:
            if barrier is not None:  # None: a reload on its own, no load
                barrier.wait()
                time.sleep(self.args.reload_delay)
            t0 = time.monotonic_ns()
            if method == "apply":
                ans = c.config_apply(text, by="bench")
                out["changes"] = [ch.path for ch in ans.changes]
            elif method == "reload":
                Path(self.config_path).write_text(text)
                ans2 = c.reload(by="bench")
                out["changes"] = [str(ch.path) for ch in ans2.changes]
            else:  # sighup (the code before Step 4): no answer; wait for the log line
                log = Path(self.config_path).with_name("gateway.log")
                before = log.read_text(errors="replace").count("config reloaded")
                Path(self.config_path).write_text(text)
                assert self.pid is not None
                os.kill(self.pid, signal.SIGHUP)
                deadline = time.monotonic() + 180.0
                while log.read_text(errors="replace").count("config reloaded") == before:
                    if time.monotonic() > deadline:
                        raise OSError("no 'config reloaded' in the log 180 s after SIGHUP")
                    time.sleep(0.05)
                out["changes"] = ["?"]
            out["t0"], out["t1"] = t0, time.monotonic_ns()
            out["ok"] = True
        except (ControlError, OSError, threading.BrokenBarrierError) as exc:
            out["ok"], out["error"] = False, str(exc)
            out.setdefault("t0", time.monotonic_ns())
            out["t1"] = time.monotonic_ns()
        finally:
            c.close()
        self.reload = out

    def run(self) -> dict[str, Any]:
        a = self.args
        barrier = threading.Barrier(a.api_logins + 2)
        threads = [threading.Thread(target=self.api_login, args=(i, barrier))
                   for i in range(a.api_logins)]
        threads.append(threading.Thread(target=self.do_reload, args=(barrier,)))
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.monotonic_ns()
        for agent in self.agents:
            assert agent.stdin is not None
            agent.stdin.write(f"go {a.cycles}\n")
            agent.stdin.flush()
        portal: list[dict[str, Any]] = []
        for agent in self.agents:
            assert agent.stdout is not None
            line = agent.stdout.readline()
            portal.append(json.loads(line) if line else {"failures": ["agent died"],
                                                          "login": [], "logout": []})
        for t in threads:
            t.join()
        t1 = time.monotonic_ns()
        return {"t0": t0, "t1": t1, "api_lat": self.api_lat, "api_fail": self.api_fail,
                "portal": portal, "reload": self.reload, "method": self.method(),
                "terms": self.terms}

    def cleanup(self) -> list[str]:
        """Deauthorize the API clients again (untimed); return failures."""
        from gateway.control.client import ControlClient
        from gateway.errors import ControlError

        fails = []
        c = ControlClient(self.socket_path, timeout=60.0)
        try:
            for i in range(self.args.api_logins):
                try:
                    c.request("POST", "/v1/clients/deauth",
                              {"mac": API_MAC.format(i // 256, i % 256)})
                except ControlError as exc:
                    fails.append(str(exc))
        finally:
            c.close()
        return fails


def window_stats(samples: list[list[Any]], windows: list[tuple[int, int]]) -> dict[str, Any]:
    inside = [s for s in samples if any(a <= s[0] < b for a, b in windows)]
    ok = [s[1] for s in inside if s[2] == 200 and not s[3]]
    bad_status = [s for s in inside if s[2] not in (0, 200)]
    failed = [s for s in inside if s[2] == 0]
    closed = [s for s in inside if s[3] == "server_closed"]
    return {"n": len(inside), "ok": len(ok), "non_200": len(bad_status), "failed": len(failed),
            "server_closed": len(closed),
            "errors": sorted({str(s[3]) for s in failed + closed} | {f"HTTP {s[2]}" for s in bad_status}),
            "p50": pct(ok, 50), "p90": pct(ok, 90), "p99": pct(ok, 99), "max": pct(ok, 100)}


def gateway_log_findings(path: str) -> dict[str, Any]:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as exc:
        return {"error": str(exc), "warnings": 0, "errors": 0, "first": []}
    warn = [ln for ln in lines if " WARNING " in ln]
    err = [ln for ln in lines if re.search(r" (ERROR|CRITICAL) |Traceback", ln)]
    return {"lines": len(lines), "warnings": len(warn), "errors": len(err),
            "first": (err + warn)[:8]}


def outer(args: argparse.Namespace) -> int:
    lab_mod = lab_api()
    if os.geteuid() != 0:
        print("portal_under_load: needs root (network namespaces, nftables)", file=sys.stderr)
        return 1
    total_logins = args.api_logins + args.portal_clients * args.cycles
    print(f"machine: {os.cpu_count()} CPUs, kernel {platform.release()}, "
          f"Python {platform.python_version()}, lab module {lab_mod.__name__}")
    print(f"{args.rounds} rounds; per round {args.api_logins} control API logins + "
          f"{args.portal_clients} clients x {args.cycles} portal terms logins = {total_logins} "
          f"logins and one terms-only reload ({args.reload})", flush=True)
    t_start = time.perf_counter()
    n_clients = 2 + args.portal_clients
    spec = lab_mod.LabSpec(prefix=args.prefix, clients=n_clients, dhcp=True)
    procs: list[subprocess.Popen[str]] = []
    results: dict[str, Any] = {"args": vars(args), "machine": {
        "nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}}
    ok = True
    log_path = f"/run/desanet-lab/{args.prefix}/gateway.log"
    findings: dict[str, Any] = {}
    try:
        print(f"bringing up lab {args.prefix!r} with {n_clients} clients ...", flush=True)
        lab = lab_mod.lab_up(spec)
        log_path = f"{lab.state_dir}/gateway.log"
        ns = [c.name for c in lab.clients]
        pid = lab.gateway_pid
        inode0 = listen_inode(lab.gw)
        max_s = str(args.max_seconds)
        probes = {
            "keep-alive": subprocess.Popen(
                agent_argv(ns[0], "--agent", "probe", "--keepalive", "--target", LAN_IP,
                           "--interval", str(args.interval), "--max-seconds", max_s),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True),
            "new connection": subprocess.Popen(
                agent_argv(ns[1], "--agent", "probe", "--target", LAN_IP,
                           "--interval", str(args.interval), "--max-seconds", max_s),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True),
        }
        procs += probes.values()
        logins = [subprocess.Popen(agent_argv(n, "--agent", "login", "--target", LAN_IP),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                  for n in ns[2:]]
        procs += logins
        for agent in logins:
            assert agent.stdout is not None
            if not agent.stdout.readline():
                raise RuntimeError("a login agent did not start")
        time.sleep(args.warmup)
        load_w: list[tuple[int, int]] = []
        idle_w: list[tuple[int, int]] = []
        reload_w: list[tuple[int, int]] = []
        quiet_w: list[tuple[int, int]] = []
        rounds = []
        for k in range(1, args.rounds + 1):
            rnd = Round(k, args, lab.control_socket, lab.config_path, pid, logins)
            r = rnd.run()
            load_w.append((r["t0"], r["t1"]))
            rl = r["reload"]
            reload_w.append((rl["t0"], rl["t1"] + int(args.after_reload * 1e9)))
            r["cleanup_fail"] = rnd.cleanup()
            time.sleep(args.settle)
            length = max(args.min_idle, (r["t1"] - r["t0"]) / 1e9)
            i0 = time.monotonic_ns()
            time.sleep(length)
            idle_w.append((i0, time.monotonic_ns()))
            time.sleep(args.settle)
            pf = [f for p in r["portal"] for f in p["failures"]]
            login_ok = sum(len(p["login"]) for p in r["portal"]) - sum(
                f.startswith("login") for f in pf)
            print(f"round {k:>2}: load {(r['t1'] - r['t0']) / 1e9:.2f} s, "
                  f"{len(r['api_lat'])}/{args.api_logins} API logins ok "
                  f"(p50 {fmt(pct(r['api_lat'], 50))} ms), portal logins "
                  f"{login_ok}/{args.portal_clients * args.cycles} ok, "
                  f"reload {rl['method']} {'ok' if rl.get('ok') else 'FAILED'} in "
                  f"{(rl['t1'] - rl['t0']) / 1e6:.0f} ms {rl.get('changes', rl.get('error'))}",
                  flush=True)
            if r["api_fail"] or pf or not rl.get("ok") or r["cleanup_fail"]:
                ok = False
                for f in (r["api_fail"] + pf + r["cleanup_fail"])[:3]:
                    print(f"    failure: {f}")
            if rl.get("ok") and args.reload != "sighup" and rl.get("changes") != ["portal.terms_en"]:
                ok = False
                print(f"    the reload changed {rl.get('changes')}, expected only portal.terms_en")
            rounds.append(r)
        # The same reload with no load at all (the probes still run): what it costs alone.
        quiet: list[dict[str, Any]] = []
        for j in range(args.idle_reloads):
            rnd = Round(args.rounds + 1 + j, args, lab.control_socket, lab.config_path, pid, [])
            rnd.do_reload(None)
            rnd.reload["terms"] = rnd.terms
            quiet.append(rnd.reload)
            quiet_w.append((rnd.reload["t0"], rnd.reload["t1"] + int(args.after_reload * 1e9)))
            time.sleep(max(args.after_reload, 0.5))
            if not rnd.reload.get("ok"):
                ok = False
                print(f"    reload alone FAILED: {rnd.reload.get('error')}")
        results["quiet_reloads"] = quiet
        last_terms = quiet[-1]["terms"] if quiet else rounds[-1]["terms"] if rounds else ""
        for agent in logins:
            assert agent.stdin is not None
            agent.stdin.close()
            agent.wait(timeout=30)
        out = {}
        for name, proc in probes.items():
            stdout, _ = proc.communicate(timeout=60)  # closes stdin: the probe stops
            out[name] = json.loads(stdout)
        page = page_text(ns[0], "/?lang=en")
        inode1 = listen_inode(lab.gw)
        status = lab_mod.lab_status(args.prefix)
        checks = {
            "last terms text on the page": bool(last_terms) and last_terms in page,
            "same portal listening socket (inode)": bool(inode0) and inode0 == inode1,
            "same daemon process": status.gateway_running and status.gateway_pid == pid,
        }
        findings = gateway_log_findings(log_path)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if not findings:
            findings = gateway_log_findings(log_path)
        lab_mod.lab_down(args.prefix)
    results["rounds"] = rounds
    results["checks"] = checks
    results["gateway_log"] = findings
    print(f"\nportal page GET / latency, ms (ok answers only; interval {args.interval * 1e3:.0f} ms "
          f"between requests per probe)")
    head = (f"  {'probe':<15} {'window':<12} {'n':>5} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}"
            f"  {'non-200':>7} {'failed':>6} {'closed':>6}")
    print(head)
    print("  " + "-" * (len(head) - 2))
    results["probes"] = {}
    for name, data in out.items():
        stats = {"baseline": window_stats(data["samples"], idle_w),
                 "load": window_stats(data["samples"], load_w),
                 "reload": window_stats(data["samples"], reload_w),
                 "quiet reload": window_stats(data["samples"], quiet_w),
                 "all": window_stats(data["samples"], [(0, 2**63)])}
        stats["connections"] = data["connections"]
        results["probes"][name] = stats
        for w in ("baseline", "load", "reload", "quiet reload", "all"):
            s = stats[w]
            print(f"  {name:<15} {w:<12} {s['n']:>5} {fmt(s['p50']):>7} {fmt(s['p90']):>7} "
                  f"{fmt(s['p99']):>7} {fmt(s['max']):>7}  {s['non_200']:>7} {s['failed']:>6} "
                  f"{s['server_closed']:>6}")
            if s["errors"]:
                print(f"      {w} errors: {'; '.join(s['errors'][:3])}")
        b, lo = stats["baseline"], stats["load"]
        print(f"  {name:<15} load / baseline: p50 {lo['p50'] / b['p50']:.2f}x, "
              f"p99 {lo['p99'] / b['p99']:.2f}x")
        bad = stats["all"]["non_200"] + stats["all"]["failed"] + stats["all"]["server_closed"]
        if bad:
            ok = False
        if name == "keep-alive":
            print(f"  keep-alive probe used {data['connections']} connection(s) "
                  f"(1 = never dropped)")
            ok &= data["connections"] == 1
    api = [x for r in rounds for x in r["api_lat"]]
    plog = [x for r in rounds for p in r["portal"] for x in p["login"]]
    pout = [x for r in rounds for p in r["portal"] for x in p["logout"]]
    rel = {m: [r["reload"]["t1"] - r["reload"]["t0"] for r in rounds
               if r["method"] == m and r["reload"].get("ok")] for m in ("apply", "reload", "sighup")}
    loads = [(r["t1"] - r["t0"]) / 1e9 for r in rounds]
    print("\nload, ms: " + ", ".join(
        f"{n} p50 {fmt(pct(v, 50))} / p99 {fmt(pct(v, 99))} (n={len(v)})"
        for n, v in (("API login (100 at once)", api), ("portal login", plog),
                     ("portal logout", pout)) if v))
    print("reload under load, ms: " + ", ".join(
        f"{m} p50 {fmt(pct(v, 50))} / max {fmt(pct(v, 100))} (n={len(v)})"
        for m, v in rel.items() if v))
    qrel = {m: [q["t1"] - q["t0"] for q in quiet if q["method"] == m and q.get("ok")]
            for m in ("apply", "reload", "sighup")}
    print("reload alone, ms: " + ", ".join(
        f"{m} p50 {fmt(pct(v, 50))} / max {fmt(pct(v, 100))} (n={len(v)})"
        for m, v in qrel.items() if v))
    if loads:
        print(f"load window: {min(loads):.2f}-{max(loads):.2f} s per round")
    results["load"] = {"api": {"p50": pct(api, 50), "p99": pct(api, 99)},
                       "portal_login": {"p50": pct(plog, 50), "p99": pct(plog, 99)},
                       "reload_ms": {m: [x / 1e6 for x in v] for m, v in rel.items()},
                       "quiet_reload_ms": {m: [x / 1e6 for x in v] for m, v in qrel.items()},
                       "window_s": loads}
    for what, good in checks.items():
        print(f"check: {what}: {'OK' if good else 'FAILED'}")
        ok &= good
    print(f"gateway log: {findings.get('lines', 0)} lines, {findings.get('warnings', 0)} warnings, "
          f"{findings.get('errors', 0)} errors")
    for ln in findings.get("first", []):
        print(f"    {ln[:200]}")
    results["runtime_s"] = time.perf_counter() - t_start
    print(f"\nlab {args.prefix!r} removed; total {results['runtime_s']:.0f} s; "
          f"checks {'passed' if ok else 'FAILED'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="load rounds (each with a reload)")
    ap.add_argument("--api-logins", type=int, default=80,
                    help="concurrent control API logins per round (at most 98)")
    ap.add_argument("--portal-clients", type=int, default=4,
                    help="client namespaces that log in through the portal")
    ap.add_argument("--cycles", type=int, default=5,
                    help="portal terms login + logout cycles per client and round")
    ap.add_argument("--reload", choices=("alternate", "apply", "reload", "sighup"),
                    default="alternate", help="how the terms text changes (sighup: old code)")
    ap.add_argument("--idle-reloads", type=int, default=4,
                    help="reloads with no load after the rounds (the reload's own cost)")
    ap.add_argument("--reload-delay", type=float, default=0.05,
                    help="seconds after the logins start")
    ap.add_argument("--after-reload", type=float, default=0.5,
                    help="seconds after the reload's answer still counted as its window")
    ap.add_argument("--interval", type=float, default=0.01, help="pause between page requests (s)")
    ap.add_argument("--min-idle", type=float, default=1.5, help="shortest baseline window (s)")
    ap.add_argument("--settle", type=float, default=0.3, help="pause around baseline windows (s)")
    ap.add_argument("--warmup", type=float, default=1.0, help="probe seconds before round 1")
    ap.add_argument("--max-seconds", type=float, default=600.0,
                    help="probe agents stop by themselves after this long")
    ap.add_argument("--prefix", default="bpl", help="lab prefix (namespaces PREFIX-gw, ...)")
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    ap.add_argument("--agent", choices=("probe", "login"), help=argparse.SUPPRESS)
    ap.add_argument("--target", default=LAN_IP, help=argparse.SUPPRESS)
    ap.add_argument("--path", default="/", help=argparse.SUPPRESS)
    ap.add_argument("--keepalive", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.agent == "probe":
        return agent_probe(args)
    if args.agent == "login":
        return agent_login(args)
    if not 1 <= args.api_logins <= 98 or args.portal_clients < 0 or args.rounds < 1:
        ap.error("--api-logins must be 1..98, --rounds >= 1, --portal-clients >= 0")
    return outer(args)


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # run the finally blocks: the lab goes down


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
