"""Who is behind a LAN address: the kernel neighbour table, then DHCP leases."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from gateway.services.dnsmasq import read_leases

# Neighbour states that carry a usable link-layer address.
_NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # reachable stale delay probe noarp permanent


class Neighbours:
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
        with self._lock, contextlib.suppress(Exception):
            for msg in self._ip_route().get_neighbours(dst=ip):
                mac = msg.get_attr("NDA_LLADDR")
                if mac and msg["state"] & _NUD_USABLE and mac != "00:00:00:00:00:00":
                    return str(mac).lower()
        return read_leases(self.lease_file).get(ip)

    def ip_of(self, mac: str) -> str | None:
        mac = mac.lower()
        for ip, lease_mac in read_leases(self.lease_file).items():
            if lease_mac == mac:
                return ip
        with self._lock, contextlib.suppress(Exception):
            for msg in self._ip_route().get_neighbours(family=2):
                if str(msg.get_attr("NDA_LLADDR") or "").lower() == mac:
                    return str(msg.get_attr("NDA_DST"))
        return None

    def close(self) -> None:
        with self._lock:
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None
