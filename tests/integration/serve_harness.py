"""Helpers of the `desanet fleet serve` tests: the consumer as a real process, and a
gateway stand-in that publishes with the gateway's own payload and topic code.

Waits are on conditions with deadlines (``wait_until``), never fixed sleeps.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.telemetry import payloads
from gateway.telemetry.topics import Topics
from tests.integration.mosquitto import Broker
from tests.integration.mosquitto import _wait as wait_until  # one polling loop for both


class Serve:
    """One `desanet fleet serve` process; its stderr goes to ``log``."""

    def __init__(self, workdir: Path, broker: Broker, db: str, client_id: str,
                 group: str | None = None, metrics: int | None = None, *extra: str) -> None:
        self.log = workdir / f"serve-{client_id}.log"
        self.argv = [sys.executable, "-m", "gateway", "fleet", "serve", "--broker", broker.url,
                     "--db", db, "--client-id", client_id, *extra]
        if group:
            self.argv += ["--group", group]
        if metrics:
            self.argv += ["--metrics", f"127.0.0.1:{metrics}"]
        self.client_id, self.broker = client_id, broker
        self.proc: subprocess.Popen[bytes] | None = None
        self.mark = 0

    def start(self) -> Serve:
        self.mark = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=err)
        wait_until(lambda: self._alive() and "subscribed to" in self.text(), 20,
                   f"{self.client_id} to subscribe")
        return self

    def text(self) -> str:
        return self.log.read_bytes()[self.mark:].decode(errors="replace")

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.client_id} exited with {self.proc.returncode}:\n"
                                 f"{self.text()}{self.broker.tail()}")
        return True

    def exited(self) -> int | None:
        """The exit code, or None while it runs."""
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM; the exit code (None: it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None


class Gateway:
    """A stand-in gateway: the real payload and topic code, its own seq, QoS 1."""

    def __init__(self, broker: Broker, site: str, session: int = 1) -> None:
        self.who = payloads.Identity(site, "0.1.0", 1764662400 + session, session)
        self.topics = Topics("desanet/v1", site)
        self.seq = 0
        self.sent: list[tuple[str, bytes]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"desanet-{site}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, topic: str, body: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, body, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published()
        self.sent.append((topic, body))

    def status(self, online: bool = True) -> None:
        self.publish(self.topics.status, payloads.encode(payloads.status(self.who, "3f9a1c07b2de",
                                                                         online)), retain=True)

    def event(self, data: dict[str, Any]) -> bytes:
        self.seq += 1
        body = payloads.encode(payloads.message(self.who, self.seq, self.who.session, time.time(),
                                                data))
        self.publish(self.topics.event, body)
        return body

    def telemetry(self, data: dict[str, Any]) -> bytes:
        self.seq += 1
        body = payloads.encode(payloads.message(self.who, self.seq, self.who.session, time.time(),
                                                data))
        self.publish(self.topics.telemetry, body)
        return body

    def resend(self, topic: str, body: bytes) -> None:
        """A copy, as after a lost PUBACK or a crash (same seq)."""
        self.publish(topic, body)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def traffic(gw: Gateway, n: int, dup_every: int = 10) -> int:
    """``n`` messages, events and telemetry in turn (telemetry ``cc`` = its seq), a copy of
    every ``dup_every``-th right after it; the number of copies."""
    copies = 0
    for i in range(n):
        if i % 2:
            body = gw.telemetry({"cc": gw.seq + 1, "bl": 0})
            topic = gw.topics.telemetry
        else:
            body = gw.event({"type": "session_ended", "reason": "idle"})
            topic = gw.topics.event
        if dup_every and i % dup_every == dup_every - 1:
            gw.resend(topic, body)
            copies += 1
    return copies


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db, timeout=30) as c:
        return c.execute(sql).fetchall()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())
