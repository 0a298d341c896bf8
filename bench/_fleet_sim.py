"""Simulated gateways for bench/fleet_scale.py: many paho clients on one asyncio loop.

Each simulated gateway is what a gateway puts on the wire, not a daemon: a paho
MQTT 5 client (the library the daemon uses) whose CONNECT carries the Last Will
(the offline status, retained), which publishes the retained online status
once connected, then QoS 1 telemetry and events built by the real payload code
(gateway/telemetry/payloads.py; batch.py for a backlog sent in batches) on the real
topic tree (topics.py), numbered
like the outbox: one ``seq`` per gateway for events and telemetry, and a
session counter. Nothing is kept on disk: the bench remembers what it sent.

paho's ``loop_start`` costs a thread per client; here every client's socket is
registered with the asyncio loop instead (paho's external-loop interface:
``on_socket_open`` / ``on_socket_register_write`` and ``loop_read`` /
``loop_write`` / ``loop_misc``), so 10,000 gateways are one thread.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.core.events import EndReason, SessionEnded, SessionStarted
from gateway.telemetry import batch, payloads
from gateway.telemetry.outbox import Message
from gateway.telemetry.topics import Topics
from tests.integration.mosquitto import Broker

VERSION = "0.1.0"
CONFIG_VERSION = "3f9a1c07b2de"
# A full report as in docs/mqtt.md (about 340 bytes of JSON with the envelope), sent every
# FULL_EVERY-th telemetry message; the others are the usual report of what moved.
FULL = {"f": True, "cpu": 12, "mem": 42, "dsk": 27, "upt": 86400, "ld": 0.4,
        "rx": {"br-lan": 180000, "eth0": 3210000}, "tx": {"br-lan": 3150000, "eth0": 210000},
        "ul": 1, "lat": 612, "cc": 9, "ca": 7, "li": 3, "fv": 1, "sd": 0, "hr": 0.75, "bs": 0,
        "sv": {"online": 2, "offline": 1}, "qf": 4, "bl": 0, "rc": 0}
FULL_EVERY = 12
EVENT_EVERY = 10  # every 10th message is an event


def raise_nofile(want: int) -> int:
    """Raise this process's open-file limit (children such as Mosquitto inherit it) to
    ``want``, or as far as the hard limit allows (root may raise that too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def scale_broker(workdir: Path, port: int, inflight: int | None = None) -> Broker:
    """The test Broker (tests/integration/mosquitto.py) configured for thousands of clients:
    no per-packet log (``log_type all`` would write a line per PUBLISH; subscriptions are
    logged, the bench waits for its consumers' there), no persistence,
    no connection limit, and room to queue a consumer's backlog: Mosquitto's default of
    1,000 queued QoS 1 messages per client would drop a lagging consumer's messages.
    ``inflight``: ``max_inflight_messages`` (Mosquitto's default: 20), the unacknowledged
    QoS 1 messages it sends a client that names no Receive Maximum of its own."""
    broker = Broker(workdir, port)
    keep = [line for line in broker.conf.read_text().splitlines()
            if not line.startswith(("log_type", "persistence"))]
    keep[:0] = ["log_type error", "log_type warning", "log_type notice", "log_type information",
                "log_type subscribe", "persistence false", "max_connections -1",
                "max_queued_messages 10000000", "max_queued_bytes 0", "set_tcp_nodelay true"]
    if inflight is not None:
        keep.insert(0, f"max_inflight_messages {inflight}")
    broker.conf.write_text("\n".join(keep) + "\n")
    return broker


@dataclass
class SimGateway:
    """One gateway's identity and numbering, and what it sent (for the loss check)."""

    site: str
    prefix: str
    session: int = 1
    seq: int = 0
    sent: list[float] = field(default_factory=list)  # sent[i]: "time" of seq i + 1
    events: int = 0

    def __post_init__(self) -> None:
        self.topics = Topics(self.prefix, self.site)
        self.who = payloads.Identity(self.site, VERSION, int(time.time()), self.session)

    def status(self, online: bool) -> bytes:
        return payloads.encode(payloads.status(self.who, CONFIG_VERSION, online=online))

    def _make(self, now: float) -> Message:
        """The next outbox message (its data as the outbox keeps it); remembered as sent."""
        self.seq += 1
        self.sent.append(now)
        data: dict[str, Any]
        if self.seq % EVENT_EVERY == 0:
            self.events += 1
            event = (SessionStarted("02:00:00:00:00:01", "10.42.0.9", "voucher", "daily", "K7P2Q")
                     if self.events % 2 else SessionEnded("02:00:00:00:00:01", "10.42.0.9", EndReason.IDLE))
            return Message(self.seq, "event", self.session, now, json.dumps(payloads.event_data(event)))
        data = dict(FULL) if self.seq % FULL_EVERY == 1 else {"ca": self.seq % 40, "cc": 9}
        return Message(self.seq, "telemetry", self.session, now, json.dumps(data))

    def next(self, now: float) -> tuple[str, bytes]:
        """The next message alone in its PUBLISH: topic and payload."""
        row = self._make(now)
        return self._topic(row), batch.encode(self.who, [row], {}, compress=False)

    def backlog(self, count: int, now: float) -> list[tuple[str, bytes]]:
        """``count`` messages as the daemon sends a backlog: marked historical, cut into
        PUBLISHes by gateway/telemetry/batch.py (runs of reports share one, zlib-compressed
        when smaller, as at the default ``telemetry_compress``; each event alone)."""
        rows = [self._make(now) for _ in range(count)]
        hist = {r.seq: True for r in rows}
        return [(self._topic(g[0]), batch.encode(self.who, g, hist, compress=True))
                for g in batch.groups(rows)]

    def _topic(self, row: Message) -> str:
        return self.topics.event if row.kind == "event" else self.topics.telemetry


class Link:
    """One gateway's paho client, its socket served by the asyncio loop (no thread)."""

    def __init__(self, fleet: Fleet, gw: SimGateway) -> None:
        self.fleet, self.gw = fleet, gw
        self.fd = -1
        self.up = False
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=gw.site,
                        protocol=MQTTProtocolVersion.MQTTv5)
        c.will_set(gw.topics.status, gw.status(online=False), qos=1, retain=True)
        c.on_socket_open = self._open
        c.on_socket_close = self._close
        c.on_socket_register_write = self._want_write
        c.on_socket_unregister_write = self._no_write
        c.on_connect = self._connected
        c.on_publish = self._acked
        c.on_disconnect = self._disconnected
        self.client = c

    def _open(self, client: paho.Client, userdata: object, sock: Any) -> None:
        self.fd = sock.fileno()
        self.fleet.loop.add_reader(self.fd, self._read)

    def _close(self, client: paho.Client, userdata: object, sock: Any) -> None:
        if self.fd >= 0:
            self.fleet.loop.remove_reader(self.fd)
            self.fleet.loop.remove_writer(self.fd)
            self.fd = -1

    def _want_write(self, client: paho.Client, userdata: object, sock: Any) -> None:
        if self.fd >= 0:
            self.fleet.loop.add_writer(self.fd, self.client.loop_write)

    def _no_write(self, client: paho.Client, userdata: object, sock: Any) -> None:
        if self.fd >= 0:
            self.fleet.loop.remove_writer(self.fd)

    def _read(self) -> None:
        self.client.loop_read()

    def _connected(self, client: paho.Client, userdata: object, flags: Any, rc: Any,
                   props: Any) -> None:
        if rc.is_failure:
            self.fleet.refused += 1
            return
        self.up = True
        self.fleet.connected += 1
        self.fleet.statuses += 1
        self.fleet.publishes += 1
        client.publish(self.gw.topics.status, self.gw.status(online=True), qos=1, retain=True)

    def _acked(self, client: paho.Client, userdata: object, mid: int, rc: Any, props: Any) -> None:
        self.fleet.acked += 1

    def _disconnected(self, client: paho.Client, userdata: object, flags: Any, rc: Any,
                      props: Any) -> None:
        if self.up:
            self.up = False
            self.fleet.connected -= 1
            self.fleet.lost += 0 if self.fleet.closing else 1

    def publish(self) -> None:
        topic, payload = self.gw.next(time.time())
        self.fleet.publishes += 1
        self.client.publish(topic, payload, qos=1)

    def flush(self, count: int) -> int:
        """Publish a backlog of ``count`` messages in batches; the number of PUBLISHes."""
        out = self.gw.backlog(count, time.time())
        self.fleet.publishes += len(out)
        for topic, payload in out:
            self.client.publish(topic, payload, qos=1)
        return len(out)


