"""Just enough rtnetlink for HTB trees: batched class/leaf changes and a lean class dump.

Why not pyroute2's ``IPRoute.tc`` here: it sends one request and waits for its
answer per operation, and decodes ~80 us per dumped message; a tree of 5,000
clients then costs seconds to install and ~3 s just to check. This module packs
many requests into one ``send`` (each with NLM_F_ACK and its own sequence
number), collects the acknowledgements and maps each error back to its request;
the dump decodes only the fields the reconcile compares.

Layouts (linux/netlink.h, linux/rtnetlink.h, linux/pkt_sched.h):
``nlmsghdr`` = len u32, type u16, flags u16, seq u32, pid u32;
``tcmsg`` = family u8, pad u8, pad u16, ifindex s32, handle u32, parent u32, info u32;
``tc_ratespec`` = cell_log u8, linklayer u8, overhead u16, cell_align s16, mpu u16, rate u32;
``tc_htb_opt`` = rate, ceil (tc_ratespec), buffer u32, cbuffer u32, quantum u32, level u32, prio u32;
``tc_htb_glob`` = version u32, rate2quantum u32, defcls u32, debug u32, direct_pkts u32;
attributes = len u16, type u16, payload, padded to 4 bytes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTCLASS, RTM_DELTCLASS, RTM_GETTCLASS = 40, 41, 42

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_ECHO = 0x8
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

TCA_KIND = 1
TCA_OPTIONS = 2
TCA_HTB_PARMS = 1
TCA_HTB_INIT = 2
TCA_HTB_RATE64 = 6
TCA_HTB_CEIL64 = 7
TC_H_ROOT = 0xFFFFFFFF
LINKLAYER_ETHERNET = 1  # declared, so the kernel needs no rate table to guess it

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # errors echo only the request's header, not the whole request

_HDR = struct.Struct("=IHHII")
_TCMSG = struct.Struct("=BBHiIII")
_RATESPEC = struct.Struct("=BBHhHI")
_HTB_OPT = struct.Struct("=12s12sIIIII")
_HTB_GLOB = struct.Struct("=IIIII")
_ATTR = struct.Struct("=HH")
_ERR = struct.Struct("=i")
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")

# Requests per send: their acknowledgements (one small skb each) must fit the
# receive buffer before we read them, or the kernel drops some (ENOBUFS).
CHUNK = 128
_MTU = 1600  # the burst HTB may send at once beyond its rate, as tc and pyroute2 default


def _psched() -> tuple[float, float]:
    """(scheduler ticks per microsecond, HZ) from /proc/net/psched, as tc reads them."""
    try:
        with open("/proc/net/psched") as f:
            t2us, us2t, clock_res, hz = (int(x, 16) for x in f.read().split()[:4])
    except (OSError, ValueError):
        return 1.0, 1000.0
    return t2us / us2t * (clock_res / 1_000_000), float(hz if clock_res == 1_000_000 else 1000)


_TICKS_PER_US, _HZ = _psched()


def _buffer(rate_bytes: int) -> int:
    """Ticks to send one burst (rate/HZ + MTU bytes) at ``rate_bytes`` per second.

    Whole microseconds first, then ticks: the same figure tc computes."""
    burst = rate_bytes / _HZ + _MTU
    return min(0xFFFFFFFF, int(int(1_000_000 * burst / rate_bytes) * _TICKS_PER_US))


def _attr(kind: int, payload: bytes) -> bytes:
    raw = _ATTR.pack(4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) & 3)


def _tcmsg(index: int, handle: int, parent: int) -> bytes:
    return _TCMSG.pack(socket.AF_UNSPEC, 0, 0, index, handle, parent, 0)


@dataclass(frozen=True, slots=True)
class Request:
    """One rtnetlink request without its header's length and sequence number."""

    kind: int
    flags: int
    body: bytes

    def encode(self, seq: int) -> bytes:
        return _HDR.pack(_HDR.size + len(self.body), self.kind,
                         self.flags | NLM_F_REQUEST | NLM_F_ACK, seq, 0) + self.body


