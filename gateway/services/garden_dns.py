"""Resolving walled-garden names for the firewall: a tiny DNS client (A records only).

The daemon, not dnsmasq's ``nftset``, opens exact walled-garden names: it
asks the LAN resolver (the full dnsmasq, so upstream choice and the offline
answer stay in one place) for each name's A records and follows the CNAME
chain *from that name only*; records about other names in the answer are
ignored. Each address gets the TTL of its chain (the smallest on the way).
IPv6 is dropped on the LAN, so AAAA is not asked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import struct
from collections.abc import Callable

_TYPE_A = 1
_TYPE_CNAME = 5
_CLASS_IN = 1
TIMEOUT = 3.0


def build_query(name: str, ident: int) -> bytes:
    """A recursive query for the A records of ``name`` (pure)."""
    out = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        raw = label.encode("idna") if not label.isascii() else label.encode()
        if not 0 < len(raw) <= 63:
            raise ValueError(f"{name!r} is not a DNS name")
        out += bytes([len(raw)]) + raw
    return out + b"\x00" + struct.pack("!HH", _TYPE_A, _CLASS_IN)


def _read_name(msg: bytes, pos: int) -> tuple[str, int]:
    """Name at ``pos`` (with compression) and the offset after it in the record."""
    labels: list[str] = []
    end = -1
    jumps = 0
    while True:
        if pos >= len(msg):
            raise ValueError("truncated name")
        length = msg[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(msg) or jumps > 20:
                raise ValueError("bad compression pointer")
            if end < 0:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
            jumps += 1
            continue
        if length & 0xC0:
            raise ValueError("bad label")
        pos += 1
        if length == 0:
            break
        labels.append(msg[pos:pos + length].decode("ascii", errors="replace").lower())
        pos += length
    return ".".join(labels), (end if end >= 0 else pos)


def parse_answer(msg: bytes, name: str, ident: int) -> list[tuple[str, int]]:
    """``(address, ttl)`` for ``name`` from a response (pure).

    Follows CNAMEs from ``name`` only (at most 8); a CNAME or address record
    owned by any other name is ignored, so an answer cannot add addresses
    for names nobody asked about. NXDOMAIN or NODATA: an empty list. Raises
    ValueError for a malformed answer, another query's answer, or an error rcode.
    """
    if len(msg) < 12:
        raise ValueError("short answer")
    rid, flags, qd, an = struct.unpack("!HHHH", msg[:8])
    if rid != ident or not flags & 0x8000:
        raise ValueError("not the answer to our query")
    rcode = flags & 0xF
    if rcode == 3:
        return []
    if rcode != 0:
        raise ValueError(f"resolver answered rcode {rcode}")
    pos = 12
    for _ in range(qd):
        _, pos = _read_name(msg, pos)
        pos += 4
    cnames: dict[str, tuple[str, int]] = {}
    addrs: dict[str, list[tuple[str, int]]] = {}
    for _ in range(an):
        owner, pos = _read_name(msg, pos)
        if pos + 10 > len(msg):
            raise ValueError("truncated record")
        rtype, rclass, ttl, rdlen = struct.unpack("!HHIH", msg[pos:pos + 10])
        pos += 10
        rdata_at, pos = pos, pos + rdlen
        if pos > len(msg):
            raise ValueError("truncated record data")
        if rclass != _CLASS_IN:
            continue
        if rtype == _TYPE_A and rdlen == 4:
            ip = str(ipaddress.IPv4Address(msg[rdata_at:pos]))
            addrs.setdefault(owner, []).append((ip, ttl))
        elif rtype == _TYPE_CNAME:
            target, _ = _read_name(msg, rdata_at)
            cnames[owner] = (target, ttl)
    current = name.rstrip(".").lower()
    chain_ttl = 2**31 - 1
    for _ in range(9):
        if current in addrs:
            return [(ip, min(ttl, chain_ttl)) for ip, ttl in addrs[current]]
        if current not in cnames:
            return []
        current, ttl = cnames[current]
        chain_ttl = min(chain_ttl, ttl)
    return []


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


class GardenResolver:
    """Asks ``server()`` (host, port) over UDP; implements core.garden's resolver port."""

    def __init__(self, server: Callable[[], tuple[str, int]], timeout: float = TIMEOUT) -> None:
        self.server = server
        self.timeout = timeout

    async def resolve(self, name: str) -> list[tuple[str, int]]:
        """A records of ``name`` with TTLs. Does not block the loop; raises OSError,
        TimeoutError or ValueError (a bad or refused answer)."""
        ident = secrets.randbelow(0x10000)
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            _Exchange, remote_addr=self.server())
        try:
            transport.sendto(build_query(name, ident))
            msg = await asyncio.wait_for(proto.answer, self.timeout)
        finally:
            transport.close()
        return parse_answer(msg, name, ident)
