"""`desanet fleet watch`: a live table of every gateway under a topic prefix.

Theory of operation
-------------------
One MQTT 5 connection (paho-mqtt 2.x, TLS with the operator's certificate)
subscribes to ``<prefix>/+/status``, ``/telemetry`` and ``/event``. paho's
network thread only puts what happens on a queue; the main thread takes it
off, applies messages to the pure :class:`~gateway.fleet.table.FleetTable`
and draws. The subscriptions are QoS 0: this is a viewer, the retained status
and the gateways' full telemetry reports bring it back in step after any gap
(`desanet fleet serve` is the consumer that keeps everything).

``--once`` has to know when the broker has sent every retained status. MQTT
has no end marker, so after the SUBACK of the real subscriptions a second
SUBSCRIBE for the status filter goes out with retain handling 1 ("send
retained messages only for a new subscription": none, it exists). A broker
answers a connection's packets in order, so its SUBACK arrives after the
retained messages of the first (Mosquitto writes QoS 0 retained messages out
before it reads the next packet). ``--timeout`` bounds the wait either way,
and the JSON says whether the end was reached (``"complete"``).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import secrets
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from gateway.errors import DesanetError, Invalid
from gateway.fleet.table import FleetTable, age, render

DEFAULT_PREFIX = "desanet/v1"
DEFAULT_ONCE_TIMEOUT = 10.0
PORTS = {"mqtt": 1883, "mqtts": 8883}
KEEPALIVE = 60
REDRAW_EVERY = 1.0  # the ages in the table move by the second; a burst of messages draws once
_LEVEL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class BadArguments(Invalid):
    """Every problem with the arguments, one line each starting with its option
    (`desanet` prints each and exits 2, like a config's problems)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self.field = problems[0].split(":", 1)[0] if problems else ""
        self.found = None
        self.expected = "valid arguments"
        self.example = None
        DesanetError.__init__(self, "; ".join(problems))


class WatchError(DesanetError):
    """The broker could not be reached, refused us, or the wait ended before it answered."""


@dataclass(frozen=True)
class Target:
    """Where and how to connect, checked (see :func:`target`)."""

    url: str
    host: str
    port: int
    tls: bool
    ca: str | None
    cert: str | None
    key: str | None
    prefix: str


def _readable(path: str, what: str, problems: list[str]) -> None:
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        problems.append(f"{what}: {path} is not a readable file")


def target(args: argparse.Namespace) -> Target:
    """Check the arguments; raises Invalid with every problem at once."""
    problems: list[str] = []
    url = args.broker
    parts = urlsplit(url)
    try:
        port = parts.port or PORTS.get(parts.scheme, 0)
    except ValueError:
        port = 0
    if parts.scheme not in PORTS or not parts.hostname or not port or parts.path not in ("", "/"):
        problems.append(f"--broker: {url!r} is not a broker URL; write e.g. "
                        "mqtts://mqtt.diskominfo.example.go.id:8883 (mqtt:// or mqtts://, host, "
                        "optional port, no path)")
    tls = parts.scheme == "mqtts"
    for flag, path in (("--ca", args.ca), ("--cert", args.cert), ("--key", args.key)):
        if path is None:
            continue
        if not tls:
            problems.append(f"{flag}: TLS files need an mqtts:// broker URL, not {url!r}")
        _readable(path, flag, problems)
    if (args.cert is None) != (args.key is None):
        problems.append("--cert and --key: a client certificate needs both, or neither")
    prefix = args.prefix
    if prefix.startswith("$") or not all(_LEVEL.match(x) for x in prefix.split("/")):
        problems.append(f"--prefix: {prefix!r} is not a topic prefix: levels of letters, digits, "
                        "'.', '-' or '_' separated by '/', no wildcards; write e.g. desanet/v1")
    timeout = getattr(args, "timeout", None)  # `fleet serve` has none
    if timeout is not None and not timeout > 0:
        problems.append(f"--timeout: {timeout:g} is not a positive number of seconds; "
                        "write e.g. --timeout 10")
    if problems:
        raise BadArguments(problems)
    return Target(url=url, host=parts.hostname or "", port=port, tls=tls, ca=args.ca,
                  cert=args.cert, key=args.key, prefix=prefix)


# What paho's thread hands to the main thread.
Note = tuple[str, Any]


class Watcher:
    """One connection and its queue; ``pump`` runs on the main thread."""

    def __init__(self, t: Target) -> None:
        self.target = t
        self.table = FleetTable(t.prefix)
        self.notes: queue.Queue[Note] = queue.Queue()
        self.connected = False
        self.ever_connected = False
        self.complete = False  # the retained messages have all arrived
        self.lost: str | None = None
        self._sub_mid: int | None = None  # paho's thread only
        self._barrier_mid: int | None = None  # paho's thread only
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"desanet-watch-{secrets.token_hex(4)}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    @property
    def filters(self) -> list[str]:
        return [f"{self.target.prefix}/+/{leaf}" for leaf in ("status", "telemetry", "event")]

    # -- paho's thread: only queue ---------------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: object, flags: object,
                    reason: ReasonCode, properties: object) -> None:
        self.notes.put(("connack", (reason.is_failure, str(reason))))
        if not reason.is_failure:
            result, mid = client.subscribe([(f, SubscribeOptions(qos=0)) for f in self.filters])
            # Read and written on paho's thread only (SUBACKs are handled there after this).
            self._sub_mid = mid if result == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: object,
                       reason: ReasonCode, properties: object) -> None:
        self.notes.put(("lost", str(reason)))

    def _on_subscribe(self, client: paho.Client, userdata: object, mid: int,
                      reasons: list[ReasonCode], properties: object) -> None:
        if mid == self._barrier_mid:
            self.notes.put(("complete", None))
        if mid != self._sub_mid:
            return
        refused = [str(r) for r in reasons if r.is_failure]
        self.notes.put(("subscribed", refused))
        if not refused:
            barrier = SubscribeOptions(qos=0, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
            result, bmid = client.subscribe(self.filters[0], options=barrier)
            self._barrier_mid = bmid if result == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        self.notes.put(("message", (msg.topic, bytes(msg.payload), bool(msg.retain), time.time())))

    # -- the main thread -------------------------------------------------------------------

    def open(self, timeout: float) -> None:
        """Connect (blocking: DNS, TCP, TLS); paho's thread runs from here on. Raises WatchError."""
        t = self.target
        try:
            if t.tls:
                self.client.tls_set(ca_certs=t.ca, certfile=t.cert, keyfile=t.key)
            self.client.connect_timeout = timeout
            self.client.connect(t.host, t.port, keepalive=KEEPALIVE, clean_start=True)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise WatchError(f"cannot connect to {t.url}: {exc or type(exc).__name__}") from exc
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def pump(self, until: float) -> bool:
        """Handle what paho's thread queued until the queue is empty or ``until`` (monotonic)
        passed, waiting for the first note up to then (so a flood of messages still lets
        the caller draw); True when the table or the connection state changed."""
        changed = False
        wait = max(0.0, until - time.monotonic())
        while True:
            try:
                kind, data = self.notes.get(timeout=wait)
            except queue.Empty:
                return changed
            changed = self._handle(kind, data) or changed
            if time.monotonic() >= until:
                return changed
            wait = 0.0

    def _handle(self, kind: str, data: Any) -> bool:
        if kind == "connack":
            failed, reason = data
            if failed:
                raise WatchError(f"the broker {self.target.url} refused the connection: {reason}")
            self.connected, self.ever_connected, self.lost = True, True, None
            return True
        if kind == "lost":
            if not self.ever_connected:  # e.g. TLS 1.3: a refused client certificate shows here
                raise WatchError(f"{self.target.url} closed the connection before accepting it "
                                 f"({data}); does it want a client certificate (--cert, --key) "
                                 "or another one?")
            self.connected, self.lost = False, data
            return True
        if kind == "subscribed" and data:
            raise WatchError(f"the broker refused the subscription to {', '.join(self.filters)}: "
                             f"{', '.join(data)} (may this certificate read them?)")
        if kind == "complete" and not self.complete:
            self.complete = True
            return True
        if kind == "message":
            topic, payload, retained, received = data
            return self.table.apply(topic, payload, retained, received)
        return False

    def snapshot(self) -> dict[str, Any]:
        return {"v": 1, "broker": self.target.url, "time": round(time.time(), 3),
                "connected": self.connected, "complete": self.complete, **self.table.to_json()}


def run_once(w: Watcher, timeout: float, out: TextIO, as_json: bool) -> int:
    deadline = time.monotonic() + timeout
    while not w.complete and time.monotonic() < deadline:
        w.pump(deadline)
    if not w.connected and not w.complete:
        raise WatchError(f"no answer from {w.target.url} within {timeout:g} s"
                         + (f" (last: {w.lost})" if w.lost else ""))
    if as_json:
        out.write(json.dumps(w.snapshot(), indent=2) + "\n")
    else:
        out.write("\n".join(screen(w, time.time())) + "\n")
    return 0


def screen(w: Watcher, now: float) -> list[str]:
    s = w.table.summary()
    state = "connected" if w.connected else f"reconnecting ({w.lost})" if w.lost else "connecting"
    head = (f"desanet fleet watch  {w.target.url}  {w.target.prefix}/+  {state}  "
            f"{time.strftime('%H:%M:%S', time.localtime(now))}")
    tally = (f"{s['gateways']} gateway(s): {s['online']} online, {s['offline']} offline"
             + (f", {s['unknown']} without status" if s["unknown"] else ""))
    if not w.complete and w.connected:
        tally += "  (retained messages still arriving)"
    return [head, tally, "", *render(w.table, now)]


def run_live(w: Watcher, timeout: float | None, out: TextIO, as_json: bool) -> int:
    """Until Ctrl-C (or ``timeout``): redraw in place on a terminal, else print each change
    (at most once a second); --json prints one document per line."""
    tty = out.isatty() and not as_json
    end = None if timeout is None else time.monotonic() + timeout
    # The first screen waits for the retained statuses (or a second), not "connecting".
    dirty, drawn, first = True, time.monotonic(), True

    def draw() -> None:
        now = time.time()
        if as_json:
            out.write(json.dumps(w.snapshot(), separators=(",", ":")) + "\n")
        elif tty:
            out.write("\x1b[H\x1b[J" + "\n".join(screen(w, now)) + "\n")
        else:
            out.write("\n".join(screen(w, now)) + "\n\n")
        out.flush()

    while end is None or time.monotonic() < end:
        next_draw = drawn + REDRAW_EVERY
        limit = next_draw if end is None else min(next_draw, end)
        dirty = w.pump(limit) or dirty
        if (time.monotonic() >= next_draw and (dirty or tty)) or (first and w.complete):
            draw()
            dirty, drawn, first = False, time.monotonic(), False
    if dirty:
        draw()
    return 0


def cmd_watch(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = out or sys.stdout
    t = target(args)
    w = Watcher(t)
    connect_timeout = args.timeout or DEFAULT_ONCE_TIMEOUT
    w.open(connect_timeout)
    try:
        if args.once:
            return run_once(w, args.timeout or DEFAULT_ONCE_TIMEOUT, stream, args.json)
        return run_live(w, args.timeout, stream, args.json)
    finally:
        w.close()


def add_broker_arguments(p: argparse.ArgumentParser) -> None:
    """--broker, --ca, --cert, --key and --prefix, as :func:`target` reads them
    (`fleet watch` and `fleet serve`)."""
    p.add_argument("--broker", required=True, metavar="URL",
                   help="the broker: mqtts://HOST[:PORT] (TLS, port 8883 by default) or "
                        "mqtt://HOST[:PORT] (1883)")
    p.add_argument("--ca", metavar="FILE",
                   help="CA certificate(s) that signed the broker's certificate, PEM "
                        "(default: the system's CAs)")
    p.add_argument("--cert", metavar="FILE",
                   help="the operator's client certificate, PEM (with --key)")
    p.add_argument("--key", metavar="FILE", help="the private key of --cert, PEM")
    p.add_argument("--prefix", default=DEFAULT_PREFIX,
                   help=f"the topic prefix the gateways use (default {DEFAULT_PREFIX})")


def register(subparsers: argparse._SubParsersAction,
             func: Callable[[argparse.Namespace], int] = cmd_watch) -> argparse.ArgumentParser:
    """Add ``watch`` to the ``fleet`` command's subparsers."""
    w: argparse.ArgumentParser = subparsers.add_parser(
        "watch", help="live table of every gateway reporting to a broker (online, version, "
                      "clients, uplink, queued forms, backlog, last seen)",
        description="Subscribe to the retained status, telemetry and events of every site "
                    "under the prefix and show one row per gateway, redrawn in place on a "
                    "terminal. Ctrl-C stops. Example (the lab's broker): desanet lab exec wan -- "
                    "desanet fleet watch --broker mqtts://mqtt.lab:8883 --ca CA --cert OP.crt "
                    "--key OP.key")
    add_broker_arguments(w)
    w.add_argument("--json", action="store_true",
                   help="print JSON: with --once one document, else one document per line on "
                        "every change")
    w.add_argument("--once", action="store_true",
                   help="print the state once the broker has sent every retained status "
                        "(or --timeout passed) and exit")
    w.add_argument("--timeout", type=float, metavar="S",
                   help=f"with --once: wait at most S seconds (default {DEFAULT_ONCE_TIMEOUT:g}); "
                        "else stop after S seconds (default: run until Ctrl-C)")
    w.set_defaults(func=func)
    return w


__all__ = ["BadArguments", "WatchError", "Watcher", "add_broker_arguments", "age", "cmd_watch",
           "register", "target"]
