"""Government-services cache: cached hits, desanet vs nginx ``proxy_cache``.

Usage (root: everything runs in a network namespace this script creates)::

    .venv/bin/python bench/cache_hits.py [--duration 8] [--repeats 3] [--connections 32]

What it does

1. creates the network namespace ``dnbch<pid>`` (loopback only) and starts in
   it, as children of this script:
   - the lab's government origin (lab/desanet_lab/gov_origin.py) on 127.0.0.1:18090;
   - desanet's cache: the ``LocalServices`` application the daemon serves at
     http://layanan.desa/ (same proxy, disk store, outbox and prefetch
     tasks), on 127.0.0.1:18081, one process, one event loop, like the daemon;
   - Debian's nginx with ``proxy_cache`` in front of the same origin on
     127.0.0.1:18082, one worker process, configured to match (below);
2. warms both caches with the two objects and checks the second fetch of each
   is a hit (desanet ``Cache-Status: desanet; hit``, nginx ``X-Cache: HIT``);
3. runs wrk (the same binary, settings and machine for both) against each
   cache in turn, ``--repeats`` times, alternating, and reports the median:
   - small: a 2 KiB object, ``--connections`` keep-alive connections:
     requests/s and p99 latency; then the same with one connection (the
     latency one villager sees when the cache is not busy);
   - big: a 50 MiB object, 4 connections: throughput;
4. checks the origin saw no request for the two objects besides the warm-up
   (every timed request was a hit; the proxy's health probe of ``/`` is
   counted apart) and tears everything down (children by pid, then the
   namespace).

Fairness: the server under test is pinned to CPU 0, wrk and the (idle)
origin to CPU 1 when there are two CPUs or more. nginx runs one worker
(``worker_processes 1``) because the desanet daemon is one process; both
keep their caches under the same temporary directory; both honour the
origin's Cache-Control (nginx with no ``proxy_cache_valid``, so only the
upstream's headers decide), both use a 1 GiB cache, request collapsing
(``proxy_cache_lock``), background refresh and revalidation, and serve stale
on upstream errors. nginx writes no access log, the desanet app none either
(the daemon runs its HTTP server with ``access_log=None`` too).

Needs: root, ``ip``, ``taskset`` (util-linux), ``nginx`` (apt-get install
nginx-light) and ``wrk`` (apt-get install wrk). The script checks and says
what is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

ORIGIN_PORT = 18090
DESANET_PORT = 18081
NGINX_PORT = 18082
BARE_PORT = 18083
SMALL_BYTES = 2048
BIG_MB = 50
SMALL_PATH = f"/dukcapil/big?mb={SMALL_BYTES / 1048576!r}"
BIG_PATH = f"/dukcapil/big?mb={BIG_MB}"
CACHE_SIZE = "1g"

CONFIG_TOML = """
[site]
name = "bench"
village = "bench"

[network]
lan_interface = "br-lan"
wan_interface = "eth0"
lan_address = "10.42.0.1/24"

[dhcp]
range_start = "10.42.0.100"
range_end = "10.42.0.199"

[local_services]
enabled = true
cache_size = "1gb"
request_timeout = "15s"