class Fleet:
    """``n`` simulated gateways named ``<tag>-00000``... under ``prefix``."""

    def __init__(self, host: str, port: int, n: int, prefix: str = "desanet/v1",
                 tag: str = "sim", keepalive: int = 300) -> None:
        self.host, self.port, self.keepalive = host, port, keepalive
        self.loop = asyncio.get_running_loop()
        self.links = [Link(self, SimGateway(f"{tag}-{i:05d}", prefix)) for i in range(n)]
        self.connected = self.refused = self.acked = self.lost = self.statuses = 0
        self.publishes = 0  # PUBLISHes handed to paho (``acked`` counts their PUBACKs)
        self.connect_errors = 0
        self.closing = False
        self._misc: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:  # keepalive pings and timeouts, for every client, every 2 s
            await asyncio.sleep(2)
            for link in self.links:
                if link.fd >= 0:
                    link.client.loop_misc()

    async def connect(self, rate: float, timeout: float, progress: Callable[[str], None],
                      window: int = 100) -> float:
        """Connect every gateway, at most ``rate`` new connections a second; wait for every
        CONNACK (and so every online status sent). Returns the seconds it took."""
        self._misc = asyncio.create_task(self._tick())
        start = time.monotonic()
        for i, link in enumerate(self.links):
            due = start + i / rate
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            # At most ``window`` CONNECTs unanswered: paho's TCP connect blocks, and a full
            # listen queue at the broker would stall this loop (a dropped SYN waits 1 s).
            while i - self.connected - self.refused >= window:
                await asyncio.sleep(0.005)
            while True:
                try:
                    link.client.connect(self.host, self.port, self.keepalive)
                    break
                except OSError:  # e.g. the broker's listen backlog was full: try again shortly
                    self.connect_errors += 1
                    await asyncio.sleep(0.05)
            if i % 1000 == 999:
                progress(f"  {i + 1} connecting, {self.connected} connected")
        await self.until(lambda: self.connected + self.refused >= len(self.links), timeout,
                         "every gateway's CONNACK")
        if self.refused:
            raise RuntimeError(f"the broker refused {self.refused} connections")
        return time.monotonic() - start

    async def until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            await asyncio.sleep(0.05)

    async def steady(self, rate: float, seconds: float) -> int:
        """Publish ``rate`` messages a second in all, the gateways in turn, for ``seconds``."""
        start, sent, i = time.monotonic(), 0, 0
        n = len(self.links)
        while (elapsed := time.monotonic() - start) < seconds:
            for _ in range(int(elapsed * rate) - sent):
                self.links[i % n].publish()
                i += 1
                sent += 1
            await asyncio.sleep(0.01)
        return sent

    async def burst(self, each: int, batched: bool, chunk: int = 2000) -> int:
        """Every gateway publishes ``each`` messages at once (a backlog flush after an
        outage), one PUBLISH each or, ``batched``, as the daemon sends a backlog; paho holds
        what exceeds its in-flight window and sends it as PUBACKs come. Returns the
        number of PUBLISHes."""
        sent = 0
        if batched:
            for i, link in enumerate(self.links):
                sent += link.flush(each)
                if i % 200 == 199:
                    await asyncio.sleep(0)
            return sent
        for _ in range(each):
            for link in self.links:
                link.publish()
                sent += 1
                if sent % chunk == 0:
                    await asyncio.sleep(0)  # let the loop serve the sockets
        return sent

    def drop(self) -> None:
        """Every connection ends without DISCONNECT (a regional power cut): the broker
        publishes each gateway's Will."""
        self.closing = True
        for link in self.links:
            sock = link.client.socket()
            if sock is not None and link.fd >= 0:
                self.loop.remove_reader(link.fd)
                self.loop.remove_writer(link.fd)
                link.fd = -1
                sock.close()
        if self._misc is not None:
            self._misc.cancel()

    def close(self) -> None:
        """Clean up what is left (after :meth:`drop` or on failure)."""
        self.closing = True
        if self._misc is not None:
            self._misc.cancel()
        for link in self.links:
            if link.fd >= 0:
                self.loop.remove_reader(link.fd)
                self.loop.remove_writer(link.fd)
                link.fd = -1
            sock = link.client.socket()
            if sock is not None:
                sock.close()
