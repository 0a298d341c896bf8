"""`desanet fleet serve`: the reference consumer as a service (docs/fleet.md).

Theory of operation
-------------------
One MQTT 5 connection (paho-mqtt 2.x, ``manual_ack``) with a persistent session
(fixed client id, clean start off, a session expiry of a week) subscribes at
QoS 1 to ``<prefix>/+/telemetry`` and ``/event`` (as ``$share/<group>/...``
with ``--group``, so the instances of a group split them) and to
``<prefix>/+/status`` without sharing: a broker never sends retained messages
to a shared subscription (MQTT 5, 4.8.2), and a fresh instance must learn every
gateway's status at once. Statuses are few (one per connect and per hour) and
merging one is idempotent (gateway/fleet/state.py), so every instance storing
every status costs little and needs no coordination.

The status subscription is QoS 0. A status is state, not history: the broker
retains the newest and sends it again at every subscribe, which this client
makes at every (re)connect, so a status missed while away or lost in a crash
before its commit comes back. And at QoS 1 the retained statuses of a region
would pass through the broker's per-client queue on subscribe: Mosquitto
(``max_queued_messages`` 1000 by default) delivered 1,020 of 3,000 and
dropped the rest; at QoS 0 they are written straight out.

paho's network thread only queues each PUBLISH. The main thread takes what is
queued (up to :data:`BATCH`), stores it in one database transaction
(gateway/fleet/store.py) and only then acknowledges the messages to the
broker, in the order they came (``client.ack``). So a consumer killed at any
point loses nothing: what it had not acknowledged the broker sends again when
it comes back with the same client id, and the ledger drops what was already
stored. A batch that cannot be stored (database down) is retried with backoff
and nothing is acknowledged meanwhile; the broker's in-flight window then
stops sending. After a reconnect the acknowledgements of the old connection
are not sent: the broker resends those messages and they are counted as
duplicates.
"""

from __future__ import annotations

import argparse
import queue
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from prometheus_client import CollectorRegistry, start_http_server

from gateway.errors import DesanetError
from gateway.fleet.serve_metrics import FleetCollector, ServeMetrics
from gateway.fleet.store import Incoming, Store, StoreError, check_url, connect_store, open_store, redact
from gateway.fleet.watch import _LEVEL, BadArguments, Target, add_broker_arguments, target

BATCH = 500  # messages per transaction at most
KEEPALIVE = 60
SESSION_EXPIRY = 7 * 86400  # the broker keeps our queue this long while we are away
CONNECT_TIMEOUT = 15.0
SESSION_TAKEN_OVER = 142  # MQTT 5 DISCONNECT reason 0x8E
# Mosquitto 2.0 closes a taken-over connection without saying why: this many connections in
# a row that each ended within SHORT_LIVED seconds mean another client uses our id.
SHORT_LIVED, SHORT_IN_A_ROW = 10.0, 5


class ServeError(DesanetError):
    """The broker or the database cannot be used; the message names the option."""


@dataclass(frozen=True)
class Options:
    target: Target
    db: str
    group: str | None
    client_id: str
    metrics: tuple[str, int] | None
    username: str | None
    password: str | None


def log(text: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}", file=sys.stderr,
          flush=True)


def options(args: argparse.Namespace) -> Options:
    """Check every argument; raises BadArguments naming each bad option."""
    problems: list[str] = []
    try:
        t: Target | None = target(args)
    except BadArguments as exc:
        problems += exc.problems
        t = None
    db_problem = check_url(args.db)
    if db_problem:
        problems.append(db_problem)
    if args.group is not None and not _LEVEL.match(args.group):
        problems.append(f"--group: {args.group!r} is not a group name: letters, digits, '.', '-' "
                        "or '_' (one topic level); write e.g. --group fleet")
    client_id = args.client_id or default_client_id(args.group)
    if not 1 <= len(client_id.encode()) <= 128 or any(c in client_id for c in "+#/\0"):
        problems.append(f"--client-id: {client_id!r}: 1 to 128 characters without '/', '+', '#'")
    metrics = None
    if args.metrics is not None:
        host, _, port = args.metrics.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(f"--metrics: {args.metrics!r} is not HOST:PORT; write e.g. "
                            "--metrics 127.0.0.1:9108 (0.0.0.0:9108 for every address)")
        else:
            metrics = (host.strip("[]"), int(port))
    password = None
    if args.password_file is not None:
        try:
            with open(args.password_file, encoding="utf-8") as fh:
                password = (fh.read().splitlines() or [""])[0]
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"--password-file: cannot read {args.password_file}: "
                            f"{getattr(exc, 'strerror', None) or exc}")
        if args.username is None:
            problems.append("--password-file: a password needs --username")
    if problems:
        raise BadArguments(problems)
    assert t is not None
    return Options(t, args.db, args.group, client_id, metrics, args.username, password)


