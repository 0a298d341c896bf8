"""The daemon's memory and idle CPU with MQTT telemetry on, against the same daemon with it off.

What runs
---------
Two virtual villages (desanet_lab), one after the other, each with the real daemon in its
gateway namespace, one client namespace, no DHCP traffic and no logins (idle):

- **mqtt off**: ``desanet lab up --no-broker`` (``[telemetry]`` disabled);
- **mqtt on**: the lab's Mosquitto in the WAN namespace as the region's broker (TLS with
  the lab's CA, a device certificate, ACLs) and ``[telemetry]`` on at the production
  defaults (keepalive 30m, a sample a minute, a report every 5 minutes, batches hourly;
  only the start delay is 0), so the daemon runs its paho network thread, its outbox, the
  sampler (psutil, the gateway's readings) and the command subscription.

Once the daemon is ready (and, with MQTT, connected), the bench waits ``--settle`` seconds,
then measures the daemon process alone (its threads included; not dnsmasq or the broker)
with psutil over ``--idle`` seconds: RSS (resident set, at the end and the most seen, read
every second) and CPU time spent in the window over its length (% of one core). It prints
both and the ratio on/off; the issue's bound is under 80 MB and 1 % of a core with MQTT on.

Run as root (namespaces), with mosquitto installed::

    .venv/bin/python bench/daemon_footprint.py [--idle 300] [--settle 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from desanet_lab import LabSpec, lab_down, lab_up  # noqa: E402 (after the path)

# [telemetry] at its defaults but for the start delay (the lab's own demo settings are short)
DEFAULTS = {"start_delay_max": "0s", "keepalive": "30m", "reconnect_min": "5s",
            "reconnect_max": "10m", "telemetry_interval": "5m", "telemetry_send_interval": "1h"}


@dataclass
class Footprint:
    mode: str
    rss_mb: float  # at the end of the window
    rss_max_mb: float
    cpu_percent: float  # of one core, over the window
    threads: int
    seconds: float


def status(socket: str) -> dict[str, Any]:
    argv = [str(ROOT / ".venv" / "bin" / "desanet")]
    if not Path(argv[0]).exists():
        argv = [sys.executable, "-m", "gateway"]
    done = subprocess.run([*argv, "--socket", socket, "status", "--json"], capture_output=True,
                          text=True, timeout=30, check=False, cwd=str(ROOT))
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else {}


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            sys.exit(f"bench failed: timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.5)


def measure(mode: str, prefix: str, mqtt: bool, settle: float, idle: float) -> Footprint:
    spec = LabSpec(prefix=prefix, clients=1, dhcp=False, broker=mqtt,
                   extra={"telemetry": DEFAULTS} if mqtt else {})
    print(f"{mode}: bringing up lab {prefix!r} ...", flush=True)
    lab = lab_up(spec)
    try:
        assert lab.gateway_pid is not None, "the lab's daemon did not start"
        socket = str(lab.control_socket)
        wait_for(lambda: status(socket).get("ready") is True, 60, "the daemon to be ready")
        if mqtt:
            wait_for(lambda: (status(socket).get("telemetry") or {}).get("connected") is True, 60,
                     "telemetry to connect to the lab's broker")
        time.sleep(settle)  # the start's one-off work (first samples, caches) is not idle
        proc = psutil.Process(lab.gateway_pid)
        t0, cpu0 = time.monotonic(), proc.cpu_times()
        rss_max = proc.memory_info().rss
        while time.monotonic() - t0 < idle:  # a reading a second: RSS peaks between reads
            time.sleep(1.0)
            rss_max = max(rss_max, proc.memory_info().rss)
        t1, cpu1 = time.monotonic(), proc.cpu_times()
        rss = proc.memory_info().rss
        used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        if mqtt and (status(socket).get("telemetry") or {}).get("connected") is not True:
            sys.exit("bench failed: telemetry was not connected at the end of the window")
        return Footprint(mode, rss / 2**20, max(rss_max, rss) / 2**20, 100 * used / (t1 - t0),
                         proc.num_threads(), t1 - t0)
    finally:
        lab_down(prefix)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", type=float, default=300.0, help="seconds measured per daemon")
    ap.add_argument("--settle", type=float, default=20.0, help="seconds after the start, unmeasured")
    ap.add_argument("--prefix", default=f"fp{os.getpid() % 100000}", help="lab prefix")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the lab builds network namespaces")
    off = measure("mqtt off", args.prefix, False, args.settle, args.idle)
    on = measure("mqtt on", args.prefix, True, args.settle, args.idle)
    ratio = {"rss": on.rss_mb / off.rss_mb,
             "cpu": on.cpu_percent / off.cpu_percent if off.cpu_percent else None}
    if args.json:
        print(json.dumps({"off": asdict(off), "on": asdict(on), "ratio_on_off": ratio}, indent=2))
        return
    print(f"the daemon alone, idle, {args.idle:g} s each after {args.settle:g} s to settle; "
          f"{psutil.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"{'':9} {'RSS':>9} {'RSS max':>9} {'CPU':>8} {'threads':>8}")
    for r in (off, on):
        print(f"{r.mode:9} {r.rss_mb:6.1f} MB {r.rss_max_mb:6.1f} MB {r.cpu_percent:6.2f} % "
              f"{r.threads:8d}")
    cpu = f"{ratio['cpu']:.2f}x" if ratio["cpu"] is not None else "n/a"
    print(f"on / off: RSS {ratio['rss']:.2f}x, CPU {cpu} (bound with MQTT on: < 80 MB, < 1 %)")


if __name__ == "__main__":
    main()
