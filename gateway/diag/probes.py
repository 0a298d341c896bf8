"""Blocking network probes (run in threads) and what their failures mean.

Each probe returns facts, never raises for a network failure: the reason a connection
failed is one short code (``refused``, ``timeout``, ``dns``, ``unreachable``,
``tls-verify``, ``tls-rejected``, ``tls``, ``closed``) that the checks turn into words.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import secrets
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


def reason_of(exc: BaseException) -> str:
    """One code for why a connection failed."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "tls-verify"
    if isinstance(exc, ssl.SSLError):
        text = str(exc).lower()
        if "alert" in text and any(w in text for w in ("certificate", "unknown ca", "handshake")):
            return "tls-rejected"  # the server refused our certificate (or its lack)
        return "tls"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(exc, socket.gaierror):
        return "dns"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, EOFError,
                        http.client.RemoteDisconnected)):
        return "closed"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH,
                                                  errno.EADDRNOTAVAIL):
        return "unreachable"
    return "error"


REASON_WORDS: dict[str, tuple[str, str]] = {
    "refused": ("koneksi ditolak (tidak ada layanan di port itu)",
                "connection refused (nothing listens on that port)"),
    "timeout": ("tidak ada jawaban sampai batas waktu (diblokir atau jaringan putus)",
                "no answer before the deadline (blocked, or the network is down)"),
    "dns": ("nama server tidak bisa di-resolve (DNS)", "the server's name does not resolve (DNS)"),
    "unreachable": ("tidak ada rute ke server (uplink putus?)",
                    "no route to the server (is the uplink down?)"),
    "tls-verify": ("sertifikat server tidak dipercaya", "the server's certificate is not trusted"),
    "tls-rejected": ("server menolak sertifikat gateway (sesi TLS ditutup sebelum menjawab)",
                     "the server refused the gateway's certificate (it closed the TLS session "
                     "before answering)"),
    "tls": ("jabat tangan TLS gagal", "the TLS handshake failed"),
    "closed": ("server menutup koneksi", "the server closed the connection"),
    "files": ("berkas sertifikat atau kunci tidak bisa dibaca",
              "the certificate or key files cannot be read"),
    "error": ("kesalahan jaringan", "network error"),
}


def reason_words(code: str, lang: str) -> str:
    id_text, en_text = REASON_WORDS.get(code, REASON_WORDS["error"])
    return en_text if lang == "en" else id_text


@dataclass(frozen=True)
class HttpProbe:
    url: str
    status: int  # 0: no answer
    reason: str  # "" when answered
    error: str
    seconds: float
    size: int = 0
    body_seconds: float = 0.0  # from the answer's head to the last byte read


def http_get(url: str, timeout: float, max_bytes: int = 65536,
             budget: float | None = None) -> HttpProbe:
    """GET ``url`` (no redirects followed), reading at most ``max_bytes`` of the body and
    for at most ``budget`` seconds; ``timeout`` bounds each network wait."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    started = time.monotonic()
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "desanet-diag", "Accept": "*/*"})
        resp = conn.getresponse()
        head = time.monotonic()
        size = 0
        while size < max_bytes and (budget is None or time.monotonic() - head < budget):
            chunk = resp.read(min(65536, max_bytes - size))
            if not chunk:
                break
            size += len(chunk)
        end = time.monotonic()
        return HttpProbe(url, resp.status, "", "", end - started, size, end - head)
    except (OSError, http.client.HTTPException) as exc:
        return HttpProbe(url, 0, reason_of(exc), str(exc) or type(exc).__name__,
                         time.monotonic() - started)
    finally:
        conn.close()


# -- MQTT -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MqttProbe:
    stage: str  # the last stage reached: "dns", "tcp", "tls", "mqtt", "connected"
    reason: str  # "" when connected
    error: str
    seconds: float


CONNACK_WORDS = {1: "unacceptable protocol version", 2: "client id rejected",
                 3: "broker unavailable", 4: "bad user name or password", 5: "not authorized"}


def connect_packet(client_id: str, keepalive: int, username: str | None,
                   password: str | None) -> bytes:
    """An MQTT 3.1.1 CONNECT (clean session)."""
    def field(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("!H", len(raw)) + raw

    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = field("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + field(client_id)
    body += (field(username) if username is not None else b"")
    body += (field(password) if password is not None else b"")
    length, encoded = len(body), b""
    while True:
        byte, length = length % 128, length // 128
        encoded += bytes([byte | (0x80 if length else 0)])
        if not length:
            break
    return b"\x10" + encoded + body


def parse_connack(data: bytes) -> int:
    """The return code of a CONNACK; ValueError when ``data`` is none."""
    if len(data) < 4 or data[0] != 0x20 or data[1] != 2:
        raise ValueError("not a CONNACK")
    return data[3]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("closed")
        data += chunk
    return data


def mqtt_connect(host: str, port: int, tls: bool, timeout: float, ca_file: str | None,
                 cert_file: str | None, key_file: str | None, username: str | None,
                 password: str | None) -> MqttProbe:
    """Resolve, connect, handshake and send one CONNECT under a fresh client id (never the
    daemon's: its session is left alone); DISCONNECT right after the CONNACK."""
    started = time.monotonic()

    def fail(stage: str, exc: BaseException) -> MqttProbe:
        return MqttProbe(stage, reason_of(exc), str(exc) or type(exc).__name__,
                         time.monotonic() - started)

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return fail("dns", exc)
    try:
        raw = socket.create_connection((str(infos[0][4][0]), port), timeout=timeout)
    except OSError as exc:
        return fail("tcp", exc)
    sock: socket.socket = raw
    try:
        if tls:
            try:
                ctx = ssl.create_default_context(cafile=ca_file)
                if cert_file and key_file:
                    ctx.load_cert_chain(cert_file, key_file)
            except (OSError, ValueError) as exc:  # missing, unreadable or not PEM
                return MqttProbe("tls", "files", str(exc) or type(exc).__name__,
                                 time.monotonic() - started)
            try:
                sock = ctx.wrap_socket(raw, server_hostname=host)
            except OSError as exc:
                return fail("tls", exc)
        try:
            client_id = "desanet-diag-" + secrets.token_hex(4)
            sock.sendall(connect_packet(client_id, 10, username, password))
            code = parse_connack(_recv_exact(sock, 4))
        except (OSError, EOFError, ValueError) as exc:
            # TLS 1.3: a refused client certificate shows only here, after the handshake:
            # an alert, or the broker closing the TLS session before any CONNACK.
            if tls and isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, EOFError,
                                        ConnectionResetError)):
                return MqttProbe("mqtt", "tls-rejected", str(exc) or type(exc).__name__,
                                 time.monotonic() - started)
            return fail("mqtt", exc)
        if code:
            return MqttProbe("mqtt", f"connack-{code}", CONNACK_WORDS.get(code, f"code {code}"),
                             time.monotonic() - started)
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")  # DISCONNECT: no Will, no lingering session
        return MqttProbe("connected", "", "", time.monotonic() - started)
    finally:
        sock.close()
