"""ClientMap: the LAN's IP -> MAC table in memory, kept equal to the kernel's by events.

Pure logic, no sockets: ``KernelNeighbours`` (neighbours.py) feeds it the
kernel's neighbour messages, a full dump at start and after an overrun
(``replace``) and every RTM_NEWNEIGH / RTM_DELNEIGH in between (``apply``),
in the order the kernel queued them. Each message carries an entry's whole
state, so applying the events queued since the subscription on top of a
dump taken after it ends at the kernel's current table.

Only the LAN interface's entries are kept (the portal's clients are there).
Every state is kept, usable or not, so a lookup can tell "the kernel has no
entry" (``UNKNOWN``: worth asking the kernel once) from "the kernel has one
but it identifies nobody" (``UNUSABLE``: INCOMPLETE, FAILED, a zero MAC).
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Iterable

from gateway.netinfo.rtnl import NUD_USABLE, NeighbourMsg

_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_ZERO_MAC = "00:00:00:00:00:00"


class Miss(enum.Enum):
    UNKNOWN = "unknown"  # no entry for the address
    UNUSABLE = "unusable"  # an entry that names no MAC the kernel would send to


UNKNOWN = Miss.UNKNOWN
UNUSABLE = Miss.UNUSABLE


def usable_mac(msg: NeighbourMsg) -> str | None:
    """The MAC a neighbour message identifies, or None (state or address unusable)."""
    if msg.deleted or not msg.state & NUD_USABLE or msg.mac is None or msg.mac == _ZERO_MAC:
        return None
    return msg.mac


class ClientMap:
    """IP -> MAC of one interface's neighbours; O(1) lookups.

    Not thread-safe: the daemon touches it from the event loop only.
    ``synced`` is False until the first ``replace`` and again after
    ``invalidate`` (an overrun lost events): lookups then say nothing.
    """

    def __init__(self) -> None:
        self.ifindex: int | None = None
        self.synced = False
        self._by_ip: dict[str, str | None] = {}  # None: an entry in an unusable state
        self.applied = 0  # events taken (for status and tests)
        self.resyncs = 0

    def __len__(self) -> int:
        return len(self._by_ip)

    def replace(self, ifindex: int | None, dump: Iterable[NeighbourMsg]) -> None:
        """Start over from a dump of ``ifindex`` (None: the interface does not exist)."""
        self.ifindex = ifindex
        self._by_ip = {}
        if ifindex is not None:
            for msg in dump:
                self._take(msg)
        self.synced = True
        self.resyncs += 1

    def invalidate(self) -> None:
        """Events were lost: say nothing until the next ``replace``."""
        self.synced = False

    def apply(self, msg: NeighbourMsg) -> None:
        """One event, in the order the kernel sent it."""
        self.applied += 1
        self._take(msg)

    def _take(self, msg: NeighbourMsg) -> None:
        if msg.ifindex != self.ifindex or msg.family not in _FAMILIES or msg.ip is None:
            return
        if msg.deleted:
            self._by_ip.pop(msg.ip, None)
        else:
            self._by_ip[msg.ip] = usable_mac(msg)

    def lookup(self, ip: str) -> str | Miss:
        """The MAC behind ``ip``, or why there is none. UNKNOWN while not synced."""
        if not self.synced:
            return UNKNOWN
        try:
            mac = self._by_ip[ip]
        except KeyError:
            return UNKNOWN
        return UNUSABLE if mac is None else mac

    def ip_of(self, mac: str) -> str | None:
        """An IPv4 address whose usable entry names ``mac`` (a scan: control API only).

        None while not synced.
        """
        if not self.synced:
            return None
        mac = mac.lower()
        for ip, have in self._by_ip.items():
            if have == mac and ":" not in ip:
                return ip
        return None
