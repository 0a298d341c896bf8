"""Real Mosquitto for the tests: a broker on a free port with its own config, and a consumer.

Nothing here is a fake (DESIGN.md section 3): :class:`Broker` runs the Debian
``mosquitto`` with a config file written to its own directory (persistence on,
so a consumer's session and its queued messages survive a stop and start, as
at a region's broker), optionally inside a network namespace (the lab's WAN);
:class:`Consumer` runs ``mqtt_consumer.py`` (paho, a persistent MQTT 5
session) beside it and records every message it receives, one JSON line each.
Waits are on conditions with deadlines (``wait_until``), never fixed sleeps.

Use the ``broker`` fixture (tests/integration/conftest.py) or build them::

    with Broker(tmp_path / "broker", port=free_port()) as b, b.consumer("desanet/v1/#") as c:
        ...
        c.wait_for(lambda m: m.topic.endswith("/status"), 10, "a status")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def have_mosquitto() -> bool:
    return Path(MOSQUITTO).exists()


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port nothing listens on, for a server started a moment later.

    Taken below the kernel's ephemeral range, so an outgoing connection of the other test
    worker cannot take it in between (port 0 would hand out exactly those), from a start
    that differs per process, and never twice in one process.
    """
    low = max(_ephemeral_low(), 12000)
    span = low - 10000
    start = 10000 + (os.getpid() * 7919) % span
    for i in range(span):
        port = 10000 + (start - 10000 + i) % span
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port between 10000 and {low}")


def _in_ns(ns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv] if ns else argv


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class Broker:
    """One Mosquitto; ``start``/``stop`` (SIGTERM: it saves its state)/``kill`` may repeat."""

    def __init__(self, workdir: Path, port: int, host: str = "127.0.0.1", ns: str | None = None,
                 tls_port: int | None = None, pki: Pki | None = None) -> None:
        self.dir = Path(workdir)
        self.port, self.host, self.ns, self.tls_port = port, host, ns, tls_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.pki = pki
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "mosquitto.log"
        self.conf = self.dir / "mosquitto.conf"
        lines = ["per_listener_settings true", "persistence true",
                 f"persistence_location {self.dir}/", f"log_dest file {self.log}",
                 "log_type all", "log_timestamp_format %H:%M:%S",
                 f"listener {port} {host}", "allow_anonymous true"]
        if tls_port is not None:
            assert pki is not None, "a TLS listener needs a PKI (make_pki)"
            # Devices log in with their certificate (its CN is their user name), nothing else.
            lines += [f"listener {tls_port} {host}", f"cafile {pki.ca}", f"certfile {pki.server_cert}",
                      f"keyfile {pki.server_key}", "require_certificate true",
                      "use_identity_as_username true", "allow_anonymous false"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to "mosquitto", who cannot write here
        self.conf.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "the broker already runs"
        mark = self.log.stat().st_size if self.log.exists() else 0
        self.proc = subprocess.Popen(_in_ns(self.ns, [MOSQUITTO, "-c", str(self.conf)]),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"mosquitto exited with {self.proc.returncode}: {err}"
                                     f"{self.tail()}")
            if not self.log.exists():
                return False
            with self.log.open("rb") as fh:
                fh.seek(mark)
                seen = fh.read()
            ports = [self.port] + ([self.tls_port] if self.tls_port else [])
            return all(f"listen socket on port {port}".encode() in seen for port in ports)
        _wait(listening, timeout, f"mosquitto to listen on {self.host}:{self.port}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        self.proc.wait(timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n--- mosquitto.log ---\n" + "\n".join(self.log.read_text().splitlines()[-lines:])

    def consumer(self, topic: str, client_id: str = "test-consumer") -> Consumer:
        return Consumer(self, topic, client_id)

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


@dataclass(frozen=True)
class Pki:
    """A test CA, the broker's certificate (for ``host``) and a device certificate (CN ``device``)."""

    ca: Path
    server_cert: Path
    server_key: Path
    device_cert: Path
    device_key: Path


def make_pki(where: Path, host: str = "127.0.0.1", device: str = "s1") -> Pki:
    """Generate the PKI with ``cryptography`` (EC P-256, valid for a day)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    where.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
        crt, pem = where / f"{stem}.crt", where / f"{stem}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        return crt, pem

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("desanet test CA")).issuer_name(name("desanet test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_path, _ = write("ca", ca, ca_key)

    def issue(stem: str, cn: str, san: x509.GeneralName | None) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1)))
        if san is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
        return write(stem, builder.sign(ca_key, hashes.SHA256()), key)

    server = issue("server", host, x509.IPAddress(ipaddress.ip_address(host)))
    dev = issue("device", device, None)
    return Pki(ca_path, server[0], server[1], dev[0], dev[1])


@dataclass(frozen=True)
class Received:
    topic: str
    retain: bool
    payload: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.payload)


class Consumer:
    """A subscriber with a persistent session (it misses nothing while the broker restarts)."""

    def __init__(self, broker: Broker, topic: str, client_id: str) -> None:
        self.broker = broker
        self.file = broker.dir / f"{client_id}.jsonl"
        self.file.unlink(missing_ok=True)
        argv = [sys.executable, str(HERE / "mqtt_consumer.py"), broker.host, str(broker.port),
                topic, client_id, str(self.file)]
        self.proc = subprocess.Popen(_in_ns(broker.ns, argv), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        _wait(lambda: self._subscribed(), 15, f"the consumer to subscribe to {topic}")

    def _subscribed(self) -> bool:
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise AssertionError(f"the consumer exited with {self.proc.returncode}: {err}")
        return any(line.get("subscribed") for line in self._lines())

    def _lines(self) -> list[dict[str, Any]]:
        if not self.file.exists():
            return []
        out = []
        for line in self.file.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def messages(self) -> list[Received]:
        return [Received(x["topic"], x["retain"], bytes.fromhex(x["payload"]))
                for x in self._lines() if "topic" in x]

    def wait_for(self, match: Callable[[Received], bool], timeout: float, what: str,
                 after: int = 0) -> Received:
        """The first message from index ``after`` on that ``match``es, waiting for it."""
        def find() -> Received | None:
            return next((m for m in self.messages()[after:] if match(m)), None)
        try:
            found: Received = _wait(find, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; received: {[m.topic for m in self.messages()]}"
                                 f"{self.broker.tail()}") from None
        return found

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def running_broker(workdir: Path, host: str = "127.0.0.1", ns: str | None = None,
                   tls: bool = False) -> Iterator[Broker]:
    """A broker on free ports; with ``tls`` also a TLS listener (``tls_port``) that takes
    only device certificates of ``broker.pki`` (``make_pki``)."""
    pki = make_pki(workdir / "pki", host) if tls else None
    with Broker(workdir, free_port(), host, ns, tls_port=free_port() if tls else None,
                pki=pki) as broker:
        broker.pki = pki
        yield broker
