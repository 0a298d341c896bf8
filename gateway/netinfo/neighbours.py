"""Who is behind a LAN address: the kernel neighbour table, then DHCP leases.

``Neighbours`` is synchronous: its methods block on netlink (under a lock)
and read the dnsmasq lease file. The daemon holds ``KernelNeighbours``,
which implements :class:`gateway.ports.NeighboursPort` by running each call
on the one kernel worker thread.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from gateway.kernel import KernelWorker, netlink_errors
from gateway.services.dnsmasq import read_leases

if TYPE_CHECKING:
    from gateway.ports import NeighboursPort

log = logging.getLogger("desanet.neighbours")

# Neighbour states that carry a usable link-layer address.
_NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # reachable stale delay probe noarp permanent
_AF_INET = 2


class Neighbours:
    """Synchronous; every method blocks (netlink dump, lease file read)."""

    def __init__(self, lease_file: str) -> None:
        self.lease_file = lease_file
        self._lock = threading.Lock()
        self._ipr: Any = None

    def _ip_route(self) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    def mac_of(self, ip: str) -> str | None:
        """The MAC behind ``ip``: neighbour table first, then the leases. Blocks."""
        with self._lock:
            try:
                for msg in self._ip_route().get_neighbours(dst=ip):
                    mac = msg.get_attr("NDA_LLADDR")
                    if mac and msg["state"] & _NUD_USABLE and mac != "00:00:00:00:00:00":
                        return str(mac).lower()
            except netlink_errors() as exc:
                log.warning("neighbour lookup of %s failed (%s); trying the DHCP leases", ip, exc)
        return read_leases(self.lease_file).get(ip)

    def ip_of(self, mac: str) -> str | None:
        """The IPv4 address of ``mac``: leases first, then the neighbour table. Blocks."""
        mac = mac.lower()
        for ip, lease_mac in read_leases(self.lease_file).items():
            if lease_mac == mac:
                return ip
        with self._lock:
            try:
                for msg in self._ip_route().get_neighbours(family=_AF_INET):
                    if str(msg.get_attr("NDA_LLADDR") or "").lower() == mac:
                        return str(msg.get_attr("NDA_DST"))
            except netlink_errors() as exc:
                log.warning("neighbour lookup of %s failed: %s", mac, exc)
        return None

    def leases(self) -> dict[str, str]:
        """DHCP leases: IPv4 address -> MAC. Blocks: reads the lease file."""
        return read_leases(self.lease_file)

    def close(self) -> None:
        """Close the netlink socket."""
        with self._lock:
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None


class KernelNeighbours:
    """NeighboursPort over a synchronous ``Neighbours``: every call runs on the kernel worker.

    No method blocks the event loop: each awaits the kernel worker thread,
    where the netlink dump and the lease file read block.
    """

    def __init__(self, neighbours: Neighbours, worker: KernelWorker) -> None:
        self.neighbours = neighbours
        self.worker = worker

    async def mac_of(self, ip: str) -> str | None:
        """Awaits the kernel worker (netlink dump, maybe the lease file)."""
        return await self.worker.call(self.neighbours.mac_of, ip)

    async def ip_of(self, mac: str) -> str | None:
        """Awaits the kernel worker (lease file, maybe a netlink dump)."""
        return await self.worker.call(self.neighbours.ip_of, mac)

    async def leases(self) -> dict[str, str]:
        """DHCP leases: IPv4 address -> MAC. Awaits the kernel worker (a file read)."""
        return await self.worker.call(self.neighbours.leases)

    async def close(self) -> None:
        """Close the netlink socket. Awaits the kernel worker."""
        await self.worker.call(self.neighbours.close)


def _check(x: KernelNeighbours) -> NeighboursPort:  # mypy: the adapter satisfies its port
    return x