[[local_services.services]]
slug = "dukcapil"
title_id = "Dukcapil"
title_en = "Population records"
upstream = "http://127.0.0.1:{origin}"
offline_for = "1d"
"""

NGINX_CONF = """
worker_processes 1;
user {user};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy-temp;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    proxy_cache_path {tmp}/nginx-cache levels=1:2 keys_zone=gov:16m max_size={size}
                     inactive=7d use_temp_path=off;
    upstream origin {{ server 127.0.0.1:{origin}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        location /dukcapil/ {{
            proxy_pass http://origin/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host dukcapil.lab;
            proxy_cache gov;
            proxy_cache_lock on;
            proxy_cache_revalidate on;
            proxy_cache_background_update on;
            proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"""


# -- children -------------------------------------------------------------------------------


def serve_origin(port: int) -> None:
    from aiohttp import web

    from desanet_lab import gov_origin

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", gov_origin.handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_desanet(port: int, state_dir: Path, origin: int, hit_path: bool = True) -> None:
    from aiohttp import web

    from gateway.cache.service import LocalServices
    from gateway.config import parse_config_text
    from gateway.daemon import eventloop

    cfg = parse_config_text(CONFIG_TOML.format(origin=origin), source="bench")

    async def main() -> None:
        local = LocalServices(lambda: cfg, state_dir)
        local.hits.enabled = hit_path
        await local.start()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", local.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()
        await local.stop()

    factory, which = eventloop.choose()  # the daemon's loop (DESANET_EVENT_LOOP)
    print(f"desanet: event loop {which}", flush=True)
    eventloop.run(main(), factory)


def serve_bare(port: int) -> None:
    """The ceiling of the HTTP stack: a bare aiohttp handler answering a constant body
    from memory with the daemon's loop and server settings (no cache, no routing work)."""
    from aiohttp import web

    from gateway.daemon import eventloop

    body = b"x" * SMALL_BYTES

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/octet-stream")

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    factory, _ = eventloop.choose()
    eventloop.run(main(), factory)


# -- setup -------------------------------------------------------------------------------------


def missing_requirements() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("root (the bench runs in a network namespace it creates)")
    for tool, pkg in (("ip", "iproute2"), ("taskset", "util-linux"), ("nginx", "nginx-light"),
                      ("wrk", "wrk")):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` (apt-get install {pkg})")
    return problems


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ns = f"dnbch{os.getpid() % 100000}"
        self.tmp = Path(tempfile.mkdtemp(prefix="desanet-cache-bench-"))
        self.children: list[subprocess.Popen[bytes]] = []
        cpus = os.cpu_count() or 1
        self.server_cpu = "0"
        self.client_cpu = "1" if cpus >= 2 else "0"

    def in_ns(self, argv: list[str], cpu: str | None = None) -> list[str]:
        pin = ["taskset", "-c", cpu] if cpu is not None else []
        return ["ip", "netns", "exec", self.ns, *pin, *argv]

    def spawn(self, name: str, argv: list[str], cpu: str | None) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(self.in_ns(argv, cpu), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=str(ROOT))
        log.close()
        self.children.append(proc)
        return proc

    def up(self) -> None:
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True)
        me = [sys.executable, str(Path(__file__).resolve())]
        self.spawn("origin", [*me, "--serve-origin", str(ORIGIN_PORT)], self.client_cpu)
        self.wait_port(ORIGIN_PORT, "origin")
        state = self.tmp / "desanet-state"
        state.mkdir()
        self.spawn("desanet", [*me, "--serve-desanet", str(DESANET_PORT), "--state-dir",
                               str(state), *(["--no-hit-path"] if self.args.no_hit_path else [])],
                   self.server_cpu)
        self.wait_port(DESANET_PORT, "desanet")
        self.spawn("bare", [*me, "--serve-bare", str(BARE_PORT)], self.server_cpu)
        self.wait_port(BARE_PORT, "bare")
        user = "www-data"
        with contextlib.suppress(KeyError, OSError):
            import pwd
            pw = pwd.getpwnam(user)
            for path in (self.tmp, *self.tmp.rglob("*")):
                if not str(path).startswith(str(state)):
                    os.chown(path, pw.pw_uid, pw.pw_gid)
        conf = self.tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, tmp=self.tmp, size=CACHE_SIZE,
                                          origin=ORIGIN_PORT, port=NGINX_PORT))
        check = subprocess.run(self.in_ns(["nginx", "-t", "-e", "stderr", "-p", str(self.tmp),
                                             "-c", str(conf)]),
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise SystemExit(f"nginx rejected the bench config:\n{check.stderr}")
        self.spawn("nginx", ["nginx", "-e", "stderr", "-p", str(self.tmp), "-c", str(conf),
                            "-g", "daemon off;"],
                   self.server_cpu)
        self.wait_port(NGINX_PORT, "nginx")

    def wait_port(self, port: int, what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = subprocess.run(self.in_ns(["curl", "-s", "-o", "/dev/null", "--max-time", "1",
                                           f"http://127.0.0.1:{port}/"]), capture_output=True)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        log = (self.tmp / f"{what}.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"{what} did not start on port {port}; its log:\n{log}")

    def down(self) -> None:
        for proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.children):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        # Anything left in our namespace (nginx's worker) goes by pid.
        pids = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.ns], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- measuring ---------------------------------------------------------------------------

    def curl_headers(self, url: str) -> dict[str, str]:
        out = subprocess.run(self.in_ns(["curl", "-s", "-o", "/dev/null", "-D", "-", url]),
                             capture_output=True, text=True, check=True).stdout
        hdrs = {}
        for line in out.splitlines()[1:]:
            name, _, value = line.partition(":")
            if value:
                hdrs[name.strip().lower()] = value.strip()
        return hdrs

    def warm(self) -> None:
        for name, port, field, hit in (("desanet", DESANET_PORT, "cache-status", "desanet; hit"),
                                       ("nginx", NGINX_PORT, "x-cache", "HIT")):
            for path in (SMALL_PATH, BIG_PATH):
                url = f"http://127.0.0.1:{port}{path}"
                self.curl_headers(url)
                second = self.curl_headers(url)
                if second.get(field) != hit:
                    raise SystemExit(f"{name}: the second GET of {path} was not a hit: {second}")

    def origin_stats(self) -> dict[str, int]:
        out = subprocess.run(self.in_ns(["curl", "-s", f"http://127.0.0.1:{ORIGIN_PORT}/_lab/stats"]),
                             capture_output=True, text=True, check=True).stdout
        data: dict[str, int] = json.loads(out)
        return data

    def wrk(self, url: str, connections: int, duration: int) -> dict[str, float]:
        argv = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration}s", "--latency",
                "--timeout", "10s", url]
        proc = subprocess.run(self.in_ns(argv, self.client_cpu), capture_output=True, text=True,
                              timeout=duration + 60)
        if proc.returncode != 0:
            raise SystemExit(f"wrk failed: {proc.stderr or proc.stdout}")
        return parse_wrk(proc.stdout)


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_BYTES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def parse_wrk(text: str) -> dict[str, float]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    tput = re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?B)", text)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    if not (rps and tput and p99 and p50):
        raise SystemExit(f"cannot read wrk's output:\n{text}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:.*", text)
    if bad or errors:
        raise SystemExit(f"wrk saw failed requests:\n{text}")
    return {
        "rps": float(rps.group(1)),
        "bytes_per_s": float(tput.group(1)) * _BYTES[tput.group(2)],
        "p50_ms": float(p50.group(1)) * _UNITS[p50.group(2)] * 1000,
        "p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)] * 1000,
    }


@contextlib.contextmanager
def bench(args: argparse.Namespace) -> Iterator[Bench]:
    b = Bench(args)
    try:
        b.up()
        yield b
    finally:
        b.down()


def desanet_rss(b: Bench) -> int:
    """RSS of the desanet process (``ip netns exec`` and taskset exec, so the pid is its own)."""
    try:
        import psutil
    except ImportError:
        return 0
    with contextlib.suppress(psutil.Error):
        return int(psutil.Process(b.children[1].pid).memory_info().rss)
    return 0


SERVERS = ("desanet", "nginx", "bare")
PORTS = {"desanet": DESANET_PORT, "nginx": NGINX_PORT, "bare": BARE_PORT}


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        name: {"small": [], "one": [], "big": []} for name in SERVERS}
    with bench(args) as b:
        b.warm()
        warm_stats = b.origin_stats()
        rss_before = desanet_rss(b)
        for rep in range(args.repeats):
            # Rotate the order, so no server always runs right after another one.
            order = SERVERS[rep % 3:] + SERVERS[:rep % 3]
            for name in order:
                port = PORTS[name]
                results[name]["small"].append(
                    b.wrk(f"http://127.0.0.1:{port}{SMALL_PATH}", args.connections, args.duration))
                results[name]["one"].append(
                    b.wrk(f"http://127.0.0.1:{port}{SMALL_PATH}", 1, args.duration))
                if name != "bare":  # the bare handler has no big object
                    results[name]["big"].append(
                        b.wrk(f"http://127.0.0.1:{port}{BIG_PATH}", 4, args.duration))
        rss_after = desanet_rss(b)
        after = b.origin_stats()
        diff = {path: n - warm_stats.get(path, 0) for path, n in after.items()}
        # The origin counts each request twice, by path and by "METHOD path".
        for name in ("/_lab/stats", "GET /_lab/stats"):
            diff[name] = diff.get(name, 0) - 1  # this stats call
        upstream_during = diff.pop("/big", 0)
        other = {path: n for path, n in diff.items()
                 if n and " " in path and not path.endswith(" /big")}
        said = re.search(r"desanet: event loop (.*)", (b.tmp / "desanet.log").read_text())
    return {"results": results, "upstream_during": upstream_during, "upstream_other": other,
            "rss_mb": (rss_before / 1e6, rss_after / 1e6),
            "loop": said.group(1) if said else "event loop unknown"}


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report(args: argparse.Namespace, out: dict[str, Any]) -> None:
    res = out["results"]
    nginx_version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), Linux "
          f"{platform.release()}, Python {platform.python_version()}, {nginx_version}")
    print(f"wrk: 1 thread; small object {SMALL_BYTES} B with {args.connections} connections, "
          f"and 1 connection, {BIG_MB} MiB object with 4 connections; {args.duration} s per run, median of "
          f"{args.repeats}; server on CPU 0, wrk on CPU 1")
    print(f"desanet: {out['loop']}; hit path {'off' if args.no_hit_path else 'on'}; "
          "bare: an aiohttp handler answering the same 2 KiB from memory, same loop")
    print()
    head = (f"{'':34}{'desanet':>12}{'bare':>12}{'nginx':>12}{'desanet/nginx':>15}"
            f"{'bare/nginx':>12}")
    print(head)
    rows = [
        ("small: requests/s", "small", "rps", 1.0, "{:12.0f}"),
        ("small: p50 latency (ms)", "small", "p50_ms", 1.0, "{:12.2f}"),
        ("small: p99 latency (ms)", "small", "p99_ms", 1.0, "{:12.2f}"),
        ("small, 1 connection: requests/s", "one", "rps", 1.0, "{:12.0f}"),
        ("small, 1 connection: p99 (ms)", "one", "p99_ms", 1.0, "{:12.3f}"),
        ("50 MiB: throughput (MB/s)", "big", "bytes_per_s", 1e-6, "{:12.0f}"),
        ("50 MiB: throughput (Gbit/s)", "big", "bytes_per_s", 8e-9, "{:12.2f}"),
    ]
    for label, kind, key, scale, fmt in rows:
        d = median(res["desanet"][kind], key) * scale
        n = median(res["nginx"][kind], key) * scale
        if res["bare"][kind]:
            bare = median(res["bare"][kind], key) * scale
            bare_cols = f"{fmt.format(bare)}"
            ratio = f"{bare / n:12.2f}"
        else:
            bare_cols, ratio = f"{'-':>12}", f"{'-':>12}"
        print(f"{label:34}{fmt.format(d)}{bare_cols}{fmt.format(n)}{d / n:15.2f}{ratio}")
    print()
    print(f"upstream requests for the benchmarked objects during the timed runs: "
          f"{out['upstream_during']} (0 = every timed request was a cache hit)")
    if out["upstream_other"]:
        print(f"other upstream requests (the health probe, HEAD / every 30 s when idle): "
              f"{out['upstream_other']}")
    rb, ra = out["rss_mb"]
    if rb:
        print(f"desanet process RSS: {rb:.0f} MB before, {ra:.0f} MB after the runs")
    if args.json:
        print(json.dumps({k: {kk: v for kk, v in vv.items()} for k, vv in res.items()}, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per cache and object (default 3)")
    ap.add_argument("--connections", type=int, default=32,
                    help="keep-alive connections for the small object (default 32)")
    ap.add_argument("--json", action="store_true", help="also print every run as JSON")
    ap.add_argument("--no-hit-path", action="store_true",
                    help="desanet without its prepared-answer hit path (for a before/after)")
    ap.add_argument("--serve-origin", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--serve-desanet", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--state-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_origin:
        serve_origin(args.serve_origin)
        return 0
    if args.serve_desanet:
        serve_desanet(args.serve_desanet, args.state_dir, ORIGIN_PORT, not args.no_hit_path)
        return 0
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    missing = missing_requirements()
    if missing:
        print("bench/cache_hits.py needs " + "; ".join(missing) + ". Nothing was run.",
              file=sys.stderr)
        return 2
    report(args, run(args))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