def htb_class(index: int, handle: int, parent: int, rate_bits: int, ceil_bits: int, prio: int,
              quantum: int, create: bool) -> Request:
    """Add (``create``: refused when it exists) or change one HTB class."""
    rate, ceil = max(1, rate_bits // 8), max(1, ceil_bits // 8)
    parms = _HTB_OPT.pack(
        _RATESPEC.pack(0, LINKLAYER_ETHERNET, 0, 0, 0, min(rate, 0xFFFFFFFF)),
        _RATESPEC.pack(0, LINKLAYER_ETHERNET, 0, 0, 0, min(ceil, 0xFFFFFFFF)),
        _buffer(rate), _buffer(ceil), quantum, 0, prio)
    opts = _attr(TCA_HTB_PARMS, parms)
    if rate > 0xFFFFFFFF:
        opts += _attr(TCA_HTB_RATE64, _U64.pack(rate))
    if ceil > 0xFFFFFFFF:
        opts += _attr(TCA_HTB_CEIL64, _U64.pack(ceil))
    body = _tcmsg(index, handle, parent) + _attr(TCA_KIND, b"htb\0") + _attr(TCA_OPTIONS, opts)
    return Request(RTM_NEWTCLASS, NLM_F_CREATE | NLM_F_EXCL if create else 0, body)


def delete_class(index: int, handle: int, parent: int) -> Request:
    return Request(RTM_DELTCLASS, 0, _tcmsg(index, handle, parent))


def leaf_qdisc(index: int, handle: int, parent: int, kind: str, limit: int | None = None) -> Request:
    """Create or replace a leaf qdisc; ``limit`` (packets) for pfifo, defaults otherwise."""
    body = _tcmsg(index, handle, parent) + _attr(TCA_KIND, kind.encode() + b"\0")
    if limit is not None:
        body += _attr(TCA_OPTIONS, _U32.pack(limit))  # tc_fifo_qopt: a bare struct
    return Request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, body)


def open_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    with contextlib.suppress(OSError):  # older kernels echo whole requests: still fits
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    sock.settimeout(10.0)
    sock.bind((0, 0))
    return sock


def _messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, seq, start of payload, end of message) of each message in one read."""
    offset = 0
    while offset + _HDR.size <= len(data):
        length, kind, _flags, seq, _pid = _HDR.unpack_from(data, offset)
        if length < _HDR.size or offset + length > len(data):
            return
        yield kind, seq, offset + _HDR.size, offset + length
        offset += (length + 3) & ~3


class Batcher:
    """Sends requests in batches on one socket and returns each one's errno (0: done)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def run(self, requests: list[Request], joined: frozenset[int] = frozenset()) -> list[int]:
        """Send all ``requests`` (in order, about ``CHUNK`` per send); one errno per request.

        The kernel runs every message of a send even after one fails, so a
        failure is reported beside the others' outcomes, never hidden. Request
        ``i`` in ``joined`` goes in the same send as request ``i - 1`` (a class and
        its leaf: a send that fails must not leave a class without its leaf)."""
        if self._sock is None:
            self._sock = open_socket()
        codes: list[int] = []
        start = 0
        while start < len(requests):
            stop = min(start + CHUNK, len(requests))
            while stop < len(requests) and stop in joined:
                stop += 1
            codes += self._chunk(self._sock, requests[start:stop])
            start = stop
        return codes

    def _chunk(self, sock: socket.socket, requests: list[Request]) -> list[int]:
        first = self._seq + 1
        self._seq += len(requests)
        sock.send(b"".join(r.encode(first + i) for i, r in enumerate(requests)))
        codes: list[int | None] = [None] * len(requests)
        pending = len(requests)
        while pending:
            try:
                data = sock.recv(1 << 20)
            except OSError as exc:
                self.close()  # acks may be lost or stale: start again on a fresh socket
                raise OSError(exc.errno, f"netlink batch: {exc.strerror}") from exc
            for kind, seq, start, _end in _messages(data):
                slot = seq - first
                if kind != NLMSG_ERROR or not 0 <= slot < len(codes) or codes[slot] is not None:
                    continue  # an answer for an older request, or a notification
                codes[slot] = -_ERR.unpack_from(data, start)[0]
                pending -= 1
        return [c or 0 for c in codes]


