"""The DNS answer while the village uplink is down: every name is the gateway.

dnsmasq stays the LAN's resolver. While the uplink is down the daemon makes
this small responder dnsmasq's upstream (``dnsmasq.servers``, re-read on
SIGHUP, so dnsmasq is never restarted and no lookup falls into a gap). It
answers an A question with the gateway's LAN address (TTL 0, so phones ask
again once the uplink is back) and every other question with NODATA, at once:
the IPv6 half of a browser's lookup does not wait for a dead upstream. The
browser then asks the gateway's port 80, which shows the "Internet desa
sedang terputus" page. Names dnsmasq knows itself (the portal, layanan.desa,
the local domain, DHCP host names) never reach it.

It listens on 127.0.0.1 on a port the kernel picks; only dnsmasq talks to it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from collections.abc import Callable
from typing import cast

log = logging.getLogger("desanet.dnsmasq")

_TYPE_A = 1
_CLASS_IN = 1


def offline_answer(query: bytes, ipv4: str) -> bytes | None:
    """The answer to one DNS query (pure); None for anything that is not a plain
    one-question query (dnsmasq sends nothing else)."""
    if len(query) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or (flags >> 11) & 0xF or qdcount != 1:
        return None  # a response, another opcode, or not one question
    pos = 12
    while True:  # the question's name: plain labels (no compression in a question)
        if pos >= len(query):
            return None
        length = query[pos]
        if length == 0:
            pos += 1
            break
        if length > 63:
            return None
        pos += 1 + length
    if pos + 4 > len(query):
        return None
    question = query[12:pos + 4]
    qtype, qclass = struct.unpack("!HH", query[pos:pos + 4])
    answer = b""
    if qtype == _TYPE_A and qclass == _CLASS_IN:
        answer = struct.pack("!HHHIH", 0xC00C, _TYPE_A, _CLASS_IN, 0, 4) \
            + ipaddress.IPv4Address(ipv4).packed
    # QR, the query's RD, RA; rcode 0: an A record, or NODATA for any other type
    reply_flags = 0x8000 | (flags & 0x0100) | 0x0080
    header = struct.pack("!HHHHHH", ident, reply_flags, 1, 1 if answer else 0, 0, 0)
    return header + question + answer


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, address: Callable[[], str]) -> None:
        self.address = address
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = offline_answer(data, self.address())
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class OfflineDns:
    """``await start()``; ``server`` is the address for dnsmasq (``127.0.0.1#PORT``)."""

    def __init__(self, address: Callable[[], str]) -> None:
        self._address = address
        self._transport: asyncio.DatagramTransport | None = None
        self.port = 0

    @property
    def server(self) -> str | None:
        return f"127.0.0.1#{self.port}" if self._transport is not None else None

    async def start(self) -> None:
        """Bind 127.0.0.1 on a free port. Raises OSError. Does not block."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self._address), local_addr=("127.0.0.1", 0))
        self._transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])

    async def close(self) -> None:
        if self._transport is not None:
            transport, self._transport = self._transport, None
            transport.close()
