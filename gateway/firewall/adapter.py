"""The firewall adapter: applies planner output and reads dynamic sets back.

``Firewall`` is synchronous: every method blocks on nft (libnftables in
process, or an ``nft`` child). Benchmarks and root tests drive it directly.
The daemon holds ``KernelFirewall``, which implements
:class:`gateway.ports.FirewallPort` by running each call on the one kernel
worker thread, so the event loop never waits for nftables. It also ends a
client's tracked connections (:mod:`gateway.firewall.conntrack`, netlink).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config.schema import Config
from gateway.errors import FirewallError
from gateway.firewall import nftcheck, nftobjects
from gateway.firewall.conntrack import Conntrack
from gateway.firewall.guard import ARP_FAMILY, plan_leases
from gateway.firewall.meters import METER_MAPS, plan_drop_objects, plan_unheld
from gateway.firewall.nft import Nft
from gateway.firewall.planner import (
    FAMILY,
    TABLE,
    CarriedState,
    MacIp,
    plan_authorize,
    plan_garden,
    plan_revoke,
    plan_ruleset,
)
from gateway.kernel import KernelWorker
from gateway.meter import Meter, MeterReading, parse_objects, voucher_of
from gateway.model import Session

if TYPE_CHECKING:
    from gateway.ports import FirewallPort

log = logging.getLogger("desanet.firewall")
SYSCTL_ROOT = Path("/proc/sys")
# Chains whose rule count tells a flushed table from ours: the forward path and the redirect.
CHECKED_CHAINS = ("lan_forward", "lan_nat")
TableShape = tuple[tuple[int | None, ...], tuple[int, ...]]  # table handles, rule counts


class Firewall:
    """Synchronous nftables adapter; every method blocks (runs nft in-process)."""

    def __init__(self, nft: Nft | None = None, sysctl_root: Path | None = SYSCTL_ROOT) -> None:
        self.nft = nft or Nft()
        self.sysctl_root = sysctl_root  # None: leave sysctls alone (benchmarks, unit tests)
        self._expect: TableShape | None = None  # our tables as the last apply left them

    def apply(
        self, cfg: Config, sessions: Iterable[Session], now: int, carry_garden: bool = True,
        meters: Iterable[Meter] = (),
    ) -> None:
        """Replace the whole ruleset in one transaction, carrying dynamic state (and the
        meters' counts and quotas' use: docs/quota.md).

        Blocks: reads the live sets, then runs one nft transaction.
        """
        sessions = list(sessions)
        carried = self.read_carried_state(carry_garden)
        if carried.from_live_table:
            carried = unwritten_get_a_window(carried, self.authorized_clients(), sessions, now)
        self.nft.run(plan_ruleset(cfg, sessions, now, carried, meters))
        self._expect = self._shape()
        self.set_rp_filter(cfg.network.lan_interface)

    def set_rp_filter(self, interface: str) -> None:
        """Strict reverse-path filtering on the LAN: a source not routed back through it
        is dropped by the kernel too (the nft source check comes first). Blocks: writes
        a sysctl. A missing interface is logged, not raised (it may come later)."""
        if self.sysctl_root is None:
            return
        path = self.sysctl_root / "net/ipv4/conf" / interface / "rp_filter"
        try:
            path.write_text("1\n")
        except OSError as exc:
            log.warning("cannot set rp_filter on %s: %s", interface, exc)

    def sync_leases(self, cfg: Config, leases: Mapping[str, str]) -> None:
        """Replace the lease sets (address -> MAC) in one transaction. Blocks: runs nft."""
        self.nft.run(plan_leases((FAMILY, TABLE), cfg, leases))

    def leases(self) -> dict[str, str]:
        """The lease set as the kernel has it: address -> MAC. Blocks: runs nft."""
        try:
            pairs = self._elements("lease4")
        except FirewallError:
            return {}  # a table from before the lease sets
        return {str(ip): str(mac) for (ip, mac) in pairs}

    def authorize(self, session: Session, now: int, class_text: str | None = None,
                  meter: Meter | None = None) -> None:
        """Add the client to the authorized sets (and its class map, its meter). Blocks:
        runs nft (twice, with a look-up of the meter maps in between, when the address
        still held another voucher's meter: see :func:`plan_meter`)."""
        try:
            self.nft.run(plan_authorize(session, now, class_text, meter))
        except FirewallError:
            if meter is None:
                raise
            self.nft.run(plan_authorize(session, now, class_text, meter, self._held(meter.ip)))

    def revoke(self, mac: str, ip: str, class_text: str | None = None,
               meter: Meter | None = None) -> None:
        """Remove the client from the authorized sets (and its meter). Blocks: runs nft."""
        try:
            self.nft.run(plan_revoke(mac, ip, class_text, meter))
        except FirewallError:
            if meter is None:
                raise
            # the address held other meter values than this session's: remove what is there
            self.nft.run(plan_revoke(mac, ip, class_text))
            script = plan_unheld(ip, self._held(ip))
            if script:
                self.nft.run(script)

    @staticmethod
    def _held(ip: str) -> list[str]:
        """The meter maps that hold ``ip``. Blocks: one nfnetlink look-up per map."""
        key = socket.inet_aton(ip)
        return [m for m in METER_MAPS if nftcheck.has_element(FAMILY, TABLE, m, key)]

    def read_meters(self, counters: bool = True) -> MeterReading:
        """The quotas' use and, with ``counters``, the vouchers' counters, each zeroed as
        it is read. Blocks: one or two nfnetlink dumps (O(vouchers online); see
        :mod:`gateway.firewall.nftobjects`)."""
        items = nftobjects.dump(FAMILY, TABLE, "quota")
        if counters:
            items += nftobjects.dump(FAMILY, TABLE, "counter", reset=True)
        return parse_objects(items)

    def drop_meters(self, names: Iterable[str]) -> None:
        """Delete meter objects no client refers to any more: one transaction per voucher,
        so one still in use (a login meanwhile, a stale map entry) keeps only its own.
        Blocks: runs nft. Raises FirewallError naming how many were kept."""
        by_voucher: dict[str, list[str]] = {}
        for name in names:
            code = voucher_of(name)
            if code is not None:
                by_voucher.setdefault(code, []).append(name)
        kept = 0
        for group in by_voucher.values():
            try:
                self.nft.run(plan_drop_objects(group))
            except FirewallError:
                kept += 1
        if kept:
            raise FirewallError(f"{kept} voucher(s)' meter objects are still referred to")

    def _carried_meters(self) -> dict[str, tuple[int, int]]:
        """Meter objects of the live table: name -> (packets, bytes) of a counter,
        (0, used) of a quota."""
        out: dict[str, tuple[int, int]] = {}
        try:
            items = (nftobjects.dump(FAMILY, TABLE, "counter")
                     + nftobjects.dump(FAMILY, TABLE, "quota"))
        except FirewallError:
            return out
        for item in items:
            if isinstance(c := item.get("counter"), dict):
                out[str(c["name"])] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
            elif isinstance(q := item.get("quota"), dict):
                out[str(q["name"])] = (0, int(q.get("used", 0)))
        return {k: v for k, v in out.items() if voucher_of(k) is not None}

    def client_classes(self) -> dict[str, str]:
        """The kernel's address -> HTB class map (empty when shaping is off). Blocks."""
        try:
            data = self.nft.run_json(f"list map {FAMILY} {TABLE} client_class")
        except FirewallError:
            return {}
        out: dict[str, str] = {}
        for item in data:
            for elem in item.get("map", {}).get("elem", []):
                key, value = elem
                out[str(key)] = str(value)
        return out

    def remove(self) -> None:
        """Delete our tables (idempotent). Blocks: runs nft."""
        self._expect = None
        self.nft.run(
            f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n"
            f"table bridge {TABLE} {{}}\ndelete table bridge {TABLE}\n"
            f"table {ARP_FAMILY} {TABLE} {{}}\ndelete table {ARP_FAMILY} {TABLE}\n"
        )

    def intact(self) -> bool:
        """Are our tables still as the last :meth:`apply` left them? Blocks: four small
        nfnetlink requests (two tables' handles, two chains' rules; ~0.5 ms in all,
        whatever the number of clients: see :mod:`gateway.firewall.nftcheck`).

        False when a table is gone or was made again by someone else (another
        handle: ``nft flush ruleset``, a hand-made table), or a chain lost or
        gained rules (``nft flush table``); True before the first apply.
        """
        if self._expect is None:
            return True
        try:
            return self._shape() == self._expect
        except FirewallError:
            return False

    @staticmethod
    def _shape() -> TableShape:
        tables = tuple(nftcheck.table_handle(family, TABLE) for family in (FAMILY, "bridge"))
        rules = tuple(nftcheck.rule_count(FAMILY, TABLE, chain) for chain in CHECKED_CHAINS)
        return tables, rules

    def table_exists(self) -> bool:
        """Blocks: one nfnetlink request (not an nft listing: that costs ~35 ms with
        5,000 clients even for the table names)."""
        try:
            return nftcheck.table_handle(FAMILY, TABLE) is not None
        except FirewallError:
            return False

    def active_clients(self) -> dict[MacIp, int]:
        """Clients with traffic inside their idle window -> seconds left in it. Blocks."""
        return {_mac_ip(k): left for k, left in self._elements("active4").items()}

    def active_addresses(self) -> dict[str, int]:
        """Client addresses with traffic towards them (or a re-arming upload) inside their
        idle window -> seconds left in it (``active_down4``; empty for a table from before
        it). Blocks: runs nft."""
        try:
            return self._plain_elements("active_down4")
        except FirewallError:
            return {}

    def authorized_clients(self) -> dict[MacIp, int]:
        """Authorized clients -> seconds left of their session. Blocks: runs nft."""
        return {_mac_ip(k): left for k, left in self._elements("auth4").items()}

    def client_entry(self, mac: str, ip: str) -> tuple[bool, bool]:
        """Is the client in ``auth4``, and in ``active4``? Blocks: two nfnetlink look-ups
        of one element each (~0.1 ms, where ``nft get element`` costs ~65 ms with 5,000
        clients). Raises FirewallError when the table itself is gone."""
        key = nftcheck.mac_ip_key(mac, ip)
        found = (nftcheck.has_element(FAMILY, TABLE, "auth4", key),
                 nftcheck.has_element(FAMILY, TABLE, "active4", key))
        if not any(found) and not self.table_exists():
            raise FirewallError(f"the nftables table {FAMILY} {TABLE} is missing")
        return found

    def read_carried_state(self, carry_garden: bool = True) -> CarriedState:
        if not self.table_exists():
            return CarriedState()
        return CarriedState(
            active=self.active_clients(),
            active_down=self.active_addresses(),
            garden_dns4=self._plain_elements("garden_dns4") if carry_garden else {},
            garden_dns6=self._plain_elements("garden_dns6") if carry_garden else {},
            from_live_table=True,
            leases=self.leases(),
            meters=self._carried_meters(),
        )

    def garden_dns(self) -> dict[str, int]:
        """Walled-garden addresses open by name -> seconds left. Blocks: runs nft."""
        return {**self._plain_elements("garden_dns4"), **self._plain_elements("garden_dns6")}

    def open_garden(self, elements: Mapping[str, int]) -> None:
        """Open walled-garden addresses for their seconds (clamped). Blocks: runs nft."""
        script = plan_garden(elements)
        if script:
            self.nft.run(script)

    def _plain_elements(self, name: str) -> dict[str, int]:
        return {str(k): v for k, v in self._elements(name).items()}

    def _elements(self, name: str) -> dict[Any, int]:
        data = self.nft.run_json(f"list set {FAMILY} {TABLE} {name}")
        out: dict[Any, int] = {}
        for item in data:
            for elem in item.get("set", {}).get("elem", []):
                key, left = _parse_elem(elem)
                out[key] = left
        return out


class KernelFirewall:
    """FirewallPort over a synchronous ``Firewall``: every call runs on the kernel worker.

    No method blocks the event loop: each awaits the kernel worker thread,
    where the ``Firewall`` call blocks on nft. Errors are the ``Firewall``'s
    (FirewallError), raised unchanged.
    """

    def __init__(self, firewall: Firewall, worker: KernelWorker,
                 conntrack: Conntrack | None = None) -> None:
        self.firewall = firewall
        self.worker = worker
        self.conntrack = conntrack or Conntrack()

    @property
    def backend(self) -> str:
        """"libnftables" or "nft" (decided at construction). Does not block."""
        return self.firewall.nft.backend

    async def apply(self, cfg: Config, sessions: Sequence[Session], now: int,
                    carry_garden: bool = True, meters: Sequence[Meter] = ()) -> None:
        """Replace the ruleset in one transaction. Awaits the kernel worker (nft)."""
        await self.worker.call(self.firewall.apply, cfg, list(sessions), now, carry_garden,
                               list(meters))

    async def authorize(self, session: Session, now: int, class_text: str | None,
                        meter: Meter | None = None) -> None:
        """Let the client through. Awaits the kernel worker (nft)."""
        await self.worker.call(self.firewall.authorize, session, now, class_text, meter)

    async def revoke(self, mac: str, ip: str, class_text: str | None,
                     meter: Meter | None = None) -> None:
        """Cut the client off. Awaits the kernel worker (nft)."""
        await self.worker.call(self.firewall.revoke, mac, ip, class_text, meter)

    async def read_meters(self, counters: bool = True) -> MeterReading:
        """Read the quotas (and read and zero the counters). Awaits the kernel worker."""
        return await self.worker.call(self.firewall.read_meters, counters)

    async def drop_meters(self, names: Sequence[str]) -> None:
        """Delete meter objects no client refers to. Awaits the kernel worker (nft)."""
        await self.worker.call(self.firewall.drop_meters, list(names))

    async def intact(self) -> bool:
        """Our tables as the last apply left them? Awaits the kernel worker (four small
        nfnetlink requests)."""
        return await self.worker.call(self.firewall.intact)

    async def client_entry(self, mac: str, ip: str) -> tuple[bool, bool]:
        """In ``auth4``, in ``active4``? Awaits the kernel worker (two or three nfnetlink requests)."""
        return await self.worker.call(self.firewall.client_entry, mac, ip)

    async def active_clients(self) -> dict[MacIp, int]:
        """Clients inside their idle window -> seconds left. Awaits the kernel worker (nft)."""
        return await self.worker.call(self.firewall.active_clients)

    async def active_addresses(self) -> dict[str, int]:
        """Addresses with download activity inside their idle window -> seconds left.
        Awaits the kernel worker (nft)."""
        return await self.worker.call(self.firewall.active_addresses)

    async def authorized_clients(self) -> dict[MacIp, int]:
        """Authorized clients -> seconds left. Awaits the kernel worker (nft)."""
        return await self.worker.call(self.firewall.authorized_clients)

    async def client_classes(self) -> dict[str, str]:
        """The kernel's address -> HTB class map. Awaits the kernel worker (nft)."""
        return await self.worker.call(self.firewall.client_classes)

    async def open_garden(self, elements: Mapping[str, int]) -> None:
        """Open walled-garden addresses (core.garden). Awaits the kernel worker (nft)."""
        await self.worker.call(self.firewall.open_garden, dict(elements))

    async def garden_addresses(self) -> dict[str, int]:
        """Walled-garden addresses open by name -> seconds left. Awaits the kernel worker."""
        return await self.worker.call(self.firewall.garden_dns)

    async def sync_leases(self, cfg: Config, leases: Mapping[str, str]) -> None:
        """Replace the lease sets. Awaits the kernel worker (nft)."""
        await self.worker.call(self.firewall.sync_leases, cfg, leases)

    async def remove(self) -> None:
        """Delete our tables. Awaits the kernel worker (nft)."""
        await self.worker.call(self.firewall.remove)

    async def end_connections(self, ip: str, redirected_only: bool) -> None:
        """Delete the client's conntrack entries. Awaits the kernel worker (netlink)."""
        await self.worker.call(self.conntrack.end_client, ip, redirected_only)


def unwritten_get_a_window(carried: CarriedState, authorized: Mapping[MacIp, int],
                           sessions: Iterable[Session], now: int) -> CarriedState:
    """Give a fresh idle window to each session the live table has never held (pure).

    The store commits a login before the kernel hears of it; a crash in between
    leaves a session the store holds and ``auth4`` does not. Such a session is
    no idle one (the kernel never had the chance to see its traffic): without
    this it would be rebuilt into ``auth4`` but not ``active4``, its traffic
    dropped while the portal says "online", until the idle timeout ended it.
    A session in ``auth4`` but not in ``active4`` is idle and stays out.
    """
    active = dict(carried.active)
    for s in sessions:
        key = (s.mac, s.ip)
        left = s.expires - now
        if left > 0 and key not in authorized and key not in active:
            active[key] = min(s.idle_timeout, left)
    return replace(carried, active=active)


def _parse_elem(elem: Any) -> tuple[Any, int]:
    if isinstance(elem, dict) and "elem" in elem:
        inner = elem["elem"]
        val = inner["val"]
        left = int(inner.get("expires", inner.get("timeout", 0)))
    else:
        val, left = elem, 0
    if isinstance(val, dict) and "concat" in val:
        return tuple(val["concat"]), left
    return val, left


def _mac_ip(key: Any) -> MacIp:
    mac, ip = key
    return str(mac), str(ip)


def _check(x: KernelFirewall) -> FirewallPort:  # mypy: the adapter satisfies its port
    return x
