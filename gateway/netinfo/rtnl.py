"""Just enough rtnetlink for the client map: neighbour and link messages.

Why not pyroute2 here: its synchronous ``IPRoute`` (0.9) runs an event loop
of its own inside ``get()``, which cannot wait on a socket of the daemon's
loop nor be woken to stop, and it decodes ~80 us per message (0.4 s for a
dump of 5,000 neighbours). Neighbour and link messages are small fixed
structs: this module encodes the two requests (dump, get one address) and
decodes the answers and the multicast events in a few microseconds each.

Layouts (linux/netlink.h, linux/rtnetlink.h, linux/neighbour.h):
``nlmsghdr`` = len u32, type u16, flags u16, seq u32, pid u32;
``ndmsg`` = family u8, pad u8, pad u16, ifindex s32, state u16, flags u8, type u8;
``ifinfomsg`` = family u8, pad u8, type u16, index s32, flags u32, change u32;
attributes = len u16, type u16, payload, padded to 4 bytes.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
RTM_GETNEIGH = 30

NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300

RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4

NDA_DST = 1
NDA_LLADDR = 2
NDA_IFINDEX = 8
IFLA_IFNAME = 3

SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12
SO_RCVBUFFORCE = 33

# Neighbour states (NUD_*).
NUD_INCOMPLETE = 0x01
NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_DELAY = 0x08
NUD_PROBE = 0x10
NUD_FAILED = 0x20
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
# States whose link-layer address is the client's: the kernel sends to it.
# INCOMPLETE (still asking) and FAILED (nobody answered) carry no usable one.
NUD_USABLE = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_NOARP | NUD_PERMANENT

IFF_UP = 0x1

_HDR = struct.Struct("=IHHII")
_NDMSG = struct.Struct("=BBHiHBB")
_IFINFO = struct.Struct("=BBHiII")
_ATTR = struct.Struct("=HH")
_ERR = struct.Struct("=i")
_U32 = struct.Struct("=I")


@dataclass(frozen=True, slots=True)
class NeighbourMsg:
    """One neighbour (RTM_NEWNEIGH / RTM_DELNEIGH): an event or a dump/get answer."""

    deleted: bool
    family: int
    ifindex: int
    state: int
    ip: str | None
    mac: str | None  # lower-case "aa:bb:..", None when absent or not Ethernet


@dataclass(frozen=True, slots=True)
class LinkMsg:
    deleted: bool
    index: int
    name: str | None
    flags: int


@dataclass(frozen=True, slots=True)
class Done:
    """NLMSG_DONE: the end of a dump."""


@dataclass(frozen=True, slots=True)
class Error:
    """NLMSG_ERROR: ``code`` 0 is an acknowledgement, otherwise a positive errno."""

    code: int


Message = NeighbourMsg | LinkMsg | Done | Error


def _attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    while start + 4 <= end:
        length, kind = _ATTR.unpack_from(data, start)
        if length < 4 or start + length > end:
            return  # malformed: stop rather than read past the message
        yield kind & 0x3FFF, data[start + 4:start + length]  # without NLA_F_NESTED/BYTEORDER
        start += (length + 3) & ~3


def _address(family: int, raw: bytes) -> str | None:
    try:
        return socket.inet_ntop(family, raw)
    except (ValueError, OSError):
        return None


def _neighbour(kind: int, data: bytes, start: int, end: int) -> NeighbourMsg | None:
    if end - start < _NDMSG.size:
        return None
    family, _p1, _p2, ifindex, state, _flags, _type = _NDMSG.unpack_from(data, start)
    ip = mac = None
    for attr, value in _attrs(data, start + _NDMSG.size, end):
        if attr == NDA_DST:
            ip = _address(family, value)
        elif attr == NDA_LLADDR and len(value) == 6:
            mac = value.hex(":")
    return NeighbourMsg(kind == RTM_DELNEIGH, family, ifindex, state, ip, mac)


def _link(kind: int, data: bytes, start: int, end: int) -> LinkMsg | None:
    if end - start < _IFINFO.size:
        return None
    _family, _pad, _type, index, flags, _change = _IFINFO.unpack_from(data, start)
    name = None
    for attr, value in _attrs(data, start + _IFINFO.size, end):
        if attr == IFLA_IFNAME:
            name = value.split(b"\0", 1)[0].decode("utf-8", "replace")
            break
    return LinkMsg(kind == RTM_DELLINK, index, name, flags)


def parse(data: bytes) -> Iterator[tuple[int, Message]]:
    """(sequence number, message) for each message in one netlink datagram.

    Events carry sequence number 0. Other types, and malformed messages, are skipped.
    """
    pos, total = 0, len(data)
    while pos + _HDR.size <= total:
        length, kind, _flags, seq, _pid = _HDR.unpack_from(data, pos)
        if length < _HDR.size or pos + length > total:
            return
        body, end = pos + _HDR.size, pos + length
        msg: Message | None = None
        if kind in (RTM_NEWNEIGH, RTM_DELNEIGH):
            msg = _neighbour(kind, data, body, end)
        elif kind in (RTM_NEWLINK, RTM_DELLINK):
            msg = _link(kind, data, body, end)
        elif kind == NLMSG_DONE:
            msg = Done()
        elif kind == NLMSG_ERROR and end - body >= 4:
            msg = Error(-_ERR.unpack_from(data, body)[0])
        elif kind == NLMSG_OVERRUN:
            msg = Error(errno.ENOBUFS)
        if msg is not None:
            yield seq, msg
        pos += (length + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    raw = _ATTR.pack(4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HDR.pack(_HDR.size + len(body), kind, flags, seq, 0) + body


def neighbour_dump_request(seq: int, ifindex: int) -> bytes:
    """RTM_GETNEIGH dump of every family's neighbours on ``ifindex`` (NDA_IFINDEX filter)."""
    body = _NDMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0) + _attr(NDA_IFINDEX, _U32.pack(ifindex))
    return _message(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def neighbour_get_request(seq: int, ifindex: int, ip: str) -> bytes:
    """RTM_GETNEIGH for one address on ``ifindex`` (no dump; Linux >= 5.0).

    Raises ValueError for a string that is no IP address.
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        raw = socket.inet_pton(family, ip)
    except OSError as exc:
        raise ValueError(f"not an IP address: {ip!r}") from exc
    body = _NDMSG.pack(family, 0, 0, ifindex, 0, 0, 0) + _attr(NDA_DST, raw)
    return _message(RTM_GETNEIGH, NLM_F_REQUEST, seq, body)


def open_socket(groups: int = 0, rcvbuf: int = 0, blocking: bool = True) -> socket.socket:
    """A NETLINK_ROUTE socket; subscribed to ``groups`` (RTMGRP_*) when given.

    ``rcvbuf``: receive buffer in bytes (SO_RCVBUFFORCE, which root may set
    above rmem_max; SO_RCVBUF otherwise). Raises OSError.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        if rcvbuf:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        # The kernel then honours the dump filter and checks requests strictly; before
        # 4.20 it cannot, and the dump is filtered here (the caller checks ifindex) instead.
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        sock.bind((0, groups))
        sock.setblocking(blocking)
    except OSError:
        sock.close()
        raise
    return sock
