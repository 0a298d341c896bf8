"""Portal speed at village scale: 10, 1,000 and 5,000 neighbours on the LAN, against nginx.

Usage (root; builds and removes its own virtual village)::

    .venv/bin/python bench/portal_scale.py [--sizes 10,1000,5000] [--seconds 4] [--prefix bps]

Question: does the portal get slower with every phone in the village? Every
portal page, login and RFC 8908 answer first finds the client's MAC for its
IP address; that lookup must not cost more when the gateway's neighbour
table holds 5,000 entries than when it holds 10.

The lab has ``1 + --login-clients`` client namespaces (DHCP from the
gateway's dnsmasq). For each size N the gateway's LAN interface
(``br-lan``) gets N permanent neighbour entries (``ip -batch`` of ``neigh
replace 10.99.x.y lladdr 02:5c:.. nud permanent`` in the gateway namespace;
between sizes entries are added or deleted). Then, from *load agents* (this
file, ``--agent load``: stdlib asyncio, run with ``ip netns exec`` in a
client namespace), each cell for ``--seconds`` after a one-second warm-up:

* **page**: ``GET /`` (Host portal.desa, an Android user agent, id-ID) on
  ``--conns`` keep-alive connections from c1, which stays unauthorized: the
  login page, as a phone that just joined sees it;
* **captive API**: ``GET /api/captive`` (RFC 8908 JSON) the same way;
* **login**: every other client at once, one connection each, in a loop:
  ``POST /login action=terms`` (timed; a 303 that closes its connection),
  then ``POST /logout`` (not timed), so every login is a real one (SQLite
  commit, nftables and tc), not the redirect a client with a session gets.
  Its rate is logins per second, the logouts' time included.

``--rounds`` rounds go over the sizes, in alternating order (the machine is
shared; drift then hits every size alike). The table shows the median rate
of the rounds and p50 / p99 of all their requests.

Requests per second count the answers with the expected status (200, 303);
anything else is counted and printed, and fails the run. Latency is per
request, p50 / p99, under that closed-loop load.

In the same run, nginx (``/usr/sbin/nginx``, Debian's nginx-light) runs in
the gateway namespace on ``10.42.0.1:--nginx-port`` with a temporary config
(one worker, no access log) and serves the same page and JSON bytes, fetched
from the portal just before, as static files; the same agents measure it.
The bench inserts one rule into the lab gateway's ``lan_input`` chain to let
the clients reach that port (the lab is removed afterwards).

Last, **300 phones arriving at once**: ``--phones`` concurrent phones, from
source addresses added to c1 (the lab LAN is a /24: 149 addresses outside
the DHCP range, so two or three phones share one), each opens a new
connection to an internet address for its OS probe (``GET /generate_204``,
Host connectivitycheck.gstatic.com: nftables redirects it to the portal,
which answers 302), then a new connection to the portal page (200). Most of
these addresses are new to the gateway: its first answer to each waits for
ARP, and the client map learns them from the kernel's events. Reported:
p50 / p99 / max of the probe, the page and the whole arrival, and the SYNs
the gateway dropped because a listen backlog was full (TcpExt ListenDrops;
each costs its phone a 1 s retransmission).

Printed at the end: the table, the rate at the largest size over the rate
at the smallest (goal: the page falls by at most 10 %), the portal over
nginx (goal: at least 0.1x), the phones' p99 (goal: below 1 s), and the
gateway log's warnings and errors. The lab is always removed, also on
failure. To measure other gateway code with this script, unpack it
(``git archive <commit> | tar -x -C /tmp/before``) and run with
``PYTHONPATH=/tmp/before``: the lab starts the daemon from there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
LAN_IP = "10.42.0.1"
LAN_DEV = "br-lan"
PORTAL_HOST = "portal.desa"
PROBE_HOST = "connectivitycheck.gstatic.com"
INTERNET_V4 = "198.51.100.10"  # the lab's internet host: nftables redirects port 80 to the portal
UA = "Mozilla/5.0 (Linux; Android 13; SM-A145F) AppleWebKit/537.36 Chrome/120 Mobile Safari/537.36"
AGENT_TIMEOUT = 10.0
# Phone addresses: the lab LAN 10.42.0.0/24 outside dnsmasq's range (.100-.199) and the gateway (.1).
PHONE_IPS = [f"10.42.0.{k}" for k in (*range(2, 100), *range(200, 251))]


# -- agents: run inside a client namespace, stdlib only ---------------------------------------------


def _request(method: str, path: str, host: str, body: str = "") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"User-Agent: {UA}",
             "Accept-Language: id-ID,id;q=0.9,en;q=0.8", "Accept: */*"]
    if method == "POST":
        lines += ["Content-Type: application/x-www-form-urlencoded", f"Origin: http://{host}",
                  f"Content-Length: {len(body.encode())}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> tuple[int, bool, bytes]:
    """Send one request, read one answer: (status, server closes, body)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    low = head.lower()
    at = low.find(b"\r\ncontent-length:")
    if at < 0:
        raise ValueError("answer without Content-Length")
    length = int(low[at + 17:low.index(b"\r\n", at + 2)])
    body = await reader.readexactly(length) if length else b""
    return status, b"\r\nconnection: close" in low, body


