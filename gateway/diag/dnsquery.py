"""One DNS question over UDP, built and read with the standard library.

The packet work is pure (:func:`build_query`, :func:`parse_answer`, unit tested); only
:func:`ask` touches the network, with a deadline and a fresh random id and port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
TYPE_A = 1


def build_query(name: str, qid: int, qtype: int = TYPE_A) -> bytes:
    """A standard query (recursion desired) for ``name``."""
    labels = [x for x in name.rstrip(".").split(".") if x]
    if not labels or any(len(x.encode()) > 63 for x in labels):
        raise ValueError(f"{name!r} is not a DNS name; write e.g. \"kemendagri.go.id\"")
    qname = b"".join(bytes([len(x.encode())]) + x.encode() for x in labels) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


@dataclass(frozen=True)
class Answer:
    rcode: str
    addresses: list[str] = field(default_factory=list)

    @property
    def answered(self) -> bool:
        """The server did its job (a name that does not exist is an answer too)."""
        return self.rcode in ("NOERROR", "NXDOMAIN")


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        if pos >= len(data):
            raise ValueError("truncated name")
        n = data[pos]
        if n & 0xC0 == 0xC0:
            return pos + 2
        if n == 0:
            return pos + 1
        pos += 1 + n


def parse_answer(data: bytes, qid: int) -> Answer:
    """The rcode and the IPv4 addresses of an answer to query ``qid``; ValueError for a
    packet that is not that answer."""
    if len(data) < 12:
        raise ValueError("short DNS packet")
    rid, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", data[:12])
    if rid != qid or not flags & 0x8000:
        raise ValueError("not the answer to this query")
    pos = 12
    for _ in range(qd):
        pos = _skip_name(data, pos) + 4
    addresses = []
    for _ in range(an):
        pos = _skip_name(data, pos)
        if pos + 10 > len(data):
            raise ValueError("truncated record")
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == TYPE_A and rdlen == 4:
            addresses.append(str(ipaddress.IPv4Address(data[pos:pos + 4])))
        pos += rdlen
    return Answer(RCODES.get(flags & 0xF, f"RCODE{flags & 0xF}"), addresses)


@dataclass(frozen=True)
class Outcome:
    server: str
    answer: Answer | None
    error: str  # "" when answered; "timeout", "refused" or the OS error otherwise
    seconds: float


async def ask(server: str, name: str, timeout: float, port: int = 53) -> Outcome:
    """Ask ``server`` for ``name``'s A records; never raises for a network failure."""
    started = time.monotonic()
    try:
        answer = await asyncio.wait_for(asyncio.to_thread(_ask_blocking, server, port, name,
                                                          timeout), timeout + 1)
        return Outcome(server, answer, "", time.monotonic() - started)
    except TimeoutError:
        return Outcome(server, None, "timeout", time.monotonic() - started)
    except ConnectionRefusedError:
        return Outcome(server, None, "refused", time.monotonic() - started)
    except (OSError, ValueError) as exc:
        return Outcome(server, None, str(exc) or type(exc).__name__, time.monotonic() - started)


def _ask_blocking(server: str, port: int, name: str, timeout: float) -> Answer:
    qid = secrets.randbelow(0x10000)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((server, port))  # a connected socket hears ICMP "refused"
        sock.send(build_query(name, qid))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            data = sock.recv(4096)
            try:
                return parse_answer(data, qid)
            except ValueError:
                continue  # a stray or forged packet: keep waiting for ours
