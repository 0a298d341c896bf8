"""A region's fleet on one machine: N simulated gateways, one Mosquitto, `desanet fleet serve`.

Question: can one consumer keep up with thousands of gateways, and does a second
instance in the same shared-subscription group add capacity?

What runs, for each N in ``--sizes`` and each consumer count in ``--consumers``
(1 and 2 by default, measured in the same run), each on a fresh broker:

1. Mosquitto on loopback (plain TCP; tests/integration/mosquitto.py, configured by
   bench/_fleet_sim.py: no per-packet log, no connection limit, a deep per-client
   queue). This process raises its open-file limit before starting it (Mosquitto
   inherits it).
2. The consumer(s): ``desanet fleet serve --db sqlite:///... --group bench`` (or, with
   ``--consumer standin``, bench/_fleet_standin.py, a minimal FleetTable consumer), one
   SQLite file shared by the instances; the bench waits until Mosquitto logs their
   subscriptions.
3. N simulated gateways (bench/_fleet_sim.py: paho MQTT 5 clients driven from this
   process's asyncio loop, no thread per client; real payload code and topic tree, a
   per-gateway seq and session counter, the offline status as Last Will) connect at
   ``--ramp`` connections a second and publish their retained online status.
   Measured: ramp time, and when the consumer has stored every gateway online.
4. **steady**: ``--rate`` messages a second in all (telemetry, every 10th an event),
   the gateways in turn, for ``--seconds``: stored rate and lag.
5. **burst**: every gateway publishes ``--burst`` messages at once (default: 50,000 in all,
   at least 10 each), as after a regional outage when every backlog flushes: one
   PUBLISH each, or with ``--batched`` as the daemon sends a backlog (batch.py: runs of
   reports in one compressed PUBLISH). Measured: the PUBLISHes the broker acknowledged
   a second, and the messages the consumer stored a second (first publish to last stored).
6. **Wills**: every connection is cut without DISCONNECT; the consumer must store every
   gateway offline.

Lag is publish time (when the message was handed to paho) to stored: the bench polls the database
every 50 ms for the highest rowid of the ``messages`` table (rows are numbered in commit
order), so a message counts as stored at the first poll that sees it (up to 50 ms late).
Loss compares every (site, session, seq) published with the ``messages`` table: it must
be 0, and no row may be stored that was not published; either fails the run. Memory is
the peak RSS (psutil, sampled every 0.5 s) of Mosquitto, the consumer(s) and this
process (the simulated gateways); CPU is their share of a core during the burst; "load"
is the machine's load average at the end of a run (the figures are only as good as the
cores the bench got).

Run (root not needed for N up to the hard open-file limit; mosquitto on PATH)::

    .venv/bin/python bench/fleet_scale.py                      # N = 1,000 and 10,000
    .venv/bin/python bench/fleet_scale.py --quick              # N = 200, seconds (the test)
    .venv/bin/python bench/fleet_scale.py --sizes 1000 --consumers 1 --json out.json
    .venv/bin/python bench/fleet_scale.py --broker-inflight 1000   # Mosquitto's window raised
    .venv/bin/python bench/fleet_scale.py --batched                # the burst in batches
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _fleet_measure import Poller, Sampler, analyse, pct  # noqa: E402
from _fleet_sim import Fleet, raise_nofile, scale_broker  # noqa: E402

from tests.integration.mosquitto import Broker, free_port  # noqa: E402

PREFIX = "desanet/v1"
GROUP = "bench"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def new_loop() -> asyncio.AbstractEventLoop:
    import uvloop  # --loop uvloop: the loop the daemon runs

    return uvloop.new_event_loop()


def serve_available() -> bool:
    return (HERE.parent / "gateway" / "fleet" / "serve.py").exists()


@dataclass
class Consumers:
    """The consumer processes of one run, their output in ``workdir``."""

    kind: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def start(self, broker: Broker, db: Path, count: int, workdir: Path) -> None:
        for i in range(count):
            cid = f"bench-{self.kind}-{i}"
            if self.kind == "serve":
                argv = [sys.executable, "-m", "gateway", "fleet", "serve"]
            else:
                argv = [sys.executable, str(HERE / "_fleet_standin.py")]
            argv += ["--broker", broker.url, "--db", f"sqlite:///{db}", "--prefix", PREFIX,
                     "--group", GROUP, "--client-id", cid]
            log = workdir / f"{cid}.log"
            with log.open("wb") as out:
                self.procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                                   cwd=HERE.parent))
            self.ids.append(cid)
            self.logs.append(log)

    def check(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise RuntimeError(f"the consumer exited with {proc.returncode}:\n"
                                   f"{log.read_text()[-3000:]}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def wait_subscribed(broker: Broker, ids: list[str], consumers: Consumers, timeout: float) -> None:
    """Until Mosquitto logged a subscription of every consumer (``log_type subscribe``)."""
    deadline = time.monotonic() + timeout
    while True:
        consumers.check()
        text = broker.log.read_text() if broker.log.exists() else ""
        if all(f" {cid} 1 $share/{GROUP}/" in text for cid in ids):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the consumers did not subscribe within {timeout:g} s{broker.tail()}")
        time.sleep(0.05)


async def until(value: Callable[[], int], goal: int, stall: float, consumers: Consumers,
                what: str) -> None:
    """Until ``value()`` reaches ``goal``; fails when it does not move for ``stall`` s (a
    slow machine only makes it wait longer; a stuck consumer fails the run)."""
    last, since = -1, time.monotonic()
    while (now := value()) < goal:
        consumers.check()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > stall:
            raise TimeoutError(f"{what}: {now} of {goal}, no progress for {stall:g} s")
        await asyncio.sleep(0.05)


async def drive(args: argparse.Namespace, broker: Broker, n: int, poller: Poller,
                sampler: Sampler, consumers: Consumers, marks: dict[str, Any]) -> Fleet:
    fleet = Fleet(broker.host, broker.port, n, PREFIX, tag=f"g{n}")
    try:
        t0 = time.time()
        marks["ramp_s"] = await fleet.connect(args.ramp, args.stall * 4, say)
        await until(lambda: poller.online, n, args.stall, consumers, "gateways stored online")
        marks["all_online_s"] = time.time() - t0
        say(f"  {n} online in {marks['all_online_s']:.1f} s; steady {args.rate:g} msg/s "
            f"for {args.seconds:g} s")

        marks["steady_start"] = time.time()
        sent = await fleet.steady(args.rate, args.seconds)
        marks["steady_end"] = time.time()
        marks["steady_sent"] = sent
        marks["boundary"] = {link.gw.site: link.gw.seq for link in fleet.links}
        await until(lambda: poller.stored, sent, args.stall, consumers, "steady: messages stored")

        each = args.burst or max(10, 50_000 // n)
        say(f"  burst: {each} messages from each of {n} gateways"
            + (" (batched as the daemon sends a backlog)" if args.batched else ""))
        sampler.mark("burst")
        marks["burst_start"] = time.time()
        marks["burst_publishes"] = await fleet.burst(each, args.batched)
        total = sent + each * n
        marks["burst_queued"] = time.time()
        await until(lambda: fleet.acked, fleet.publishes, args.stall, consumers,
                    "burst: PUBACKs from the broker")
        marks["burst_acked"] = time.time()
        await until(lambda: poller.stored, total, args.stall, consumers, "burst: messages stored")
        marks["burst_stored"] = time.time()
        sampler.mark("burst_end")

        say("  cutting every connection: the Wills")
        marks["drop"] = time.time()
        fleet.drop()
        await until(lambda: poller.offline, n, args.stall, consumers, "Wills: gateways stored offline")
        marks["wills_s"] = time.time() - marks["drop"]
        marks["lost_connections"] = fleet.lost
        marks["connect_retries"] = fleet.connect_errors
    finally:
        fleet.close()
    return fleet


def run_one(args: argparse.Namespace, root: Path, n: int, count: int) -> dict[str, Any]:
    workdir = root / f"n{n}-c{count}"
    broker = scale_broker(workdir, free_port(), args.broker_inflight)
    db = workdir / "fleet.db"
    consumers = Consumers(args.consumer)
    poller = Poller(db)
    say(f"N = {n}, {count} consumer(s) ({args.consumer})")
    try:
        broker.start()
        consumers.start(broker, db, count, workdir)
        wait_subscribed(broker, consumers.ids, consumers, 30)
        assert broker.proc is not None
        sampler = Sampler({"broker": [broker.proc.pid], "consumers": [p.pid for p in consumers.procs],
                           "gateways": [os.getpid()]})
        poller.start()
        sampler.start()
        marks: dict[str, Any] = {}
        try:
            runner = asyncio.Runner(loop_factory=new_loop) if args.loop == "uvloop" else asyncio.Runner()
            with runner:
                fleet = runner.run(drive(args, broker, n, poller, sampler, consumers, marks))
        finally:
            sampler.stop()
            poller.stop()
    finally:
        consumers.stop()
        broker.stop()
    result = analyse(db, fleet, marks, poller, sampler)
    # the machine's 1-minute load average at the end: the bench shares its cores with whatever runs
    result.update(n=n, consumers=count, kind=args.consumer, load=os.getloadavg()[0])
    return result


def row(r: dict[str, Any]) -> str:
    mem = r["rss_mb"]
    burst = f"{r['burst_messages']:,}"
    if r["burst_publishes"] != r["burst_messages"]:
        burst += f" in {r['burst_publishes']:,} PUBLISHes"
    return (f"| {r['n']:,} | {r['consumers']} | {r['ramp_s']:.1f} s | {r['steady_rate']:,.0f} | "
            f"{pct(r['steady_lag'])} | {burst} | {r['burst_acked_rate']:,.0f} | "
            f"**{r['burst_stored_rate']:,.0f}** | {pct(r['burst_lag'])} | {r['loss']} | "
            f"{r['wills']:,} in {r['wills_s']:.1f} s | {mem['broker']:.0f} | {mem['consumers']:.0f} | "
            f"{mem['gateways']:.0f} | {r['cpu_burst']['broker']:.0f} / "
            f"{r['cpu_burst']['consumers']:.0f} / {r['cpu_burst']['gateways']:.0f} | {r['load']:.1f} |")


HEADER = ("| N | consumers | ramp | steady stored msg/s | steady lag p50 / p99 / max | burst msgs | "
          "burst acked PUBLISH/s | burst stored msg/s | burst lag p50 / p99 / max | loss | Wills stored | "
          "broker MB | consumer(s) MB | gateways MB | burst CPU % broker / consumers / gateways | load |\n"
          "|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---|---:|---:|---:|---|---:|")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000", help="numbers of gateways, e.g. 1000,10000")
    ap.add_argument("--consumers", default="1,2", help="consumer instances per run, e.g. 1,2")
    ap.add_argument("--consumer", choices=["serve", "standin"],
                    help="desanet fleet serve (the default when present) or the minimal stand-in")
    ap.add_argument("--rate", type=float, default=1000, help="steady messages a second, in all")
    ap.add_argument("--seconds", type=float, default=20, help="length of the steady phase")
    ap.add_argument("--burst", type=int, default=0,
                    help="messages per gateway in the burst (default: 50,000 in all, at least 10 each)")
    ap.add_argument("--batched", action="store_true",
                    help="burst: send each backlog as the daemon does (gateway/telemetry/batch.py: "
                         "up to 50 reports a PUBLISH, compressed), not one PUBLISH per message")
    ap.add_argument("--ramp", type=float, default=1000, help="new connections a second")
    ap.add_argument("--broker-inflight", type=int,
                    help="Mosquitto's max_inflight_messages (its default: 20): how many unacknowledged "
                         "messages it sends a consumer that names no Receive Maximum")
    ap.add_argument("--stall", type=float, default=60,
                    help="fail when a wait makes no progress for this long (s)")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio",
                    help="the simulated gateways' event loop")
    ap.add_argument("--quick", action="store_true",
                    help="N = 200, 1 and 2 consumers, a 3 s steady phase (the test runs this)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.rate, args.seconds, args.burst, args.ramp = "200", 200, 3, 5, 500
        args.stall = min(args.stall, 30)
    args.consumer = args.consumer or ("serve" if serve_available() else "standin")
    sizes = [int(s) for s in args.sizes.split(",")]
    counts = [int(c) for c in args.consumers.split(",")]
    limit = raise_nofile(2 * max(sizes) + 4096)
    if limit < max(sizes) + 1024:
        ap.error(f"--sizes: {max(sizes)} connections need an open-file limit above "
                 f"{max(sizes) + 1024}; this process may only raise it to {limit} (run as root)")
    if args.consumer == "standin":
        say("NOTE: the consumer is the stand-in (bench/_fleet_standin.py), not desanet fleet serve")
    results: list[dict[str, Any]] = []
    root = Path(tempfile.mkdtemp(prefix="fleet-scale-"))
    try:
        for n in sizes:
            for count in counts:
                results.append(run_one(args, root, n, count))
    finally:
        if not args.keep:
            subprocess.run(["rm", "-rf", str(root)], check=False)
        else:
            say(f"kept {root}")
    print(f"\nfleet_scale: consumer {args.consumer}, Python {platform.python_version()}, "
          f"{psutil.cpu_count()} CPUs, open-file limit {limit}, Mosquitto max_inflight_messages "
          f"{args.broker_inflight or '20 (default)'}")
    print(HEADER)
    for r in results:
        print(row(r))
    ok = all(r["loss"] == 0 and r["unexpected"] == 0 and r["wills"] == r["n"] for r in results)
    for n in sizes:
        by = {r["consumers"]: r for r in results if r["n"] == n}
        if 1 in by and 2 in by:
            ratio = by[2]["burst_stored_rate"] / by[1]["burst_stored_rate"]
            print(f"N = {n:,}: two consumers / one, burst stored msg/s: {ratio:.2f}x")
            for r in (by[1], by[2]):
                r["ratio_two_over_one"] = ratio
    if args.json:
        args.json.write_text(json.dumps({"consumer": args.consumer, "settings": {
            k: v for k, v in vars(args).items() if k != "json"}, "results": results}, indent=1))
    if not ok:
        print("FAILED: messages lost, unexpected rows, or Wills not stored (see the table)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