def _form_token(target: str, port: int, host: str) -> str:
    """This client's form token from the portal page (login and logout posts need it)."""
    import http.client
    import re
    c = http.client.HTTPConnection(target, port, timeout=10)
    c.request("GET", "/", headers={"Host": host})
    found = re.search(rb'name="csrf" value="([0-9a-f]*)"', c.getresponse().read())
    c.close()
    return found.group(1).decode() if found else ""


def agent_load(args: argparse.Namespace) -> int:
    """``--conns`` connections, each request after the last answer, for ``--seconds``."""
    body = args.body or ""
    token = ""
    if args.method == "POST" and (args.path in ("/login", "/logout") or args.then_path):
        token = "csrf=" + _form_token(args.target, args.port, args.host)
        body = f"{body}&{token}" if body else token
    request = _request(args.method, args.path, args.host, body)
    # --then-path: a second request after each timed one (not timed): a logout after each login,
    # so that every login is a real one (a client with a session is only redirected).
    then = _request("POST", args.then_path, args.host, token) if args.then_path else b""
    lat: list[int] = []
    status: dict[str, int] = {}
    errors: list[str] = []

    async def conn(deadline: float) -> None:
        reader = writer = None
        while time.monotonic() < deadline:
            t0 = time.monotonic_ns()
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(args.target, args.port), AGENT_TIMEOUT)
                assert reader is not None
                code, closes, _ = await asyncio.wait_for(_exchange(reader, writer, request),
                                                         AGENT_TIMEOUT)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            lat.append(time.monotonic_ns() - t0)
            status[str(code)] = status.get(str(code), 0) + 1
            if closes:
                writer.close()
                reader = writer = None
            if then:
                try:
                    r2, w2 = await asyncio.open_connection(args.target, args.port)
                    code2, _c, _b = await asyncio.wait_for(_exchange(r2, w2, then), AGENT_TIMEOUT)
                    w2.close()
                    if code2 != 303:
                        errors.append(f"{args.then_path}: status {code2}")
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                    errors.append(f"{args.then_path}: {type(exc).__name__}: {exc}")
        if writer is not None:
            writer.close()

    async def main() -> tuple[int, int]:
        t0 = time.monotonic_ns()
        deadline = time.monotonic() + args.seconds
        await asyncio.gather(*(conn(deadline) for _ in range(args.conns)))
        return t0, time.monotonic_ns()

    t0, t1 = asyncio.run(main())
    json.dump({"lat": lat, "status": status, "errors": errors[:5], "n_errors": len(errors),
               "t0": t0, "t1": t1}, sys.stdout)
    return 0


def agent_phones(args: argparse.Namespace) -> int:
    """``--phones`` phones at once: OS probe (new connection), then the portal page (new connection)."""
    sources = args.sources.split(",")
    probe = _request("GET", "/generate_204", PROBE_HOST)
    page = _request("GET", "/?url=http%3A%2F%2Fconnectivitycheck.gstatic.com%2Fgenerate_204",
                    PORTAL_HOST)

    async def fetch(src: str, target: str, request: bytes) -> tuple[int, int, str]:
        t0 = time.monotonic_ns()
        writer = None
        try:
            reader, writer = await asyncio.open_connection(target, 80, local_addr=(src, 0))
            code, _closes, _ = await _exchange(reader, writer, request)
            return code, time.monotonic_ns() - t0, ""
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as exc:
            return 0, time.monotonic_ns() - t0, f"{type(exc).__name__}: {exc}"
        finally:
            if writer is not None:
                writer.close()

    async def phone(k: int, start: asyncio.Event) -> dict[str, Any]:
        src = sources[k % len(sources)]
        await start.wait()
        t0 = time.monotonic_ns()
        p_code, p_lat, p_err = await asyncio.wait_for(fetch(src, args.target_probe, probe),
                                                      AGENT_TIMEOUT)
        g_code, g_lat, g_err = await asyncio.wait_for(fetch(src, args.target, page),
                                                      AGENT_TIMEOUT)
        return {"probe": p_lat, "probe_status": p_code, "page": g_lat, "page_status": g_code,
                "total": time.monotonic_ns() - t0, "error": p_err or g_err}

    async def main() -> list[dict[str, Any]]:
        start = asyncio.Event()
        tasks = [asyncio.create_task(phone(k, start)) for k in range(args.phones)]
        await asyncio.sleep(0)  # every phone waits on the event: then all go at once
        start.set()
        out = []
        for t in tasks:
            try:
                out.append(await t)
            except TimeoutError:
                out.append({"error": "timeout", "probe_status": 0, "page_status": 0})
        return out

    json.dump({"phones": asyncio.run(main())}, sys.stdout)
    return 0


