"""A scripted uplink prober for unit tests (the real one is gateway/netinfo/uplink.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.core.uplink import ProbeResult

if TYPE_CHECKING:
    from gateway.core.uplink import UplinkProberPort


class FakeUplinkProber:
    """``link`` and ``reachable`` say what the next observations see; calls are recorded."""

    def __init__(self, link: bool = True, reachable: bool = True, latency_ms: float = 20.0,
                 resolvers: Sequence[str] = ("192.0.2.53",)) -> None:
        self.link = link
        self.reachable = reachable
        self.latency_ms = latency_ms
        self.resolvers = list(resolvers)
        self.rounds: list[tuple[list[str], list[tuple[str, int]], float]] = []

    async def link_up(self, wan_interface: str) -> bool:
        return self.link

    def system_resolvers(self) -> list[str]:
        return list(self.resolvers)

    async def probe(self, dns: Sequence[str], tcp: Sequence[tuple[str, int]],
                    timeout: float) -> ProbeResult:
        self.rounds.append((list(dns), list(tcp), timeout))
        if self.reachable:
            return ProbeResult(True, self.latency_ms)
        return ProbeResult(False, None, "fake: unreachable")


def _check(x: FakeUplinkProber) -> UplinkProberPort:
    return x
