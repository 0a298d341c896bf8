"""Bytes on the wire per gateway per day at the default [telemetry] settings, against a real
Mosquitto over TLS, with time compressed; and the same metrics sent the naive way.

What runs
---------
- A Mosquitto on loopback with a TLS listener that asks for a client certificate (the
  test PKI of tests/integration/mosquitto.py), like a region's broker.
- **desanet**: the daemon's own TelemetryService (outbox on disk, paho link, the status and
  its Will, metrics.Reporter: deadbands and full reports) at the default settings, with a
  clock and sleeps sped up ``--scale`` times (1440: a day in a minute). Its readings are this
  machine's (psutil: CPU, memory, disk, load) and a simulated village (clients, logins,
  uplink latency, cache, forms, interface byte counts) that moves every sample.
- **naive**: a plain paho client that, every telemetry_interval, publishes each metric of the
  same readings as its own JSON message with readable names (QoS 1), the way a first
  dashboard integration often does.

Each client reaches the broker through its own counting TCP relay: the bytes are the TCP
payload both ways, TLS records, handshakes, CONNECT/CONNACK, PUBLISH/PUBACK, DISCONNECT and
``--reconnects`` forced reconnects per day included. Two things cannot run time-compressed
and are added by computation, and printed apart: keepalive pings (PINGREQ/PINGRESP, each a
24-byte TLS 1.3 record, for every ``keepalive`` without a packet out) and the IP/TCP headers
(52 bytes per segment, IPv4 with TCP timestamps; a relay read is counted as a segment, pure
ACKs are not). Events depend on the village; one event costs about what a small report does.

Run (root not needed; mosquitto on PATH)::

    .venv/bin/python bench/telemetry_bytes.py [--scale 1440] [--days 1] [--reconnects 1]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.config.telemetry import Telemetry
from gateway.kernel import DatabaseWorker
from gateway.store.telemetry_outbox import AsyncTelemetryOutbox, TelemetryOutbox
from gateway.telemetry import metrics
from gateway.telemetry.mqtt import connect as mqtt_connect
from gateway.telemetry.service import TelemetryService
from gateway.telemetry.sysinfo import read_system
from tests.integration.mosquitto import Broker, free_port, make_pki

SITE = "jabar-sukamaju"
DAY = 86400
HEADERS = 52  # IPv4 20 + TCP 20 + timestamps 12, per segment
PING_RECORD = 24  # a 2-byte MQTT PINGREQ or PINGRESP in a TLS 1.3 record (5 + 2 + 1 + 16)
MONTH = 30


# -- a counting relay --------------------------------------------------------------------------


@dataclass
class Relay:
    """127.0.0.1:<port> -> the broker; counts bytes and reads each way, can cut every
    connection (a forced reconnect)."""

    target: int
    up: int = 0  # client -> broker
    down: int = 0
    reads_up: int = 0
    reads_down: int = 0
    sends_up: list[float] = field(default_factory=list)  # monotonic times of client writes
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            b_reader, b_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers += [writer, b_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upward: bool) -> None:
            try:
                while data := await src.read(65536):
                    if upward:
                        self.up += len(data)
                        self.reads_up += 1
                        self.sends_up.append(time.monotonic())
                    else:
                        self.down += len(data)
                        self.reads_down += 1
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, b_writer, True), pipe(b_reader, writer, False))

    def cut(self) -> None:
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


# -- time compression --------------------------------------------------------------------------


class ScaledClock:
    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.wall0, self.mono0 = time.time(), time.monotonic()

    def elapsed(self) -> float:
        return (time.monotonic() - self.mono0) * self.scale

    def now(self) -> int:
        return int(self.wall0 + self.elapsed())

    def time(self) -> float:
        return self.wall0 + self.elapsed()

    def monotonic(self) -> float:
        return self.mono0 + self.elapsed()


# -- a simulated village -----------------------------------------------------------------------


class Village:
    """Gateway-side readings that move like a village's (seeded): a day curve of clients,
    logins, an uplink at ~600 ms with a short outage, a cache, forms, byte counters."""

    def __init__(self, clock: ScaledClock, seed: int = 1) -> None:
        self.clock, self.rng = clock, random.Random(seed)
        self.logins = self.failures = self.drops = self.saved = self.connects = 0
        self.rx = {"br-lan": 0, "eth0": 0}
        self.tx = {"br-lan": 0, "eth0": 0}
        self.hits, self.served = 0, 0
        self.last = 0.0

    def status(self, backlog: int, connects: int) -> dict[str, Any]:
        t = self.clock.elapsed()
        step, self.last = max(0.0, t - self.last), t
        hour = (t / 3600) % 24
        busy = max(0.05, 1 - abs(hour - 15) / 9)  # most clients in the afternoon
        clients = round(40 * busy + self.rng.uniform(-2, 2))
        authorized = max(0, round(clients * 0.8))
        self.logins += sum(self.rng.random() < busy * step / 600 for _ in range(3))
        self.failures += self.rng.random() < step / 7200
        self.drops += round(self.rng.expovariate(1 / 50) * busy * step / 60)
        rate = 250_000 * busy  # bytes/s down through the village at this hour
        for name, share in (("eth0", 1.0), ("br-lan", 1.05)):
            self.rx[name] += int(rate * step * share * (1 if name == "eth0" else 0.1))
            self.tx[name] += int(rate * step * share * (0.1 if name == "eth0" else 1))
        served = round(busy * step / 10)
        self.served += served
        self.hits += round(served * self.rng.uniform(0.5, 0.8))
        self.saved += served * 40_000
        outage = 10 * 3600 <= t % DAY < 10.5 * 3600
        return {
            "sessions_active": authorized, "clients_connected": clients,
            "uplink": {"state": "down" if outage else "up",
                       "latency_ms": None if outage else self.rng.gauss(600, 60)},
            "portal": {"logins": self.logins, "voucher_failures": self.failures},
            "shaping": {"enabled": True, "directions": {
                "down": {"classes": {"uplink": {"drops": self.drops}}}}},
            "services": {"enabled": True,
                         "cache": {"hit_ratio": self.hits / self.served if self.served else None,
                                   "bytes_from_cache": self.saved},
                         "services": {s: {"state": "offline" if outage else "online"}
                                      for s in ("dukcapil", "bpjs", "pajak", "sekolah")},
                         "outbox": {"queued": 2 if outage else 0}},
            "telemetry": {"enabled": True, "backlog": backlog, "connects": connects},
        }

    def interfaces(self) -> dict[str, tuple[int, int]]:
        return {n: (self.rx[n], self.tx[n]) for n in self.rx}


LONG = {"cpu": "cpu_percent", "mem": "memory_used_percent", "dsk": "disk_used_percent",
        "tmp": "temperature_celsius", "upt": "uptime_seconds", "ld": "load_average_1m",
        "ul": "uplink_up", "lat": "uplink_latency_ms", "rx": "interface_rx_bytes_total",
        "tx": "interface_tx_bytes_total", "cc": "clients_connected", "ca": "clients_authorized",
        "li": "portal_logins_total", "fv": "portal_voucher_failures_total",
        "sd": "shaper_dropped_packets_total", "hr": "cache_hit_ratio",
        "bs": "cache_bytes_saved_total", "sv": "local_services", "qf": "forms_queued",
        "bl": "mqtt_backlog", "rc": "mqtt_connects_total"}


def naive_messages(one: metrics.Sample, when: float) -> list[tuple[str, bytes]]:
    out = []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    for key, value in one.items():
        family, _, member = key.partition("/")
        name = LONG[family]
        body: dict[str, Any] = {"device": SITE, "metric": name, "value": value, "timestamp": stamp}
        if member:
            body["interface" if family in ("rx", "tx") else "state"] = member
        topic = f"desanet/v1/{SITE}/metrics/{name}" + (f"/{member}" if member else "")
        out.append((topic, json.dumps(body).encode()))
    return out


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    relay: Relay
    messages: int
    keepalive: int
    seconds: float  # simulated
    publishes: int  # telemetry PUBLISHes (a batch carries several reports)

    def pings(self, scale: float) -> int:
        """PINGREQs paho would send: for each gap between writes, one per keepalive in it."""
        times = [0.0] + [(t - self.relay.sends_up[0]) * scale for t in self.relay.sends_up]
        times.append(self.seconds)
        return sum(int((b - a) // self.keepalive) for a, b in itertools.pairwise(times))

    def per_day(self, scale: float) -> dict[str, float]:
        k = DAY / self.seconds
        pings = self.pings(scale)
        measured = (self.relay.up + self.relay.down) * k
        ping_bytes = pings * 2 * PING_RECORD * k
        headers = (self.relay.reads_up + self.relay.reads_down + 2 * pings) * HEADERS * k
        return {"measured": measured, "pings": ping_bytes, "headers": headers,
                "total": measured + ping_bytes + headers, "messages": self.messages * k,
                "publishes": self.publishes * k}


async def run(args: argparse.Namespace, work: Path) -> tuple[Result, Result]:
    pki = make_pki(work / "pki", host="127.0.0.1", device=SITE)
    port, tls_port = free_port(), free_port()
    broker = Broker(work / "broker", port, tls_port=tls_port, pki=pki)
    broker.start()
    ours, theirs = Relay(tls_port), Relay(tls_port)
    await ours.start()
    await theirs.start()
    clock = ScaledClock(args.scale)
    village, naive_village = Village(clock), Village(clock)
    tel = Telemetry(enabled=True, broker=f"mqtts://127.0.0.1:{ours.port}", site_id=SITE,
                    ca_file=str(pki.ca), cert_file=str(pki.device_cert),
                    key_file=str(pki.device_key), start_delay_max=0, **args.set)
    worker = DatabaseWorker()
    box = TelemetryOutbox(work / "telemetry.db")
    svc: TelemetryService | None = None

    async def readings() -> metrics.Readings:
        system = await asyncio.to_thread(read_system, work, ())
        system = metrics.SystemReadings(system.cpu, system.memory, system.disk, system.temperature,
                                        system.uptime, system.load, village.interfaces())
        assert svc is not None
        return metrics.Readings(system, village.status(svc.backlog, svc.connects))

    async def sleep(delay: float) -> None:
        await asyncio.sleep(delay / args.scale)

    class NoEvents:
        async def wait_events(self, seq: int, timeout: float) -> list[Any]:
            await asyncio.sleep(timeout / args.scale)
            return []

    publishes = 0

    async def counting_connect(settings: Any, on_ack: Any, on_lost: Any, on_message: Any = None
                               ) -> Any:
        link = await mqtt_connect(settings, on_ack, on_lost, on_message)
        publish = link.publish

        def counted(topic: str, payload: bytes, retain: bool = False,
                    correlation: bytes | None = None) -> int:
            nonlocal publishes
            publishes += topic.endswith("/telemetry")
            return publish(topic, payload, retain, correlation)
        link.publish = counted  # type: ignore[method-assign]
        return link

    svc = TelemetryService(lambda: tel, AsyncTelemetryOutbox(box, worker), counting_connect,
                           NoEvents(), lambda: "3f9a1c07b2de", "0.1.0", clock,
                           rng=random.Random(3), sleep=sleep, readings=readings)

    naive = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"naive-{SITE}",
                        protocol=MQTTProtocolVersion.MQTTv5)
    naive.tls_set(ca_certs=str(pki.ca), certfile=str(pki.device_cert), keyfile=str(pki.device_key))
    naive.reconnect_delay_set(min_delay=1, max_delay=2)
    naive.connect_async("127.0.0.1", theirs.port, keepalive=tel.keepalive)  # on its thread
    naive.loop_start()
    naive_sent = 0

    async def naive_loop() -> None:
        nonlocal naive_sent
        while True:
            await sleep(tel.telemetry_interval)
            system = await asyncio.to_thread(read_system, work, ())
            system = metrics.SystemReadings(system.cpu, system.memory, system.disk,
                                            system.temperature, system.uptime, system.load,
                                            naive_village.interfaces())
            one = metrics.sample(metrics.Readings(system, naive_village.status(0, 1)))
            for topic, body in naive_messages(one, clock.time()):
                naive.publish(topic, body, qos=1)
                naive_sent += 1

    seconds = args.days * DAY
    await svc.start()
    task = asyncio.create_task(naive_loop())
    cuts = [seconds * (i + 1) / (args.reconnects * args.days + 1)
            for i in range(args.reconnects * args.days)]
    for at in cuts:
        await asyncio.sleep(max(0.0, (at - clock.elapsed()) / args.scale))
        ours.cut()
        theirs.cut()
    await asyncio.sleep(max(0.0, (seconds - clock.elapsed()) / args.scale))
    task.cancel()
    sent = svc.sent
    await svc.stop()
    naive.disconnect()
    naive.loop_stop()
    await asyncio.sleep(0.2)  # the last bytes through the relays
    await ours.close()
    await theirs.close()
    broker.stop()
    left = box.count()  # at most the reports waiting for their batch as the run ended
    waiting = 1 + tel.telemetry_send_interval // tel.telemetry_interval
    if left > waiting or not sent or not naive_sent:  # else the figures are worth nothing
        sys.exit(f"bench failed: {left} report(s) never acknowledged, {sent} sent by desanet, "
                 f"{naive_sent} by the naive client")
    box.close()
    worker.shutdown()
    return (Result("desanet", ours, sent, tel.keepalive, seconds, publishes),
            Result("naive", theirs, naive_sent, tel.keepalive, seconds, naive_sent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1440.0, help="simulated seconds per real second")
    ap.add_argument("--days", type=int, default=1)
    ap.add_argument("--reconnects", type=int, default=1, help="forced reconnects per day")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help='a [telemetry] setting other than its default, e.g. keepalive=30m')
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.set = dict(kv.split("=", 1) for kv in args.set)
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        sys.exit("mosquitto is needed (apt-get install mosquitto)")
    with tempfile.TemporaryDirectory(prefix="telemetry-bytes-") as tmp:
        ours, theirs = asyncio.run(run(args, Path(tmp)))
    rows = {r.name: r.per_day(args.scale) for r in (ours, theirs)}
    ratio = rows["naive"]["total"] / rows["desanet"]["total"]
    if args.json:
        print(json.dumps({"per_day": rows, "ratio": ratio, "scale": args.scale, "days": args.days,
                          "reconnects_per_day": args.reconnects}, indent=2))
        return
    fmt: Callable[[float], str] = lambda b: f"{b / 1000:9.1f} kB"  # noqa: E731
    changed = ", ".join(f"{k}={v}" for k, v in args.set.items()) or "none changed"
    print(f"per gateway per day, [telemetry] defaults ({changed}) (scale {args.scale:g}x, "
          f"{args.days} day(s), {args.reconnects} reconnect(s)/day, TLS)")
    print(f"{'':10} {'reports':>8} {'PUBLISHes':>9} {'TCP payload':>12} {'+pings':>12} "
          f"{'+IP/TCP':>12} {'total':>12} {'per month':>10}")
    for name, r in rows.items():
        print(f"{name:10} {r['messages']:8.0f} {r['publishes']:9.0f} {fmt(r['measured']):>12} "
              f"{fmt(r['pings']):>12} "
              f"{fmt(r['headers']):>12} {fmt(r['total']):>12} {r['total'] * MONTH / 1e6:7.2f} MB")
    print(f"naive / desanet: {ratio:.1f}x")


if __name__ == "__main__":
    main()
