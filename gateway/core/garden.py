"""The walled garden's names: resolved by the daemon, opened for their TTL.

Theory of operation: every exact name in ``walled_garden.hostnames`` is
resolved by the daemon itself (a resolver port; the adapter asks the LAN
resolver), never from a client's query, so ``evil.<garden name>`` or a
client-triggered answer opens nothing. Each address goes into the firewall's
garden set with a timeout of its DNS TTL clamped to [floor, cap]
(``firewall.planner.garden_timeout``) and the name is asked again when half
of its shortest timeout has passed, so an address that stays in DNS stays
open and one that leaves it closes within the cap. The addresses open for a
name are what the pre-login resolver answers for it (``publish``), so a
client is told exactly what the firewall lets through (CDNs rotate answers).

``tick`` runs on the reconciler's timer. It also puts back addresses the
kernel lost (a ruleset rebuilt without the carried set: a walled-garden
change, a repaired table) at the next tick. A name that fails to resolve
keeps what it had until it times out and is asked again after RETRY seconds.
Wildcards (``*.example.go.id``) are left to the pre-login dnsmasq (nftset).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from gateway.clock import Clock
from gateway.config.schema import Config
from gateway.errors import DesanetError
from gateway.firewall.planner import garden_timeout

log = logging.getLogger("desanet.garden")

RETRY = 10  # seconds before a name that did not resolve is asked again
INTERVAL = 5.0  # the reconciler's period for tick


class GardenResolverPort(Protocol):
    async def resolve(self, name: str) -> list[tuple[str, int]]:
        """A records of ``name`` with TTLs; raises OSError, TimeoutError or ValueError."""
        ...


class GardenFirewallPort(Protocol):
    async def open_garden(self, elements: Mapping[str, int]) -> None:
        """Open each address (or refresh it) for its number of seconds."""
        ...

    async def garden_addresses(self) -> dict[str, int]:
        """Addresses open in the garden set -> seconds left."""
        ...


Publish = Callable[[Mapping[str, Sequence[str]], Config], Awaitable[None]]


def exact_names(cfg: Config) -> tuple[str, ...]:
    return tuple(n for n in cfg.walled_garden.hostnames if not n.startswith("*."))


def usable(ip: str, cfg: Config) -> bool:
    """An answer the garden may open: not the gateway (the offline answer while the
    uplink is down), not the LAN, loopback or unspecified (pure)."""
    addr = ipaddress.ip_address(ip)
    return not (addr.is_loopback or addr.is_unspecified or addr.is_multicast
                or addr in cfg.network.lan_address.network)


class GardenService:
    def __init__(self, config: Callable[[], Config], firewall: GardenFirewallPort,
                 resolver: GardenResolverPort, publish: Publish, clock: Clock) -> None:
        self.config = config
        self.firewall = firewall
        self.resolver = resolver
        self.publish = publish
        self.clock = clock
        self._names: tuple[str, ...] = ()
        self._due: dict[str, int] = {}
        self._open: dict[str, dict[str, int]] = {}  # name -> address -> expires (epoch s)
        self._published: dict[str, list[str]] | None = None

    def entries(self) -> dict[str, list[str]]:
        """Name -> addresses open now (what the pre-login resolver answers)."""
        now = self.clock.now()
        out = {name: sorted(ip for ip, exp in ips.items() if exp > now)
               for name, ips in self._open.items()}
        return {name: ips for name, ips in out.items() if ips}

    async def tick(self) -> None:
        """Resolve the names that are due, open their addresses, repair what the kernel
        lost and publish the answers. Raises the firewall's or publisher's errors
        (the reconciler logs them and runs it again next turn)."""
        cfg = self.config()
        names = exact_names(cfg)
        if names != self._names:  # config changed: forget names no longer listed
            self._names = names
            self._open = {n: ips for n, ips in self._open.items() if n in names}
            self._due = {n: due for n, due in self._due.items() if n in names}
        now = self.clock.now()
        opening: dict[str, int] = {}
        for name in names:
            if self._due.get(name, 0) > now:
                continue
            await self._resolve(name, cfg, now, opening)
        kernel = await self.firewall.garden_addresses()
        for ips in self._open.values():
            for ip, exp in ips.items():
                if exp > now and ip not in kernel and ip not in opening:
                    opening[ip] = exp - now
        if opening:
            await self.firewall.open_garden(opening)
        entries = self.entries()
        if entries != self._published:
            await self.publish(entries, cfg)
            self._published = entries

    async def _resolve(self, name: str, cfg: Config, now: int, opening: dict[str, int]) -> None:
        try:
            answers = [(ip, ttl) for ip, ttl in await self.resolver.resolve(name)
                       if usable(ip, cfg)]
        except (OSError, TimeoutError, ValueError, DesanetError) as exc:
            log.warning("walled garden: cannot resolve %s (%s); asking again in %ss",
                        name, exc or type(exc).__name__, RETRY)
            self._due[name] = now + RETRY
            return
        if not answers:
            self._due[name] = now + RETRY
            return
        ips = self._open.setdefault(name, {})
        shortest = None
        for ip, ttl in answers:
            seconds = garden_timeout(ttl)
            ips[ip] = now + seconds  # what the kernel's add-delete-add leaves
            opening[ip] = max(opening.get(ip, 0), seconds)
            shortest = seconds if shortest is None else min(shortest, seconds)
        assert shortest is not None
        self._due[name] = now + max(RETRY, shortest // 2)
        for ip in [ip for ip, exp in ips.items() if exp <= now]:
            del ips[ip]