# -- outer ------------------------------------------------------------------------------------------


def pct(values: list[int], p: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in milliseconds."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1] / 1e6


def fmt(ms: float) -> str:
    return "-" if math.isnan(ms) else (f"{ms:.2f}" if ms < 10 else f"{ms:.1f}")


def sh(argv: list[str], timeout: float = 60.0, input_text: str | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input_text,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def in_ns(ns: str, *argv: str, timeout: float = 60.0) -> str:
    return sh(["ip", "netns", "exec", ns, *argv], timeout=timeout)


def fill_ip(i: int) -> str:
    return f"10.99.{i // 250}.{i % 250 + 1}"


def set_neighbours(gw: str, n: int, have: int) -> int:
    """Entries 0..n-1 permanent on the LAN (adds or removes from ``have``); the IPv4 entry count."""
    if n >= have:
        lines = [f"neigh replace {fill_ip(i)} lladdr 02:5c:00:00:{i // 256:02x}:{i % 256:02x} "
                 f"dev {LAN_DEV} nud permanent" for i in range(have, n)]
    else:
        lines = [f"neigh del {fill_ip(i)} dev {LAN_DEV}" for i in range(n, have)]
    if lines:
        sh(["ip", "-n", gw, "-batch", "-"], timeout=120, input_text="\n".join(lines) + "\n")
    return in_ns(gw, "ip", "-4", "neigh", "show", "dev", LAN_DEV).count("\n")


def load_argv(ns: str, *, target: str, port: int, path: str, seconds: float, conns: int,
              method: str = "GET", body: str = "", host: str = PORTAL_HOST,
              then_path: str = "") -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, str(HERE), "--agent", "load",
            "--target", target, "--port", str(port), "--path", path, "--method", method,
            "--host", host, "--body", body, "--seconds", str(seconds), "--conns", str(conns),
            "--then-path", then_path]


def run_agents(argvs: list[list[str]], ok_status: str, seconds: float) -> dict[str, Any]:
    """Run load agents at the same time; their merged figures."""
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for a in argvs]
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"a load agent failed: {stderr.strip()[-500:]}")
        outs.append(json.loads(stdout))
    lat = [x for o in outs for x in o["lat"]]
    secs = (max(o["t1"] for o in outs) - min(o["t0"] for o in outs)) / 1e9
    status: dict[str, int] = {}
    for o in outs:
        for k, v in o["status"].items():
            status[k] = status.get(k, 0) + v
    good = status.get(ok_status, 0)
    bad = sum(v for k, v in status.items() if k != ok_status) + sum(o["n_errors"] for o in outs)
    return {"rate": good / secs, "p50": pct(lat, 50), "p99": pct(lat, 99), "lat": lat,
            "good": good, "bad": bad, "status": status,
            "errors": [e for o in outs for e in o["errors"]][:5]}


CELLS = ("page", "captive", "login")


def measure(lab: Any, cell: str, args: argparse.Namespace, port: int = 80,
            seconds: float | None = None) -> dict[str, Any]:
    """One cell: page or captive API from c1, or logins from every other client at once."""
    secs = args.seconds if seconds is None else seconds
    if cell == "login":
        argvs = [load_argv(c.name, target=LAN_IP, port=port, path="/login", method="POST",
                           body="action=terms&lang=id&url=", then_path="/logout",
                           seconds=secs, conns=1) for c in lab.clients[1:]]
        return run_agents(argvs, "303", secs)
    path = "/" if cell == "page" else "/api/captive"
    return run_agents([load_argv(lab.client(1).name, target=LAN_IP, port=port, path=path,
                                 seconds=secs, conns=args.conns)], "200", secs)


