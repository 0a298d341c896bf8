"""Is the uplink up? Carrier on the WAN device and a default route through it.

Reads two small kernel files (of the daemon's own network namespace); blocks
briefly, so the daemon calls it on a thread from its reconcile loop.
"""

from __future__ import annotations

from pathlib import Path

_ROUTE_TABLE = "/proc/net/route"


def uplink_is_up(wan_interface: str, sys_root: str = "/sys/class/net",
                 route_table: str = _ROUTE_TABLE) -> bool:
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
