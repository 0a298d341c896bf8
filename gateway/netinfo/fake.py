"""FakeNeighbours: NeighboursPort in memory, same lookup order as the real one (tests only).

``table`` is the kernel neighbour table, ``lease_table`` the DHCP leases,
both IPv4 address -> MAC. ``mac_of`` looks in the neighbour table first,
then the leases; ``ip_of`` in the leases first, then the neighbour table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.faults import FaultInjection

if TYPE_CHECKING:
    from gateway.ports import NeighboursPort


class FakeNeighbours(FaultInjection):
    def __init__(self, table: Mapping[str, str] | None = None,
                 leases: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.table: dict[str, str] = {ip: mac.lower() for ip, mac in (table or {}).items()}
        self.lease_table: dict[str, str] = {ip: mac.lower() for ip, mac in (leases or {}).items()}
        self.host_table: dict[str, str] = {}  # address -> the lease's host name

    def add(self, ip: str, mac: str, lease: bool = True, host_name: str | None = None) -> None:
        """A client is on the LAN (with a DHCP lease unless ``lease`` is False)."""
        self.table[ip] = mac.lower()
        if lease:
            self.lease_table[ip] = mac.lower()
            if host_name:
                self.host_table[ip] = host_name

    async def mac_of(self, ip: str) -> str | None:
        self._fault("mac_of", changes=False)
        return self.table.get(ip) or self.lease_table.get(ip)

    async def ip_of(self, mac: str) -> str | None:
        self._fault("ip_of", changes=False)
        mac = mac.lower()
        for source in (self.lease_table, self.table):
            for ip, have in source.items():
                if have == mac:
                    return ip
        return None

    async def leases(self) -> dict[str, str]:
        self._fault("leases", changes=False)
        return dict(self.lease_table)

    async def host_names(self) -> dict[str, str]:
        self._fault("leases", changes=False)
        return dict(self.host_table)

    async def close(self) -> None:
        pass


def _check(x: FakeNeighbours) -> NeighboursPort:  # mypy: the fake satisfies the port
    return x