def fetch_bytes(ns: str, path: str) -> bytes:
    code = ("import http.client,sys; c=http.client.HTTPConnection(sys.argv[1],80,timeout=10);"
            "c.request('GET',sys.argv[2],headers={'Host':'portal.desa','User-Agent':sys.argv[3],"
            "'Accept-Language':'id-ID,id;q=0.9,en;q=0.8'});"
            "sys.stdout.buffer.write(c.getresponse().read())")
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, LAN_IP, path, UA],
                          capture_output=True, timeout=30, check=True)
    return proc.stdout


NGINX_CONF = """worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  keepalive_requests 1000000;
  server {{
    listen {ip}:{port};
    root {d}/www;
    location = / {{ default_type "text/html; charset=utf-8"; try_files /index.html =404; }}
    location = /api/captive {{ default_type application/captive+json; try_files /captive.json =404; }}
  }}
}}
"""


def start_nginx(gw: str, port: int, page: bytes, captive: bytes) -> tuple[subprocess.Popen[bytes], str]:
    d = tempfile.mkdtemp(prefix="bps-nginx-")
    os.chmod(d, 0o755)  # the worker runs as nobody and reads www/
    (Path(d) / "www").mkdir()
    (Path(d) / "tmp").mkdir()
    (Path(d) / "www" / "index.html").write_bytes(page)
    (Path(d) / "www" / "captive.json").write_bytes(captive)
    for f in (Path(d) / "www").iterdir():
        os.chmod(f, 0o644)
    os.chmod(Path(d) / "www", 0o755)
    (Path(d) / "nginx.conf").write_text(NGINX_CONF.format(d=d, ip=LAN_IP, port=port))
    in_ns(gw, "nft", "insert", "rule", "inet", "desanet", "lan_input", "tcp", "dport", str(port),
          "accept")
    proc = subprocess.Popen(["ip", "netns", "exec", gw, "/usr/sbin/nginx", "-p", d, "-c",
                             f"{d}/nginx.conf", "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while f":{port} " not in in_ns(gw, "ss", "-Hltn", f"sport = :{port}") + " ":
        if proc.poll() is not None or time.monotonic() > deadline:
            err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
            raise RuntimeError(f"nginx did not start listening: {err}")
        time.sleep(0.05)
    return proc, d


def gateway_log_findings(path: Path) -> dict[str, Any]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    warn = [ln for ln in lines if " WARNING " in ln or "warning" in ln.lower()[:60]]
    err = [ln for ln in lines if " ERROR " in ln or "Traceback" in ln]
    return {"lines": len(lines), "warnings": len(warn), "errors": len(err), "first": (err + warn)[:5]}


def listen_drops(gw: str) -> int:
    """TcpExt ListenDrops of the gateway namespace: SYNs dropped because a backlog was full."""
    lines = in_ns(gw, "cat", "/proc/net/netstat").splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=False))["ListenDrops"])
    return 0


def phones_run(lab: Any, args: argparse.Namespace) -> dict[str, Any]:
    c1 = lab.client(1).name
    sources = PHONE_IPS[:max(1, min(args.phones, len(PHONE_IPS)))]
    batch = "".join(f"addr add {ip}/24 dev eth0\n" for ip in sources)
    sh(["ip", "-n", c1, "-batch", "-"], input_text=batch)
    argv = ["ip", "netns", "exec", c1, sys.executable, str(HERE), "--agent", "phones",
            "--target", LAN_IP, "--target-probe", INTERNET_V4, "--phones", str(args.phones),
            "--sources", ",".join(sources)]
    drops0 = listen_drops(lab.gw)
    out = json.loads(sh(argv, timeout=120))["phones"]
    drops = listen_drops(lab.gw) - drops0
    ok = [x for x in out if x.get("probe_status") == 302 and x.get("page_status") == 200]
    failed = [x for x in out if x not in ok]
    return {
        "phones": len(out), "sources": len(sources), "ok": len(ok), "failed": len(failed),
        "listen_drops": drops,
        "errors": sorted({str(x.get("error") or (x.get("probe_status"), x.get("page_status")))
                          for x in failed})[:5],
        **{f"{part}_{q}": pct([x[part] for x in ok], qv)
           for part in ("probe", "page", "total") for q, qv in (("p50", 50), ("p99", 99),
                                                                 ("max", 100))},
    }


