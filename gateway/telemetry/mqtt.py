"""The MQTT adapter: one connection to the broker on paho-mqtt 2.x (MQTT 5, or 3.1.1).

Theory of operation
-------------------
A :class:`MqttLink` is ONE connection: it is opened once and, when lost or
closed, thrown away; the telemetry service makes a new one for the next
attempt, after its own jittered backoff. paho's automatic reconnect is off
(``reconnect_on_failure=False``) and its in-memory queue is never relied on:
a message not acknowledged on this connection is still in our durable
outbox, and goes out again on the next one. A fresh paho client per
connection cannot send an old connection's leftovers a second time.

The event loop never blocks: the blocking ``connect`` (name lookup, TCP, TLS
handshake, reading the certificate files) runs in a worker thread, then
paho's network loop runs on its own thread (``loop_start``). paho calls our
callbacks on that thread; each hands its result to the event loop with
``call_soon_threadsafe``, so the service only ever sees them on the loop.
``publish`` only queues a packet and wakes paho's thread (a short lock): it
may be called from the loop.

The Last Will (retained, QoS 1) is the status with ``online: false``; the
broker publishes it when the connection is lost without a DISCONNECT (kill -9,
power cut, uplink gone past 1.5 x keepalive), and at a clean stop too, as the
DISCONNECT carries reason 0x04, "Disconnect with Will Message".

MQTT 3.1.1 (docs/mqtt.md "MQTT 3.1.1"): ``settings.protocol`` "5" or "3.1.1"
forces one; "auto" (:class:`Negotiator`) tries MQTT 5 and, when the broker
refuses it (a 3.1.1 broker answers CONNACK return code 1 "unacceptable
protocol version", which paho reports as 0x84, or just closes the connection
before any CONNACK), connects again at once with 3.1.1 and keeps using it for
that broker for the rest of the run. 3.1.1 has no properties and no DISCONNECT
reason, and a clean DISCONNECT discards the Will: a clean stop therefore
publishes the offline status itself, waits for its PUBACK, then disconnects
(or, without a PUBACK, drops the socket so that the broker sends the Will).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import DesanetError

log = logging.getLogger("desanet.mqtt")

CONNECT_TIMEOUT = 30.0  # paho's socket timeout for TCP and TLS over a satellite link
CONNACK_TIMEOUT = 30.0  # then the broker's answer
CLOSE_TIMEOUT = 10.0
DISCONNECT_WITH_WILL = 4  # MQTT 5 reason code 0x04
UNSUPPORTED_PROTOCOL = 0x84  # MQTT 5 CONNACK reason; paho maps a 3.1.1 return code 1 to it
GOODBYE_TIMEOUT = 5.0  # 3.1.1: how long a clean stop waits for the offline status's PUBACK
PROTOCOLS = ("auto", "5", "3.1.1")


class LinkError(DesanetError):
    """The connection could not be made, or is gone."""


class SubscriptionRefused(LinkError):
    """The broker answered a SUBSCRIBE with a failure (its ACL, usually)."""


class ProtocolRefused(LinkError):
    """The broker refused the protocol version, or closed the connection before its CONNACK
    (what a broker that does not speak MQTT 5 may do)."""


@dataclass(frozen=True)
class LinkSettings:
    host: str
    port: int
    client_id: str
    keepalive: int
    will_topic: str
    will_payload: bytes
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    protocol: str = "auto"  # PROTOCOLS: "auto" tries 5, then 3.1.1 (see the module docstring)


@dataclass(frozen=True)
class Incoming:
    """A message received on a subscription (the command topic), with its MQTT 5
    request/response properties when the sender set them."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation: bytes | None = None


# What paho reports back, on the event loop: PUBACK of ``mid`` (ok=False: the broker
# answered with an error code, e.g. not authorized), the connection gone (a reason),
# and a message received.
OnAck = Callable[[int, bool], None]
OnLost = Callable[[str], None]
OnMessage = Callable[[Incoming], None]


