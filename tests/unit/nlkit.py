"""Netlink bytes as the kernel sends them, for the client map's unit tests.

Encoded here by hand from the kernel's struct layouts (not with the code
under test), so the decoder is checked against an independent encoder.
"""

from __future__ import annotations

import socket
import struct

RTM_NEWLINK, RTM_DELLINK, RTM_NEWNEIGH, RTM_DELNEIGH = 16, 17, 28, 29
NLMSG_ERROR, NLMSG_DONE = 2, 3
REACHABLE, STALE, PERMANENT, INCOMPLETE, FAILED = 0x02, 0x04, 0x80, 0x01, 0x20


def attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def message(kind: int, body: bytes, seq: int = 0, flags: int = 0) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def neigh(ip: str, mac: str | None, state: int = REACHABLE, ifindex: int = 7,
          deleted: bool = False, seq: int = 0) -> bytes:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    body = struct.pack("=BBHiHBB", family, 0, 0, ifindex, state, 0, 1)
    body += attr(1, socket.inet_pton(family, ip))
    if mac is not None:
        body += attr(2, bytes.fromhex(mac.replace(":", "")))
    body += attr(4, struct.pack("=IIII", 1, 2, 3, 1))  # NDA_CACHEINFO: ignored
    return message(RTM_DELNEIGH if deleted else RTM_NEWNEIGH, body, seq)


def link(index: int, name: str, up: bool = True, deleted: bool = False) -> bytes:
    body = struct.pack("=BBHiII", 0, 0, 1, index, 0x1 if up else 0, 0)
    body += attr(4, struct.pack("=I", 1500))  # IFLA_MTU first: the name is not always first
    body += attr(3, name.encode() + b"\0")
    return message(RTM_DELLINK if deleted else RTM_NEWLINK, body)


def done(seq: int) -> bytes:
    return message(NLMSG_DONE, struct.pack("=i", 0), seq)


def error(seq: int, code: int) -> bytes:
    return message(NLMSG_ERROR, struct.pack("=i", -code) + struct.pack("=IHHII", 0, 0, 0, seq, 0),
                   seq)
