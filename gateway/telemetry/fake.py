"""A broker in memory for unit tests of the telemetry service (the real one is Mosquitto).

``FakeBroker.connect`` is a :class:`gateway.telemetry.mqtt.Connect`: it refuses
while ``up`` is False, else returns a :class:`FakeLink` that records every
publish; PUBACKs come on the loop at once (``auto_ack``) or when the test calls
``ack``; ``drop`` loses the connection as a dead uplink would.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gateway.telemetry.mqtt import (
    Connect,
    Incoming,
    Link,
    LinkError,
    LinkSettings,
    OnAck,
    OnLost,
    OnMessage,
    SubscriptionRefused,
)


@dataclass
class Published:
    link: int  # which connection (0, 1, ...)
    mid: int
    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None = None


@dataclass
class FakeBroker:
    up: bool = True
    auto_ack: bool = True
    refuse_next: int = 0  # answer the next N publishes with an error PUBACK
    drop_at_connect: int = 0  # the next N connections are lost right after their CONNACK
    refuse_subscriptions: bool = False  # answer SUBSCRIBEs with a failure SUBACK
    links: list[FakeLink] = field(default_factory=list)
    published: list[Published] = field(default_factory=list)
    attempts: int = 0

    async def connect(self, settings: LinkSettings, on_ack: OnAck, on_lost: OnLost,
                      on_message: OnMessage | None = None) -> Link:
        self.attempts += 1
        if not self.up:
            raise LinkError(f"cannot connect to {settings.host}:{settings.port}: refused (fake)")
        link = FakeLink(self, len(self.links), settings, on_ack, on_lost, on_message)
        self.links.append(link)
        if self.drop_at_connect > 0:
            self.drop_at_connect -= 1
            asyncio.get_running_loop().call_soon(link.drop, "lost right after CONNACK (fake)")
            await asyncio.sleep(0)  # the loss is reported before the caller resumes
        return link


class FakeLink:
    def __init__(self, broker: FakeBroker, number: int, settings: LinkSettings, on_ack: OnAck,
                 on_lost: OnLost, on_message: OnMessage | None = None) -> None:
        self.broker, self.number, self.settings = broker, number, settings
        self._on_ack, self._on_lost, self._on_message = on_ack, on_lost, on_message
        self.subscriptions: list[str] = []
        self._mid = 0
        self.gone = False
        self.closed_with_will: bool | None = None
        self.unacked: list[int] = []

    def publish(self, topic: str, payload: bytes, retain: bool = False,
                correlation: bytes | None = None) -> int:
        if self.gone:
            raise LinkError("the connection is gone (fake)")
        self._mid += 1
        self.broker.published.append(Published(self.number, self._mid, topic, payload, retain,
                                               correlation))
        if self.broker.refuse_next > 0:
            self.broker.refuse_next -= 1
            asyncio.get_running_loop().call_soon(self._on_ack, self._mid, False)
        elif self.broker.auto_ack:
            asyncio.get_running_loop().call_soon(self._on_ack, self._mid, True)
        else:
            self.unacked.append(self._mid)
        return self._mid

    def subscribe(self, topic: str) -> None:
        if self.gone:
            raise LinkError("the connection is gone (fake)")
        self.subscriptions.append(topic)

    async def subscribed(self, topic: str, timeout: float) -> None:
        if topic not in self.subscriptions:
            raise LinkError(f"not subscribed to {topic} on this connection (fake)")
        if self.broker.refuse_subscriptions:
            raise SubscriptionRefused("the broker refused the subscription (fake)")
        if self.gone:
            raise LinkError("the connection is gone (fake)")

    def deliver(self, message: Incoming) -> None:
        """A message arrives on a subscription (the test plays the operator)."""
        assert message.topic in self.subscriptions, f"not subscribed to {message.topic}"
        if self._on_message is not None:
            self._on_message(message)

    def ack(self, mid: int, ok: bool = True) -> None:
        """The PUBACK of ``mid`` arrives (even after the connection is gone: a late one)."""
        self._on_ack(mid, ok)

    def drop(self, reason: str = "keepalive timeout (fake)") -> None:
        if not self.gone:
            self.gone = True
            self._on_lost(reason)

    async def close(self, will: bool = True) -> None:
        self.gone = True
        if self.closed_with_will is None:
            self.closed_with_will = will


def _check(broker: FakeBroker) -> Connect:
    return broker.connect  # mypy checks the fake against the port
