"""Observing the uplink: the WAN link, probes across it, and netlink link events.

* :func:`uplink_is_up` reads two small kernel files (carrier and the default
  route, in the daemon's own network namespace); it blocks briefly, so
  :class:`UplinkProber` runs it on a thread.
* :meth:`UplinkProber.probe` sends one DNS query (for the root's NS records)
  to each resolver and opens one TCP connection to each ``ip:port``, all at
  once on the event loop (no threads, no name resolution: a probe of a dead
  uplink must not park a thread in getaddrinfo). Any DNS answer with our id,
  whatever its rcode, proves the resolver is reachable across the uplink.
* :class:`LinkEvents` subscribes to the kernel's link and IPv4 route
  notifications on a non-blocking netlink socket read by the loop; it does
  not parse them, it only says "look again now".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.core.uplink import ProbeResult

if TYPE_CHECKING:
    from gateway.core.uplink import UplinkProberPort

log = logging.getLogger("desanet.uplink")

_ROUTE_TABLE = "/proc/net/route"
_RESOLV_CONF = "/etc/resolv.conf"
_RTMGRP_LINK = 0x1
_RTMGRP_IPV4_ROUTE = 0x40


def uplink_is_up(wan_interface: str, sys_root: str = "/sys/class/net",
                 route_table: str = _ROUTE_TABLE) -> bool:
    """Carrier on the WAN device and an IPv4 default route through it. Blocks briefly."""
    try:
        state = Path(sys_root, wan_interface, "operstate").read_text().strip()
        routes = Path(route_table).read_text().splitlines()[1:]
    except OSError:
        return False
    if state not in ("up", "unknown"):  # "unknown": virtual devices without carrier reporting
        return False
    return any(
        fields[0] == wan_interface and fields[1] == "00000000" and fields[7] == "00000000"
        for fields in (line.split() for line in routes) if len(fields) >= 8
    )


def resolvers_in(text: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf text (pure)."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            found.append(parts[1].split("%", 1)[0])
    return found


def dns_query(ident: int) -> bytes:
    """A standard query, recursion desired, for ``. IN NS`` (pure)."""
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + b"\x00" + struct.pack("!HH", 2, 1)


def is_answer_to(data: bytes, ident: int) -> bool:
    """A DNS response (QR bit set) carrying our id; any rcode counts (pure)."""
    return len(data) >= 12 and struct.unpack("!H", data[:2])[0] == ident and bool(data[2] & 0x80)


class _DnsProbe(asyncio.DatagramProtocol):
    def __init__(self, ident: int, answered: asyncio.Future[None]) -> None:
        self.ident = ident
        self.answered = answered

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if is_answer_to(data, self.ident) and not self.answered.done():
            self.answered.set_result(None)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable and the like
        if not self.answered.done():
            self.answered.set_exception(exc)


async def probe_dns(server: str, timeout: float, port: int = 53) -> float:
    """Milliseconds until ``server`` answered a query; raises OSError or TimeoutError."""
    loop = asyncio.get_running_loop()
    ident = int.from_bytes(os.urandom(2), "big")
    answered: asyncio.Future[None] = loop.create_future()
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    start = time.monotonic()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _DnsProbe(ident, answered), remote_addr=(server, port), family=family)
    try:
        transport.sendto(dns_query(ident))
        await asyncio.wait_for(answered, timeout)
    finally:
        transport.close()
    return (time.monotonic() - start) * 1000


async def probe_tcp(host: str, port: int, timeout: float) -> float:
    """Milliseconds to open a TCP connection to ``host`` (an IP literal); raises OSError
    or TimeoutError."""
    start = time.monotonic()
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    elapsed = (time.monotonic() - start) * 1000
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return elapsed


class UplinkProber:
    """The real prober (implements :class:`gateway.core.uplink.UplinkProberPort`)."""

    def __init__(self, resolv_conf: str = _RESOLV_CONF, sys_root: str = "/sys/class/net",
                 route_table: str = _ROUTE_TABLE) -> None:
        self.resolv_conf = resolv_conf
        self.sys_root = sys_root
        self.route_table = route_table
        self._resolvers: tuple[float, list[str]] = (0.0, [])

    async def link_up(self, wan_interface: str) -> bool:
        """Does not block the loop (file reads on a thread)."""
        return await asyncio.to_thread(uplink_is_up, wan_interface, self.sys_root,
                                       self.route_table)

    def system_resolvers(self) -> list[str]:
        """Blocks briefly (reads resolv.conf at most once a minute)."""
        read_at, found = self._resolvers
        now = time.monotonic()
        if now - read_at > 60 or not read_at:
            try:
                found = resolvers_in(Path(self.resolv_conf).read_text())
            except OSError:
                found = []
            self._resolvers = (now, found)
        return list(found)

    async def probe(self, dns: Sequence[str], tcp: Sequence[tuple[str, int]],
                    timeout: float) -> ProbeResult:
        """Every target at once; returns as soon as one answers. Does not block."""
        names = [f"dns {s}" for s in dns] + [f"tcp {h}:{p}" for h, p in tcp]
        tasks = [asyncio.ensure_future(probe_dns(s, timeout)) for s in dns]
        tasks += [asyncio.ensure_future(probe_tcp(h, p, timeout)) for h, p in tcp]
        if not tasks:
            return ProbeResult(False, None, "nothing to probe")
        problems: list[str] = []
        try:
            for done in asyncio.as_completed(tasks):
                try:
                    latency = await done
                except (OSError, TimeoutError) as exc:
                    problems.append(type(exc).__name__ + (f" {exc}" if str(exc) else ""))
                    continue
                return ProbeResult(True, latency)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return ProbeResult(False, None, f"{', '.join(names)}: {'; '.join(problems)}")


class LinkEvents:
    """Calls ``on_change`` (on the loop) whenever a link or IPv4 route changes.

    A netlink socket in the daemon's namespace, non-blocking, read by the loop
    when readable; ``close`` stops it. Raises OSError from :meth:`start` when
    netlink is not available (the periodic checks still run).
    """

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change
        self._sock: socket.socket | None = None

    def start(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            sock.bind((0, _RTMGRP_LINK | _RTMGRP_IPV4_ROUTE))
            sock.setblocking(False)
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        got = False
        while True:  # drain: one look covers any number of notifications
            try:
                got = bool(sock.recv(65536)) or got
            except BlockingIOError:
                break
            except OSError as exc:  # ENOBUFS: we missed some; look anyway
                log.debug("netlink: %s", exc)
                got = True
                break
        if got:
            self.on_change()

    async def close(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()


def _check(x: UplinkProber) -> UplinkProberPort:  # mypy: the adapter satisfies its port
    return x
