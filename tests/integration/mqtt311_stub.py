"""A broker that does not speak MQTT 5, for the protocol fallback tests.

Mosquitto cannot be told to refuse MQTT 5, so this stub stands in front of a
real one: it reads a client's CONNECT, refuses one of protocol level 5 the way
a 3.1.1 broker does (``connack``: CONNACK return code 1, "unacceptable protocol
version", then closes; ``close``: closes without a word, as some brokers do)
and relays any other connection to Mosquitto byte for byte. ``levels`` records
the protocol level of every CONNECT it saw (5: MQTT 5, 4: 3.1.1).
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from typing import Literal

Refusal = Literal["connack", "close"]
REFUSED_VERSION = bytes([0x20, 0x02, 0x00, 0x01])  # a 3.1.1 CONNACK, return code 1


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _read_packet(sock: socket.socket) -> bytes:
    """One MQTT control packet: fixed header, remaining length (varint), body."""
    head = _read_exact(sock, 1)
    size, shift, length = 0, 0, b""
    while True:
        byte = _read_exact(sock, 1)
        length += byte
        size |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            break
    return head + length + _read_exact(sock, size)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class Stub311:
    def __init__(self, upstream_port: int, refusal: Refusal = "connack",
                 host: str = "127.0.0.1") -> None:
        self.levels: list[int] = []
        stub = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                client: socket.socket = self.request
                try:
                    packet = _read_packet(client)
                except (ConnectionError, OSError):
                    return
                # after the fixed header: protocol name (2-byte length + "MQTT"), then the level
                body = packet[packet.index(b"MQTT") + 4:]
                stub.levels.append(body[0])
                if body[0] == 5:
                    if refusal == "connack":
                        client.sendall(REFUSED_VERSION)
                    return  # the server closes the socket
                upstream = socket.create_connection((host, upstream_port))
                upstream.sendall(packet)
                back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                back.start()
                _pipe(client, upstream)
                back.join()
                upstream.close()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Stub311:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
