"""A one-way UDP stream, run inside lab namespaces by test_activity_lab.py.

``python udp_stream_agent.py serve HOST``: (the lab's internet) binds a free UDP port on
HOST, prints ``port N``, waits for one datagram, prints ``peer ADDR PORT`` and from then
on sends a 200-byte datagram back to that peer every 50 ms, until EOF on stdin.

``python udp_stream_agent.py receive HOST SERVER_PORT COUNT_FILE``: (a client) sends ONE
datagram from a free local port to HOST:SERVER_PORT (the conntrack entry the stream
comes back on), then only receives, writing how many datagrams came into COUNT_FILE
(atomically), until EOF on stdin. It sends nothing else: the bound socket takes the
stream, so no ICMP "port unreachable" goes upstream either.
"""

from __future__ import annotations

import os
import select
import socket
import sys

PACE = 0.05  # s between datagrams: 20 per second


def _stdin_closed(timeout: float) -> bool:
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    return bool(ready) and not sys.stdin.readline()


def serve(host: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    print(f"port {sock.getsockname()[1]}", flush=True)
    while True:
        ready, _, _ = select.select([sock, sys.stdin], [], [])
        if sys.stdin in ready and not sys.stdin.readline():
            return
        if sock in ready:
            _, peer = sock.recvfrom(2048)
            break
    print(f"peer {peer[0]} {peer[1]}", flush=True)
    payload = b"s" * 200
    while not _stdin_closed(PACE):
        sock.sendto(payload, peer)


def receive(host: str, server_port: int, count_file: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    sock.sendto(b"hello", (host, server_port))
    count = 0
    while True:
        ready, _, _ = select.select([sock, sys.stdin], [], [])
        if sys.stdin in ready and not sys.stdin.readline():
            return
        if sock in ready:
            sock.recv(2048)
            count += 1
            tmp = f"{count_file}.tmp"
            with open(tmp, "w") as f:
                f.write(str(count))
            os.replace(tmp, count_file)


def main() -> int:
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        receive(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    return 0


if __name__ == "__main__":
    sys.exit(main())