def default_client_id(group: str | None) -> str:
    """Stable across restarts (the broker keeps this instance's session under it); two
    instances on one machine need their own --client-id."""
    return f"desanet-serve-{socket.gethostname()[:40]}" + (f"-{group}" if group else "")


@dataclass(frozen=True)
class Received:
    gen: int  # the connection it came on (acknowledgements go back on the same one)
    mid: int
    qos: int
    msg: Incoming


class Consumer:
    """The connection, its queue and the store; ``run`` is the main thread's loop."""

    def __init__(self, o: Options, store: Store, metrics: ServeMetrics) -> None:
        self.o, self.store, self.metrics = o, store, metrics
        self.notes: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.gen = 0  # written by paho's thread at each CONNACK, read by the main thread
        self.stop = threading.Event()
        self.connected_once = False
        self.connected_at = 0.0  # monotonic
        self.short_lived = 0  # connections in a row that ended soon after they began
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=o.client_id,
                                  protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        if o.username is not None:
            self.client.username_pw_set(o.username, o.password)

    @property
    def filters(self) -> list[str]:
        p, g = self.o.target.prefix, self.o.group
        shared = [f"{p}/+/{leaf}" for leaf in ("telemetry", "event")]
        if g:
            shared = [f"$share/{g}/{f}" for f in shared]
        return [f"{p}/+/status", *shared]

    # -- paho's thread: only queue ---------------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: object, flags: Any,
                    reason: ReasonCode, properties: object) -> None:
        if reason.is_failure:
            self.notes.put(("refused", str(reason)))
            return
        self.gen += 1
        self.notes.put(("connected", bool(getattr(flags, "session_present", False))))
        # Statuses at QoS 0: see the module docstring.
        client.subscribe([(f, SubscribeOptions(qos=0 if f.endswith("/status") else 1))
                          for f in self.filters])

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: object,
                       reason: ReasonCode, properties: object) -> None:
        self.notes.put(("lost", (reason.value, str(reason))))

    def _on_subscribe(self, client: paho.Client, userdata: object, mid: int,
                      reasons: list[ReasonCode], properties: object) -> None:
        self.notes.put(("subscribed", [str(r) for r in reasons if r.is_failure]))

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        self.notes.put(("message", Received(self.gen, msg.mid, msg.qos, Incoming(
            msg.topic, bytes(msg.payload), bool(msg.retain), time.time()))))

    # -- the main thread -------------------------------------------------------------------

    def open(self) -> None:
        """Connect and wait for the first CONNACK; raises ServeError naming --broker."""
        t = self.o.target
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY
        try:
            if t.tls:
                self.client.tls_set(ca_certs=t.ca, certfile=t.cert, keyfile=t.key)
            self.client.connect_timeout = CONNECT_TIMEOUT
            self.client.connect(t.host, t.port, keepalive=KEEPALIVE, clean_start=False,
                                properties=props)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ServeError(f"--broker: cannot connect to {t.url}: "
                             f"{exc or type(exc).__name__}") from exc
        self.client.loop_start()
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while not self.connected_once:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServeError(f"--broker: no answer from {t.url} within {CONNECT_TIMEOUT:g} s")
            try:
                kind, data = self.notes.get(timeout=left)
            except queue.Empty:
                continue
            self._note(kind, data, [])

    def close(self) -> None:
        self.client.disconnect()  # the session (and what the broker queues for it) stays
        self.client.loop_stop()

    def _note(self, kind: str, data: Any, batch: list[Received]) -> None:
        url = self.o.target.url
        if kind == "message":
            batch.append(data)
        elif kind == "refused":
            raise ServeError(f"--broker: {url} refused the connection: {data}")
        elif kind == "connected":
            if not self.connected_once:
                log(f"connected to {url} as {self.o.client_id}"
                    + (" (resuming its session)" if data else ""))
            else:
                log(f"reconnected to {url}")
            self.connected_once = True
            self.metrics.connected.set(1)
            self.connected_at = time.monotonic()
        elif kind == "lost":
            code, reason = data
            self.metrics.connected.set(0)
            short = self.connected_once and time.monotonic() - self.connected_at < SHORT_LIVED
            self.short_lived = self.short_lived + 1 if short else 0
            if code == SESSION_TAKEN_OVER or self.short_lived >= SHORT_IN_A_ROW:
                raise ServeError(f"--client-id: another client connected to {url} as "
                                 f"{self.o.client_id!r}" + ("" if code == SESSION_TAKEN_OVER else
                                 f" (the broker closed {SHORT_IN_A_ROW} connections in a row "
                                 "soon after they began)") + "; give every instance its own "
                                 "--client-id")
            if not self.connected_once:
                raise ServeError(f"--broker: {url} closed the connection before accepting it "
                                 f"({reason}); does it want a client certificate (--cert, --key), "
                                 "a user name or another one?")
            if not self.stop.is_set():
                log(f"connection to {url} lost ({reason}); reconnecting")
        elif kind == "subscribed":
            if data:
                raise ServeError(f"--broker: {url} refused the subscriptions "
                                 f"{', '.join(self.filters)}: {', '.join(data)} (may this client "
                                 "read them? does the broker support shared subscriptions?)")
            log(f"subscribed to {', '.join(self.filters)}")

    def take(self, wait: float) -> list[Received]:
        """What is queued, up to BATCH messages, waiting up to ``wait`` for the first."""
        batch: list[Received] = []
        timeout: float | None = wait
        while len(batch) < BATCH:
            try:
                kind, data = (self.notes.get(timeout=timeout) if timeout
                              else self.notes.get_nowait())
            except queue.Empty:
                break
            self._note(kind, data, batch)
            timeout = None
        return batch

    def store_batch(self, batch: list[Received]) -> bool:
        """Store, retrying with backoff until it works or we stop; True when committed."""
        delay = 1.0
        while True:
            started = time.monotonic()
            try:
                out = self.store.apply(self.o.target.prefix, [r.msg for r in batch], time.time())
            except Exception as exc:  # any database failure: keep the messages, retry
                self.metrics.db_errors.inc()
                why = " ".join(str(exc).split()) or type(exc).__name__  # one log line
                log(f"cannot store {len(batch)} message(s) in {redact(self.o.db)}: {why}; "
                    f"retrying in {delay:g} s (nothing is acknowledged meanwhile)")
                if self.stop.wait(delay):
                    return False
                delay = min(delay * 2, 30.0)
                self.store.reconnect()
                continue
            self.metrics.commit.observe(time.monotonic() - started)
            self.metrics.count(out)
            return True

    def ack(self, batch: list[Received]) -> None:
        for r in batch:
            if r.qos > 0 and r.gen == self.gen:
                self.client.ack(r.mid, r.qos)

    def run(self) -> None:
        while not self.stop.is_set():
            batch = self.take(0.5)
            self.metrics.pending.set(len(batch) + self.notes.qsize())
            if batch and self.store_batch(batch):
                self.ack(batch)