def outer(args: argparse.Namespace) -> int:
    from desanet_lab import LabSpec, lab_down, lab_status, lab_up

    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, Any] = {"args": vars(args), "machine": {
        "cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
        "gateway_code": os.environ.get("PYTHONPATH", "this tree")}}
    t_start = time.perf_counter()
    ok = True
    lab = None
    nginx: subprocess.Popen[bytes] | None = None
    nginx_dir = ""
    log_path = Path()
    rows: list[dict[str, Any]] = []
    try:
        lab = lab_up(LabSpec(prefix=args.prefix, clients=1 + args.login_clients))
        log_path = Path(lab.state_dir) / "gateway.log"
        print(f"lab {args.prefix!r} up: gateway pid {lab.gateway_pid}; {args.seconds:g} s per cell, "
              f"{args.conns} connections; logins from {args.login_clients} clients at once; "
              f"{args.rounds} rounds", flush=True)
        c1 = lab.client(1).name
        have = 0
        samples: dict[tuple[int, str], list[dict[str, Any]]] = {}
        counts: dict[int, int] = {}
        for rnd in range(args.rounds):
            # Alternate the order of the sizes: drift on a shared machine hits all of them alike.
            for n in sizes if rnd % 2 == 0 else sizes[::-1]:
                counts[n] = set_neighbours(lab.gw, n, have)
                have = n
                for cell in CELLS:
                    measure(lab, cell, args, seconds=min(1.0, args.seconds))  # warm-up
                    r = measure(lab, cell, args)
                    samples.setdefault((n, cell), []).append(r)
                    print(f"  round {rnd + 1} N={n:>5} ({counts[n]} IPv4 entries on {LAN_DEV}) "
                          f"{cell:<8} {r['rate']:8.1f} req/s  p50 {fmt(r['p50']):>6} ms  p99 "
                          f"{fmt(r['p99']):>6} ms  ({r['good']} ok, {r['bad']} bad)", flush=True)
                    if r["bad"] or not r["good"]:
                        ok = False
                        print(f"      statuses {r['status']} errors {r['errors'][:3]}")
        for n in sizes:
            row: dict[str, Any] = {"size": n, "entries": counts[n]}
            for cell in CELLS:
                runs = samples[(n, cell)]
                pooled = [x for r in runs for x in r["lat"]]
                row[cell] = {"rate": statistics.median(r["rate"] for r in runs),
                             "rates": [r["rate"] for r in runs],
                             "p50": pct(pooled, 50), "p99": pct(pooled, 99)}
            rows.append(row)
        results["sizes"] = rows
        # nginx with the same bytes, the same agents, the same connections.
        page, captive = fetch_bytes(c1, "/"), fetch_bytes(c1, "/api/captive")
        nginx, nginx_dir = start_nginx(lab.gw, args.nginx_port, page, captive)
        ng: dict[str, Any] = {"page_bytes": len(page), "captive_bytes": len(captive)}
        for cell in ("page", "captive"):
            measure(lab, cell, args, port=args.nginx_port, seconds=min(1.0, args.seconds))
            runs = [measure(lab, cell, args, port=args.nginx_port) for _ in range(args.rounds)]
            pooled = [x for r in runs for x in r["lat"]]
            ng[cell] = {"rate": statistics.median(r["rate"] for r in runs),
                        "rates": [r["rate"] for r in runs],
                        "p50": pct(pooled, 50), "p99": pct(pooled, 99)}
            print(f"  nginx static     {cell:<8} {ng[cell]['rate']:8.1f} req/s  p50 "
                  f"{fmt(ng[cell]['p50']):>6} ms  p99 {fmt(ng[cell]['p99']):>6} ms  "
                  f"({ng[cell + '_bytes']} bytes)", flush=True)
            ok &= all(r["bad"] == 0 and r["good"] > 0 for r in runs)
        results["nginx"] = ng
        nginx.terminate()
        nginx.wait(timeout=20)
        nginx = None
        # 300 phones arriving at once.
        ph = phones_run(lab, args)
        results["phones"] = ph
        print(f"  {ph['phones']} phones at once from {ph['sources']} addresses: {ph['ok']} ok, "
              f"{ph['failed']} failed; probe p50 {fmt(ph['probe_p50'])} / p99 "
              f"{fmt(ph['probe_p99'])} ms, page p50 {fmt(ph['page_p50'])} / p99 "
              f"{fmt(ph['page_p99'])} ms, probe+page p99 {fmt(ph['total_p99'])} / max "
              f"{fmt(ph['total_max'])} ms; SYNs dropped by a full listen backlog: "
              f"{ph['listen_drops']}", flush=True)
        if ph["failed"]:
            ok = False
            print(f"      {ph['errors']}")
        status = lab_status(args.prefix)
        alive = status.gateway_running and status.gateway_pid == lab.gateway_pid
        results["same_daemon"] = alive
        ok &= alive
    finally:
        if nginx is not None and nginx.poll() is None:
            nginx.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                nginx.wait(timeout=20)
        if nginx_dir:
            shutil.rmtree(nginx_dir, ignore_errors=True)
        findings = gateway_log_findings(log_path) if lab is not None else {}
        lab_down(args.prefix)
    results["gateway_log"] = findings

    print("\nportal at village scale (closed loop; rate = answers per second with the expected status)")
    head = (f"  {'entries':>7} {'':<8} {'page/s':>8} {'p50':>6} {'p99':>6}   {'captive/s':>9} "
            f"{'p50':>6} {'p99':>6}   {'login/s':>7} {'p50':>6} {'p99':>6}")
    print(head)
    print("  " + "-" * (len(head) - 2))
    for row in rows:
        cells = "   ".join(f"{row[k]['rate']:{w}.1f} {fmt(row[k]['p50']):>6} {fmt(row[k]['p99']):>6}"
                           for k, w in (("page", 8), ("captive", 9), ("login", 7)))
        print(f"  {row['size']:>7} {'portal':<8} {cells}")
    ng = results.get("nginx", {})
    if ng:
        print(f"  {'':>7} {'nginx':<8} {ng['page']['rate']:8.1f} {fmt(ng['page']['p50']):>6} "
              f"{fmt(ng['page']['p99']):>6}   {ng['captive']['rate']:9.1f} "
              f"{fmt(ng['captive']['p50']):>6} {fmt(ng['captive']['p99']):>6}")
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        for k in ("page", "captive", "login"):
            ratio = last[k]["rate"] / first[k]["rate"] if first[k]["rate"] else math.nan
            print(f"  {k} rate at {last['size']} / at {first['size']} entries: {ratio:.2f}x"
                  + ("  (goal >= 0.90x)" if k == "page" else ""))
            results.setdefault("ratios", {})[f"{k}_{last['size']}_over_{first['size']}"] = ratio
    if ng and rows:
        for k in ("page", "captive"):
            for row in (rows[0], rows[-1]):
                r = row[k]["rate"] / ng[k]["rate"]
                print(f"  portal {k} / nginx static, {row['size']} entries: {r:.3f}x"
                      + ("  (goal >= 0.1x)" if k == "page" else ""))
                results.setdefault("ratios", {})[f"{k}_{row['size']}_over_nginx"] = r
    ph = results.get("phones")
    if ph:
        print(f"  {ph['phones']} phones arriving at once: probe + page p99 {fmt(ph['total_p99'])} ms"
              f" (goal < 1000 ms)")
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
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", default="10,1000,5000", help="neighbour entries on the LAN, growing")
    ap.add_argument("--seconds", type=float, default=4.0, help="measurement per cell (s)")
    ap.add_argument("--conns", type=int, default=8, help="connections for page and captive API")
    ap.add_argument("--login-clients", type=int, default=4,
                    help="clients that log in (and out) at the same time, one connection each")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over the sizes (medians reported)")
    ap.add_argument("--phones", type=int, default=300, help="phones arriving at once")
    ap.add_argument("--nginx-port", type=int, default=8089, help="nginx's port on the LAN address")
    ap.add_argument("--prefix", default="bps", help="lab prefix (namespaces PREFIX-gw, ...)")
    ap.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    ap.add_argument("--agent", choices=("load", "phones"), help=argparse.SUPPRESS)
    ap.add_argument("--target", default=LAN_IP, help=argparse.SUPPRESS)
    ap.add_argument("--target-probe", default=INTERNET_V4, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=80, help=argparse.SUPPRESS)
    ap.add_argument("--path", default="/", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="GET", help=argparse.SUPPRESS)
    ap.add_argument("--host", default=PORTAL_HOST, help=argparse.SUPPRESS)
    ap.add_argument("--body", default="", help=argparse.SUPPRESS)
    ap.add_argument("--sources", default="", help=argparse.SUPPRESS)
    ap.add_argument("--then-path", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.agent == "load":
        return agent_load(args)
    if args.agent == "phones":
        return agent_phones(args)
    if os.geteuid() != 0:
        ap.error("needs root (network namespaces)")
    return outer(args)


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # run the finally blocks: the lab goes down


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
