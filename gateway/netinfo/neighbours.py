"""Who is behind a LAN address: the kernel neighbour table, then DHCP leases.

Every portal page, login and RFC 8908 answer asks "which MAC is this IP?".
Asking the kernel each time meant a dump of the whole neighbour table
(pyroute2 filters a dump in user space): 1,000 phones in the village and
the portal served 13 pages a second. Now the answer costs the same for 10
clients or 5,000:

- ``KernelNeighbours`` (the daemon's NeighboursPort) keeps a ``ClientMap``
  of the LAN interface's neighbours, fed by the kernel's neighbour events on
  a non-blocking netlink socket that the event loop reads (never blocks).
  Before each lookup it takes the events already queued, so the map is as
  fresh as the kernel when the request is served: a MAC that changed for an
  IP (a spoofer, a phone that randomized its MAC) is seen as the kernel sees
  it, exactly as when every lookup asked the kernel.
- A full dump happens at start, after an overrun (ENOBUFS: the kernel
  dropped events) and when the LAN interface changes. It runs on the kernel
  worker while the event socket is not read, so the events queued meanwhile
  are applied on top of it in order.
- An address the map does not know costs one RTM_GETNEIGH for that address
  (not a dump) on the kernel worker, as does every lookup while the map is
  being rebuilt. An entry the kernel cannot use (INCOMPLETE, FAILED) does not
  identify; then, as before, the DHCP lease of the address does.

``Neighbours`` is the synchronous part: its methods block (netlink request,
lease file) and run on the kernel worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from gateway.kernel import KernelWorker
from gateway.netinfo import rtnl
from gateway.netinfo.clientmap import UNKNOWN, ClientMap, Miss, usable_mac
from gateway.services.dnsmasq import read_lease_file

if TYPE_CHECKING:
    from gateway.ports import NeighboursPort

log = logging.getLogger("desanet.neighbours")

REQUEST_TIMEOUT = 5.0  # seconds for one netlink answer (the kernel answers at once)
EVENT_BUFFER = 4 << 20  # bytes queued for the event socket: ~5,000 events before an overrun
RESYNC_RETRY = 5.0  # seconds between attempts when a dump fails
_RECV = 1 << 17


class KernelRefused(OSError):
    """The kernel answered a request with an error (errno)."""


class Neighbours:
    """Synchronous; every method blocks (a netlink request, the lease file).

    ``interface`` None (no LAN interface known): the kernel is not asked,
    only the leases answer.
    """

    def __init__(self, lease_file: str, timeout: float = REQUEST_TIMEOUT) -> None:
        self.lease_file = lease_file
        self.timeout = timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._seq = 0
        self._leases: dict[str, str] = {}
        self._names: dict[str, str] = {}  # address -> DHCP host name, from the same read
        self._leases_key: tuple[int, int, int] | None = None

    # -- netlink requests --------------------------------------------------------------

    def _request(self, data_for_seq: Callable[[int], bytes], dump: bool) -> list[rtnl.NeighbourMsg]:
        """Send one request, return its neighbour answers. Raises OSError (errno from the kernel)."""
        with self._lock:
            if self._sock is None:
                self._sock = rtnl.open_socket()
                self._sock.settimeout(self.timeout)
            sock = self._sock
            self._seq = self._seq % 0x7FFFFFFF + 1
            seq = self._seq
            try:
                sock.send(data_for_seq(seq))
                return self._answers(sock, seq, dump)
            except KernelRefused:
                raise  # answered in full: the socket is fine
            except OSError:
                # A late answer must not meet the next request: start on a new socket.
                self._sock = None
                sock.close()
                raise

    @staticmethod
    def _answers(sock: socket.socket, seq: int, dump: bool) -> list[rtnl.NeighbourMsg]:
        # A dump ends with NLMSG_DONE; a get is answered by one message (or an error).
        out: list[rtnl.NeighbourMsg] = []
        while True:
            for got, msg in rtnl.parse(sock.recv(_RECV)):
                if got != seq:
                    continue  # the answer of an earlier, abandoned request
                if isinstance(msg, rtnl.NeighbourMsg):
                    out.append(msg)
                    if not dump:
                        return out
                elif isinstance(msg, rtnl.Error) and msg.code:
                    raise KernelRefused(msg.code, os.strerror(msg.code))
                elif isinstance(msg, rtnl.Done | rtnl.Error):
                    return out

    def dump(self, interface: str) -> tuple[int | None, list[rtnl.NeighbourMsg]]:
        """(ifindex, every neighbour entry on ``interface``); (None, []) when it does not exist.

        Raises OSError when the kernel refuses or does not answer.
        """
        try:
            ifindex = socket.if_nametoindex(interface)
        except OSError:
            return None, []
        msgs = self._request(lambda seq: rtnl.neighbour_dump_request(seq, ifindex), dump=True)
        return ifindex, [m for m in msgs if m.ifindex == ifindex]

    def kernel_mac_of(self, ip: str, interface: str | None) -> str | Miss:
        """The kernel's entry for ``ip`` on ``interface``: one RTM_GETNEIGH, not a dump.

        UNKNOWN when there is none (or it cannot be asked), UNUSABLE when its state
        identifies nobody. Never raises: a failing kernel is logged.
        """
        if interface is None:
            return UNKNOWN
        try:
            ifindex = socket.if_nametoindex(interface)
            msgs = self._request(lambda seq: rtnl.neighbour_get_request(seq, ifindex, ip),
                                 dump=False)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
                log.warning("neighbour lookup of %s failed (%s); trying the DHCP leases", ip, exc)
            return UNKNOWN
        except ValueError:
            return UNKNOWN  # not an IP address: nobody to identify
        for msg in msgs:
            if msg.ip == ip and msg.ifindex == ifindex:
                return usable_mac(msg) or Miss.UNUSABLE
        return UNKNOWN

    # -- the NeighboursPort questions, blocking -----------------------------------------

    def mac_of(self, ip: str, interface: str | None = None, ask_kernel: bool = True) -> str | None:
        """The MAC behind ``ip``: the kernel's entry (when ``ask_kernel``), then the leases."""
        if ask_kernel:
            found = self.kernel_mac_of(ip, interface)
            if isinstance(found, str):
                return found
        return self._current_leases().get(ip)

    def ip_of(self, mac: str, interface: str | None = None, ask_kernel: bool = True) -> str | None:
        """The IPv4 address of ``mac``: leases first, then (``ask_kernel``) a dump of the LAN."""
        mac = mac.lower()
        for ip, lease_mac in self._current_leases().items():
            if lease_mac == mac:
                return ip
        if not ask_kernel or interface is None:
            return None
        try:
            _index, msgs = self.dump(interface)
        except OSError as exc:
            log.warning("neighbour lookup of %s failed: %s", mac, exc)
            return None
        for msg in msgs:
            if msg.family == socket.AF_INET and usable_mac(msg) == mac:
                return msg.ip
        return None

    def leases(self) -> dict[str, str]:
        """DHCP leases: IPv4 address -> MAC (a copy). Blocks: stats, maybe reads, the file."""
        return dict(self._current_leases())

    def host_names(self) -> dict[str, str]:
        """DHCP leases' host names: IPv4 address -> name (only DNS-label names; a copy).
        Blocks like :meth:`leases`."""
        self._current_leases()
        with self._lock:
            return dict(self._names)

    def _current_leases(self) -> dict[str, str]:
        # Parsed again only when the file changed: dnsmasq replaces it on every lease.
        try:
            st = os.stat(self.lease_file)
            key: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        with self._lock:
            if key is None or key != self._leases_key:
                self._leases, self._names = read_lease_file(self.lease_file) \
                    if key is not None else ({}, {})
                self._leases_key = key
            return self._leases

    def close(self) -> None:
        """Close the request socket."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class EventSocket(Protocol):
    """What the adapter needs of its event socket (a non-blocking netlink socket)."""

    def recv(self, bufsize: int, /) -> bytes: ...

    def fileno(self) -> int: ...

    def close(self) -> None: ...


def open_event_socket(buffer: int = EVENT_BUFFER) -> EventSocket:
    """Non-blocking, subscribed to neighbour and link events. Raises OSError."""
    return rtnl.open_socket(rtnl.RTMGRP_NEIGH | rtnl.RTMGRP_LINK, buffer, blocking=False)


class KernelNeighbours:
    """NeighboursPort over the event-fed ``ClientMap``, with ``Neighbours`` on the kernel worker.

    ``lan_interface`` returns the configured LAN interface (read at each
    lookup: a config change of it rebuilds the map). Without it, or before
    ``start()``, every lookup goes to the kernel worker. A lookup the map
    answers never leaves the event loop.
    """

    def __init__(self, neighbours: Neighbours, worker: KernelWorker,
                 lan_interface: Callable[[], str] | None = None,
                 open_events: Callable[[], EventSocket] = open_event_socket) -> None:
        self.neighbours = neighbours
        self.worker = worker
        self.map = ClientMap()
        self._lan_interface = lan_interface
        self._open_events = open_events
        self._events: EventSocket | None = None
        self._reading = False
        self._synced_for: str | None = None  # the interface name the map was dumped for
        self._resync: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to neighbour and link events, then dump the LAN's table.

        Never raises: when netlink refuses, it is logged and every lookup asks
        the kernel (one address at a time) instead.
        """
        if self._lan_interface is None or self._events is not None or self._closed:
            return
        try:
            self._events = self._open_events()
        except OSError as exc:
            log.warning("cannot follow neighbour events (%s); every lookup asks the kernel", exc)
            return
        if not await self._sync_once():
            self._schedule_resync()

    async def close(self) -> None:
        """Stop following events, close both sockets. Awaits the kernel worker."""
        self._closed = True
        self._stop_reading()
        if self._resync is not None:
            self._resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resync
        if self._events is not None:
            self._events.close()
            self._events = None
        await self.worker.call(self.neighbours.close)

    # -- NeighboursPort --------------------------------------------------------------------

    async def mac_of(self, ip: str) -> str | None:
        """O(1) from the map; a miss awaits one kernel request (and maybe the leases)."""
        self._refresh()
        found = self.map.lookup(ip)
        if isinstance(found, str):
            return found
        return await self.worker.call(self.neighbours.mac_of, ip, self._interface(),
                                      found is UNKNOWN)

    async def ip_of(self, mac: str) -> str | None:
        """Leases first (kernel worker), then the map (or a dump while it is not synced)."""
        ip = await self.worker.call(self.neighbours.ip_of, mac, self._interface(), False)
        if ip is not None:
            return ip
        self._refresh()
        if self.map.synced:
            return self.map.ip_of(mac)
        return await self.worker.call(self.neighbours.ip_of, mac, self._interface(), True)

    async def leases(self) -> dict[str, str]:
        """DHCP leases: IPv4 address -> MAC. Awaits the kernel worker (a stat, maybe a read)."""
        return await self.worker.call(self.neighbours.leases)

    async def host_names(self) -> dict[str, str]:
        """DHCP host names: IPv4 address -> name. Awaits the kernel worker."""
        return await self.worker.call(self.neighbours.host_names)

    # -- the event stream ------------------------------------------------------------------

    def _interface(self) -> str | None:
        return None if self._lan_interface is None else self._lan_interface()

    def _refresh(self) -> None:
        """Take the events queued so far (non-blocking); notice a new LAN interface."""
        if self._events is None or self._lan_interface is None:
            return
        if self.map.synced and self._lan_interface() != self._synced_for:
            self._invalidate("the LAN interface changed")
        if self._reading:
            self._drain()

    def _drain(self) -> None:
        sock = self._events
        while sock is not None and self._reading:
            try:
                data = sock.recv(_RECV)
            except BlockingIOError:
                return
            except OSError as exc:
                why = ("the kernel dropped events (socket overrun)" if exc.errno == errno.ENOBUFS
                       else f"reading events failed: {exc}")
                self._invalidate(why)
                return
            for _seq, msg in rtnl.parse(data):
                if isinstance(msg, rtnl.NeighbourMsg):
                    self.map.apply(msg)
                elif isinstance(msg, rtnl.LinkMsg):
                    self._link_event(msg)
                    if not self._reading:
                        return  # the rest of the queue belongs after the next dump
                elif isinstance(msg, rtnl.Error) and msg.code == errno.ENOBUFS:
                    self._invalidate("the kernel dropped events (overrun)")
                    return

    def _link_event(self, msg: rtnl.LinkMsg) -> None:
        index = self.map.ifindex
        if index is not None and msg.index == index:
            if msg.deleted or (msg.name is not None and msg.name != self._synced_for):
                self._invalidate("the LAN interface went away or was renamed")
        elif not msg.deleted and msg.name is not None and msg.name == self._synced_for:
            self._invalidate("the LAN interface appeared")

    def _start_reading(self) -> None:
        if self._events is not None and not self._reading:
            asyncio.get_running_loop().add_reader(self._events.fileno(), self._drain)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._events is not None and self._reading:
            # The events stay queued in the socket, to be applied after the next dump.
            asyncio.get_running_loop().remove_reader(self._events.fileno())
        self._reading = False

    def _invalidate(self, why: str) -> None:
        log.info("rebuilding the client map: %s", why)
        self.map.invalidate()
        self._stop_reading()
        self._schedule_resync()

    def _schedule_resync(self) -> None:
        if self._closed or (self._resync is not None and not self._resync.done()):
            return
        self._resync = asyncio.create_task(self._resync_until_synced(), name="client-map-resync")

    async def _resync_until_synced(self) -> None:
        while not self._closed and self._events is not None:
            ok = await self._sync_once()
            if ok and self.map.synced:
                return
            if not ok:  # the dump failed: wait. (Synced and lost again at once: dump again.)
                await asyncio.sleep(RESYNC_RETRY)

    async def _sync_once(self) -> bool:
        """One dump on the kernel worker, then the events queued since. False when it failed."""
        self._stop_reading()
        name = self._interface()
        if name is None or self._events is None:
            return False
        try:
            ifindex, dump = await self.worker.call(self.neighbours.dump, name)
        except (OSError, RuntimeError) as exc:  # RuntimeError: the worker is shut down
            log.warning("dumping the neighbour table of %s failed: %s", name, exc)
            return False
        if self._closed or self._events is None:
            return False
        # A dump the kernel marks interrupted (NLM_F_DUMP_INTR: the table changed under it)
        # is still fine: what changed has its event queued, applied just below, and an
        # entry it skipped is found by the single lookup that a miss costs.
        self.map.replace(ifindex, dump)
        self._synced_for = name
        log.debug("client map of %s: %d entries", name, len(self.map))
        self._start_reading()
        self._drain()  # what happened during the dump, in order
        return True


def _check(x: KernelNeighbours) -> NeighboursPort:  # mypy: the adapter satisfies its port
    return x
