"""Shape the proxy's uplink-fed answers in the villager's own class.

The gateway's own traffic to the LAN is "local" (docs/shaping.md): not charged to
the uplink, at LAN speed. That is right for a cache hit, which never crosses the
uplink, but a miss, a pass-through or a form answer streams the upstream's bytes
to the villager; as local traffic it would let a client that has not logged in
download from a government server at LAN speed, while the same server reached
directly is held to the unauthorized rate.

So before such an answer is sent, the villager's socket gets SO_MARK
``METERED_MARK``; the firewall's ``metered_output`` chain (gateway/firewall/
planner.py) then puts its packets in the client's class by address, the same map
the forward chain uses: the unauthorized class before login. The kernel copies the
socket's mark onto every packet as it is sent, so the whole answer (and the rest
of a kept-alive connection: the mark is never taken off) is shaped. The mark is
also what paces the upstream download: the proxy writes to the villager with
back-pressure, so a shaped villager reads the upstream at the shaped rate.
"""

from __future__ import annotations

import logging
import socket

from aiohttp import web

from gateway.firewall.planner import METERED_MARK

log = logging.getLogger("desanet.cache")

SO_MARK = getattr(socket, "SO_MARK", 36)  # Linux
_warned = False


def mark_metered(request: web.Request) -> bool:
    """Mark the villager's connection as carrying uplink bytes; True when marked.

    Needs CAP_NET_ADMIN (the daemon runs as root). A failure is logged once and the
    answer goes out unshaped: the villager still gets the page.
    """
    global _warned
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False  # a unix socket or a test transport: nothing to shape
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, METERED_MARK)
    except OSError as exc:
        if not _warned:
            _warned = True
            log.error("cannot mark proxy answers for shaping (SO_MARK: %s); "
                      "misses go out unshaped", exc)
        return False
    return True