class Link(Protocol):
    """One open connection (see the module docstring)."""

    def publish(self, topic: str, payload: bytes, retain: bool = False,
                correlation: bytes | None = None) -> int:
        """Queue a QoS 1 message (with MQTT 5 correlation data when given); its message id.
        Does not block. Raises LinkError."""
        ...

    def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 1; messages go to the ``on_message`` given at connect. Does not
        block. Raises LinkError."""
        ...

    async def subscribed(self, topic: str, timeout: float) -> None:
        """Wait for the broker's SUBACK of ``topic`` (subscribed on this link). Raises
        LinkError when the broker refused it, the link is gone, or no SUBACK came in time."""
        ...

    async def close(self, will: bool = True) -> None:
        """Disconnect (with ``will``: the broker publishes the Last Will) and stop the thread."""
        ...


class Connect(Protocol):
    async def __call__(self, settings: LinkSettings, on_ack: OnAck, on_lost: OnLost,
                       on_message: OnMessage | None = None) -> Link: ...


class MqttLink:
    """One paho client and its network thread (see the module docstring)."""

    def __init__(self, settings: LinkSettings, on_ack: OnAck, on_lost: OnLost,
                 on_message: OnMessage | None = None, version: str = "5") -> None:
        self.settings = settings
        self.protocol = version  # "5" or "3.1.1": what this connection speaks
        self._on_ack = on_ack
        self._on_lost = on_lost
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._connected: asyncio.Future[None] = self._loop.create_future()
        self._gone = False
        # Set when open() gave up: a connect still running on its worker thread must not
        # start paho's loop afterwards (a zombie connection with our client id and Will).
        self._abandoned = False
        self._start_lock = threading.Lock()
        self._v5 = version == "5"
        if self._v5:
            self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                                       protocol=MQTTProtocolVersion.MQTTv5,
                                       reconnect_on_failure=False)
        else:  # 3.1.1: a clean session is the Client's, not connect()'s
            self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                                       protocol=MQTTProtocolVersion.MQTTv311, clean_session=True,
                                       reconnect_on_failure=False)
        self._goodbye: tuple[int, asyncio.Future[None]] | None = None  # 3.1.1 clean stop
        self._client.on_connect = self._paho_connect
        self._client.on_disconnect = self._paho_disconnect
        self._client.on_publish = self._paho_publish
        self._client.on_message = self._paho_message
        self._client.on_subscribe = self._paho_subscribe
        self._subacks: dict[int, asyncio.Future[None]] = {}  # by SUBSCRIBE mid
        self._subscriptions: dict[str, asyncio.Future[None]] = {}  # by topic

    @classmethod
    async def open(cls, settings: LinkSettings, on_ack: OnAck, on_lost: OnLost,
                   timeout: float = CONNACK_TIMEOUT, on_message: OnMessage | None = None,
                   version: str = "5") -> MqttLink:
        """Connect with MQTT ``version`` ("5" or "3.1.1") and wait for the broker's CONNACK.
        Raises LinkError (ProtocolRefused: see the class; nothing left running)."""
        link = cls(settings, on_ack, on_lost, on_message, version)
        try:
            # paho's own socket timeout ends a connect that hangs; this one is a backstop
            await asyncio.wait_for(asyncio.to_thread(link._connect_blocking), CONNECT_TIMEOUT + 5)
            await asyncio.wait_for(asyncio.shield(link._connected), timeout)
        except (OSError, ssl.SSLError, ValueError, TimeoutError) as exc:
            await link._stop_thread()
            raise LinkError(f"cannot connect to {settings.host}:{settings.port}: "
                            f"{exc or type(exc).__name__}") from exc
        except BaseException:
            await link._stop_thread()
            raise
        return link

    def _connect_blocking(self) -> None:
        """Blocks (files, DNS, TCP, TLS): runs on a worker thread."""
        s = self.settings
        if s.tls:
            self._client.tls_set(ca_certs=s.ca_file, certfile=s.cert_file, keyfile=s.key_file)
        if s.username is not None:
            self._client.username_pw_set(s.username, s.password)
        self._client.will_set(s.will_topic, s.will_payload, qos=1, retain=True)
        self._client.connect_timeout = CONNECT_TIMEOUT
        if self._v5:
            self._client.connect(s.host, s.port, keepalive=s.keepalive, clean_start=True)
        else:
            self._client.connect(s.host, s.port, keepalive=s.keepalive)
        with self._start_lock:
            if self._abandoned:
                sock = self._client.socket()
                if sock is not None:
                    sock.close()
                return
            self._client.loop_start()

    # -- paho's thread -> the loop ---------------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: the daemon is gone, nobody to tell
            self._loop.call_soon_threadsafe(fn, *args)

    def _paho_connect(self, client: paho.Client, userdata: object, flags: object,
                      reason: ReasonCode, properties: object) -> None:
        self._post(self._connack, reason.is_failure, str(reason), reason.value == UNSUPPORTED_PROTOCOL)

    def _paho_disconnect(self, client: paho.Client, userdata: object, flags: object,
                         reason: ReasonCode, properties: object) -> None:
        self._post(self._lost, str(reason))

    def _paho_publish(self, client: paho.Client, userdata: object, mid: int,
                      reason: ReasonCode, properties: object) -> None:
        if self._goodbye is not None and mid == self._goodbye[0]:
            self._post(self._goodbye_acked)
            return
        self._post(self._on_ack, mid, not reason.is_failure)

    def _paho_message(self, client: paho.Client, userdata: object,
                      message: paho.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        reply = getattr(props, "ResponseTopic", None)
        corr = getattr(props, "CorrelationData", None)
        msg = Incoming(message.topic, bytes(message.payload),
                       reply if isinstance(reply, str) else None,
                       bytes(corr) if isinstance(corr, bytes | bytearray) else None)
        if self._on_message is not None:
            self._post(self._on_message, msg)

    def _paho_subscribe(self, client: paho.Client, userdata: object, mid: int,
                        reasons: list[ReasonCode], properties: object) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        self._post(self._suback, mid, failed[0] if failed else None)

    # -- on the loop ----------------------------------------------------------------------

    def _suback(self, mid: int, failure: str | None) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is None or fut.done():
            return
        if failure:
            fut.set_exception(SubscriptionRefused(f"the broker refused the subscription: "
                                                  f"{failure}"))
        else:
            fut.set_result(None)

    def _connack(self, failed: bool, reason: str, version_refused: bool = False) -> None:
        if self._connected.done():
            return
        if failed:
            kind = ProtocolRefused if version_refused else LinkError
            self._connected.set_exception(kind(f"the broker refused the connection: {reason}"))
        else:
            self._connected.set_result(None)

    def _goodbye_acked(self) -> None:
        if self._goodbye is not None and not self._goodbye[1].done():
            self._goodbye[1].set_result(None)

    def _lost(self, reason: str) -> None:
        if not self._connected.done():
            self._connected.set_exception(
                ProtocolRefused(f"connection closed before CONNACK: {reason}"))
            return
        if not self._gone:
            self._gone = True
            self._fail_subscriptions(reason)
            self._on_lost(reason)

    def _fail_subscriptions(self, reason: str) -> None:
        for fut in self._subacks.values():
            if not fut.done():
                fut.set_exception(LinkError(f"the connection is gone: {reason}"))
        self._subacks.clear()

    def publish(self, topic: str, payload: bytes, retain: bool = False,
                correlation: bytes | None = None) -> int:
        if self._gone:
            raise LinkError("the connection is gone")
        props = None
        if correlation is not None and self._v5:  # 3.1.1 has no correlation data
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = correlation
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LinkError(f"publish failed: {paho.error_string(info.rc)}")
        return info.mid

    def subscribe(self, topic: str) -> None:
        if self._gone:
            raise LinkError("the connection is gone")
        rc, mid = self._client.subscribe(topic, qos=1)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise LinkError(f"subscribe to {topic} failed: {paho.error_string(rc)}")
        fut = self._loop.create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
        self._subacks[mid] = self._subscriptions[topic] = fut

    async def subscribed(self, topic: str, timeout: float) -> None:
        fut = self._subscriptions.get(topic)
        if fut is None:
            raise LinkError(f"not subscribed to {topic} on this connection")
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise LinkError(f"no SUBACK for {topic} within {timeout:g} s") from None

    async def close(self, will: bool = True) -> None:
        if not self._gone and self._connected.done() and self._connected.exception() is None:
            if not self._v5:
                await self._close_311(will)
                return
            self._gone = True
            code = DISCONNECT_WITH_WILL if will else 0
            self._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=code))
        await self._stop_thread()

    async def _close_311(self, will: bool) -> None:
        """3.1.1 discards the Will at a DISCONNECT: publish it ourselves (retained, QoS 1), and
        disconnect once the broker has it; without its PUBACK, end the connection without a
        DISCONNECT, so the broker publishes the Will."""
        s = self.settings
        said = not will
        if will:
            done: asyncio.Future[None] = self._loop.create_future()
            info = self._client.publish(s.will_topic, s.will_payload, qos=1, retain=True)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._goodbye = (info.mid, done)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(done), GOODBYE_TIMEOUT)
            said = done.done()
        self._gone = True
        if said:
            self._client.disconnect()
        else:
            sock = self._client.socket()
            if isinstance(sock, socket.socket):  # an ssl.SSLSocket is one too
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        await self._stop_thread()

    async def _stop_thread(self) -> None:
        self._gone = True
        self._fail_subscriptions("closed")
        with self._start_lock:  # held only around loop_start: microseconds
            self._abandoned = True
        try:
            # loop_stop joins paho's thread (at most ~1 s after the socket is closed)
            await asyncio.wait_for(asyncio.to_thread(self._client.loop_stop), CLOSE_TIMEOUT)
        except TimeoutError:
            log.warning("the MQTT network thread did not stop within %ss", CLOSE_TIMEOUT)
        if not self._connected.done():
            self._connected.cancel()
        elif not self._connected.cancelled():
            self._connected.exception()  # retrieved: no "never retrieved" warning


class Negotiator:
    """A :class:`Connect` that picks the protocol version (see the module docstring): with
    ``settings.protocol`` "auto", MQTT 5 first, and 3.1.1 once a broker refused 5; the
    choice is kept per broker (host, port) for the life of this object (the daemon's run)."""

    def __init__(self, timeout: float = CONNACK_TIMEOUT) -> None:
        self.timeout = timeout
        self.chosen: dict[tuple[str, int], str] = {}

    async def __call__(self, settings: LinkSettings, on_ack: OnAck, on_lost: OnLost,
                       on_message: OnMessage | None = None) -> Link:
        if settings.protocol != "auto":
            return await MqttLink.open(settings, on_ack, on_lost, self.timeout, on_message,
                                       settings.protocol)
        where = (settings.host, settings.port)
        version = self.chosen.get(where, "5")
        try:
            return await MqttLink.open(settings, on_ack, on_lost, self.timeout, on_message, version)
        except ProtocolRefused as exc:
            if version != "5":
                raise
            refused = exc
        try:
            link = await MqttLink.open(settings, on_ack, on_lost, self.timeout, on_message, "3.1.1")
        except LinkError as exc:  # not a version matter after all: report the first error
            raise refused from exc
        log.warning("MQTT: %s:%d refused MQTT 5 (%s); using MQTT 3.1.1 with it from now on",
                    *where, refused)
        self.chosen[where] = "3.1.1"
        return link


# The Connect the daemon uses: real connections through paho, one protocol memory per run.
connect = Negotiator()


def _check() -> Connect:
    return connect  # mypy checks the adapter against its port