def cmd_serve(args: argparse.Namespace) -> int:
    o = options(args)
    store = open_store(o.db, o.client_id)
    registry = CollectorRegistry()
    metrics = ServeMetrics(registry)
    consumer = Consumer(o, store, metrics)
    server = None
    if o.metrics is not None:
        def load() -> list[Any]:
            reader = connect_store(o.db, o.client_id)
            try:
                return reader.sites()
            finally:
                reader.close()
        registry.register(FleetCollector(load))
        try:
            server, _ = start_http_server(o.metrics[1], o.metrics[0], registry=registry)
        except OSError as exc:
            store.close()
            raise ServeError(f"--metrics: cannot listen on {args.metrics}: "
                             f"{exc.strerror or exc}") from exc
        log(f"metrics on http://{args.metrics}/metrics")

    def stop(signum: int, frame: object) -> None:
        consumer.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        consumer.open()
        log(f"storing in {redact(o.db)}" + (f", shared group {o.group}" if o.group else ""))
        consumer.run()
    except StoreError as exc:
        raise ServeError(str(exc)) from exc
    finally:
        consumer.close()
        store.close()
        if server is not None:
            server.shutdown()
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``fleet`` command's subparsers."""
    s: argparse.ArgumentParser = subparsers.add_parser(
        "serve", help="the consumer as a service: every gateway's latest state and events in "
                      "SQLite or PostgreSQL, Prometheus metrics",
        description="Subscribe (a persistent session) to every gateway's retained status and, "
                    "at QoS 1, its telemetry and events; keep the latest state per gateway and "
                    "every event in a database, each message exactly once, acknowledged only "
                    "once stored; "
                    "optionally export Prometheus metrics. Several instances with one --group "
                    "split the load. See docs/fleet.md.")
    add_broker_arguments(s)
    s.add_argument("--username", help="broker user name")
    s.add_argument("--password-file", metavar="FILE",
                   help="a file holding the broker password (first line)")
    s.add_argument("--db", required=True, metavar="URL",
                   help="sqlite:///ABSOLUTE/PATH.db or postgresql://USER@HOST/DBNAME")
    s.add_argument("--group", metavar="NAME",
                   help="join the shared subscription group NAME: the instances of a group "
                        "split the telemetry and events between them")
    s.add_argument("--client-id", metavar="ID",
                   help="the MQTT client id, fixed so the broker keeps this instance's session "
                        "across restarts (default desanet-serve-<hostname>[-<group>]; every "
                        "instance needs its own)")
    s.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics")
    s.set_defaults(func=cmd_serve)
    return s


__all__ = ["Consumer", "ServeError", "cmd_serve", "options", "register"]