def _dump(kind: int, index: int) -> Iterator[tuple[bytes, int, int]]:
    """(read buffer, start of tcmsg, end) of each message a dump returns."""
    with open_socket() as sock:
        sock.send(Request(kind, NLM_F_DUMP, _tcmsg(index, 0, 0)).encode(1))
        while True:
            data = sock.recv(1 << 20)
            for mtype, _seq, start, end in _messages(data):
                if mtype == NLMSG_DONE:
                    return
                if mtype == NLMSG_ERROR:
                    code = -_ERR.unpack_from(data, start)[0]
                    if code:
                        raise OSError(code, f"tc dump: {os.strerror(code)}")
                    return
                yield data, start, end


def _attrs(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, start of payload, end of payload) of each attribute in [start, end)."""
    while start + 4 <= end:
        length, kind = _ATTR.unpack_from(data, start)
        if length < 4 or start + length > end:
            return
        yield kind & 0x3FFF, start + 4, start + length
        start += (length + 3) & ~3


@dataclass(frozen=True, slots=True)
class HtbParms:
    """What a dumped HTB class says about its shape (rates in bits/s)."""

    handle: int
    parent: int
    rate: int
    ceil: int
    prio: int


def dump_htb_classes(index: int) -> list[HtbParms]:
    """The HTB classes of interface ``index``: a full dump, decoding only the shape.

    Runs every few seconds over thousands of classes, hence the flat loop: only the
    top-level attributes are walked, and only TCA_OPTIONS is opened."""
    out: list[HtbParms] = []
    attr, tcmsg, opt, u64 = _ATTR.unpack_from, _TCMSG.unpack_from, _HTB_OPT.unpack_from, _U64.unpack_from
    for data, start, end in _dump(RTM_GETTCLASS, index):
        handle, parent = tcmsg(data, start)[4:6]
        is_htb = False
        parms: tuple[Any, ...] | None = None
        rate64 = ceil64 = 0
        pos = start + _TCMSG.size
        while pos + 4 <= end:
            length, atype = attr(data, pos)
            if length < 4 or pos + length > end:
                break
            atype &= 0x3FFF
            if atype == TCA_KIND:
                is_htb = data[pos + 4:pos + length] == b"htb\0"
            elif atype == TCA_OPTIONS:
                for otype, oa, ob in _attrs(data, pos + 4, pos + length):
                    if otype == TCA_HTB_PARMS and ob - oa >= _HTB_OPT.size:
                        parms = opt(data, oa)
                    elif otype == TCA_HTB_RATE64:
                        rate64 = u64(data, oa)[0]
                    elif otype == TCA_HTB_CEIL64:
                        ceil64 = u64(data, oa)[0]
                if is_htb:  # the kernel sends the kind first; the statistics that follow
                    break   # are not needed
            pos += (length + 3) & ~3
        if not is_htb or parms is None:
            continue
        rate = rate64 or _U32.unpack_from(parms[0], 8)[0]  # tc_ratespec.rate
        ceil = ceil64 or _U32.unpack_from(parms[1], 8)[0]
        out.append(HtbParms(handle, parent, rate * 8, ceil * 8, parms[6]))
    return out


TCA_STATS2 = 7
TCA_STATS_BASIC, TCA_STATS_QUEUE, TCA_STATS_PKT64 = 1, 3, 8
_BASIC = struct.Struct("=QI")  # gnet_stats_basic: bytes, packets
_QUEUE = struct.Struct("=IIIII")  # gnet_stats_queue: qlen, backlog, drops, requeues, overlimits


@dataclass(frozen=True, slots=True)
class ClassCounters:
    handle: int
    bytes: int
    packets: int
    drops: int
    backlog: int
    overlimits: int


def dump_class_counters(index: int) -> list[ClassCounters]:
    """Counters of every class of interface ``index`` (TCA_STATS2 only: basic and queue)."""
    out: list[ClassCounters] = []
    for data, start, end in _dump(RTM_GETTCLASS, index):
        handle = _TCMSG.unpack_from(data, start)[4]
        nbytes = packets = drops = backlog = overlimits = 0
        pkt64 = None
        for atype, a, b in _attrs(data, start + _TCMSG.size, end):
            if atype != TCA_STATS2:
                continue
            for stype, sa, sb in _attrs(data, a, b):
                if stype == TCA_STATS_BASIC and sb - sa >= _BASIC.size:
                    nbytes, packets = _BASIC.unpack_from(data, sa)
                elif stype == TCA_STATS_PKT64 and sb - sa >= 8:
                    pkt64 = _U64.unpack_from(data, sa)[0]
                elif stype == TCA_STATS_QUEUE and sb - sa >= _QUEUE.size:
                    _qlen, backlog, drops, _requeues, overlimits = _QUEUE.unpack_from(data, sa)
            break
        out.append(ClassCounters(handle, nbytes, packets if pkt64 is None else pkt64, drops,
                                 backlog, overlimits))
    return out


def qdisc_kinds(index: int) -> Generator[tuple[str, int, int], None, None]:
    """(kind, handle, parent) of each qdisc of interface ``index``, as the dump arrives
    (stop early by closing the iterator: the socket goes with it)."""
    for data, start, end in _dump(RTM_GETQDISC, index):
        handle, parent = _TCMSG.unpack_from(data, start)[4:6]
        name = ""
        for atype, a, b in _attrs(data, start + _TCMSG.size, end):
            if atype == TCA_KIND:
                name = data[a:b].split(b"\0", 1)[0].decode(errors="replace")
                break
        yield name, handle, parent


@dataclass(frozen=True, slots=True)
class RootQdisc:
    kind: str
    handle: int
    defcls: int | None  # HTB's default class minor, None for other kinds


def root_qdisc(index: int) -> RootQdisc | None:
    """The root qdisc of interface ``index``; None when the device is gone or has only a
    built-in root. One request and its answer, on a socket of its own."""
    request = Request(RTM_GETQDISC, NLM_F_ECHO, _tcmsg(index, 0, TC_H_ROOT)).encode(1)
    with open_socket() as sock:
        sock.settimeout(5.0)
        sock.send(request)
        for _ in range(8):  # the answer and its ack, or an error
            data = sock.recv(65536)
            for mtype, _seq, start, end in _messages(data):
                if mtype == NLMSG_ERROR:
                    code = -_ERR.unpack_from(data, start)[0]
                    # ENODEV: gone; EINVAL: a built-in root (noqueue) the kernel does
                    # not report; ENOENT: no root at all.
                    if code in (0, errno.ENODEV, errno.ENOENT, errno.EINVAL):
                        return None
                    raise OSError(code, f"asking for the root qdisc of interface {index}: "
                                        f"{errno.errorcode.get(code, code)}")
                if mtype == RTM_NEWQDISC:
                    return _root(data, start, end)
    raise OSError(errno.ETIMEDOUT, f"no answer for the root qdisc of interface {index}")


def _root(data: bytes, start: int, end: int) -> RootQdisc:
    handle = _TCMSG.unpack_from(data, start)[4]
    name, defcls = "", None
    for atype, a, b in _attrs(data, start + _TCMSG.size, end):
        if atype == TCA_KIND:
            name = data[a:b].split(b"\0", 1)[0].decode(errors="replace")
        elif atype == TCA_OPTIONS:
            for otype, oa, ob in _attrs(data, a, b):
                if otype == TCA_HTB_INIT and ob - oa >= _HTB_GLOB.size:
                    defcls = _HTB_GLOB.unpack_from(data, oa)[2]
    return RootQdisc(name, handle, defcls if name == "htb" else None)
