"""FakeFirewall: FirewallPort in memory, with the real set semantics (tests only).

``apply`` fills ``authorized`` and ``active`` from the sessions the way
:func:`gateway.firewall.planner.plan_ruleset` fills ``auth4`` and
``active4``: expired sessions are left out, a client missing from the live
``active`` set stays idle across a re-apply, a session the live table never
held (a crash between the store's commit and the kernel write) and every
session at the first apply (no table yet, e.g. after a reboot) get one fresh
idle window. Time does not pass by itself: a test makes a client idle by
deleting it from ``active``; ``active_down`` (address -> seconds, the kernel's
``active_down4``) is filled only by a test that models a download. ``flush_by_hand()`` does what ``nft flush
ruleset`` does: the table is gone (reads and element changes then fail, as
the kernel's do) until the next ``apply``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from gateway.config.schema import Config
from gateway.errors import FirewallError
from gateway.faults import FaultInjection
from gateway.firewall.planner import MacIp
from gateway.meter import (
    QUOTA_KINDS,
    Meter,
    MeterReading,
    QuotaKind,
    QuotaUse,
    counter_names,
    quota_name,
)
from gateway.model import Session

if TYPE_CHECKING:
    from gateway.ports import FirewallPort


class FakeFirewall(FaultInjection):
    def __init__(self, backend: str = "fake") -> None:
        super().__init__()
        self._backend = backend
        self.applied = 0  # how many full rulesets went in
        self.last_config: Config | None = None
        self.last_carry_garden: bool | None = None
        self.authorized: dict[MacIp, int] = {}  # (mac, ip) -> seconds left of the session
        self.active: dict[MacIp, int] = {}  # (mac, ip) -> seconds left of the idle window
        self.active_down: dict[str, int] = {}  # ip -> seconds left (downloads; tests set it)
        self.classes: dict[str, str] = {}  # ip -> HTB class text ("1:105")
        self.authorize_log: list[tuple[Session, str | None]] = []
        self.revoke_log: list[tuple[str, str, str | None]] = []
        # end_connections calls in order: (ip, redirected_only)
        self.conntrack_log: list[tuple[str, bool]] = []
        self.garden: dict[str, int] = {}  # walled-garden address -> seconds (core.garden)
        self.leases: dict[str, str] = {}  # the lease sets: ip -> mac
        self.lease_syncs = 0
        self.flushed = False  # the table was removed behind the daemon's back
        # quota: ip -> its meter; voucher -> [bytes down, bytes up] not read yet; quota
        # object name -> [used, limit]. A test moves bytes with ``traffic``.
        self.meters: dict[str, Meter] = {}
        self.counts: dict[str, list[int]] = {}
        self.quotas: dict[str, list[int]] = {}
        self.apply_meters: list[list[Meter]] = []  # meters given to each apply

    def flush_by_hand(self) -> None:
        """What ``nft flush ruleset`` does to us (tests only)."""
        self.flushed = True
        self.applied = 0
        self.authorized.clear()
        self.active.clear()
        self.active_down.clear()
        self.classes.clear()
        self.meters.clear()
        self.counts.clear()
        self.quotas.clear()

    def traffic(self, ip: str, down: int = 0, up: int = 0) -> None:
        """Bytes the client at ``ip`` moves (tests only): counted and held against its
        voucher's quotas as the kernel would (a packet past a cut quota is dropped)."""
        meter = self.meters.get(ip)
        if meter is None:
            return
        for kind, n in (("down", down), ("up", up)):
            kinds: tuple[QuotaKind, QuotaKind] = ("total", "down" if kind == "down" else "up")
            names = [quota_name(k, meter.voucher) for k in kinds if k in meter.limits]
            for name in names:
                self.quotas[name][0] += n
            over = any(self.quotas[x][0] >= self.quotas[x][1] for x in names)
            if over and meter.after == "cut":
                continue  # dropped: not delivered, not counted
            self.counts.setdefault(meter.voucher, [0, 0])[0 if kind == "down" else 1] += n

    def _meter(self, meter: Meter) -> None:
        self.meters[meter.ip] = meter
        self.counts.setdefault(meter.voucher, [0, 0])
        for kind, limit in meter.limits.items():
            name = quota_name(kind, meter.voucher)
            if name in self.quotas:
                self.quotas[name][1] = limit  # a new limit, the use kept (nft's "add quota")
            else:
                self.quotas[name] = [meter.used(kind), limit]

    def _table(self) -> None:
        if self.flushed:
            raise FirewallError("nftables refused the change: No such file or directory "
                                "(the table inet desanet is gone)")

    @property
    def backend(self) -> str:
        return self._backend

    async def apply(self, cfg: Config, sessions: Sequence[Session], now: int,
                    carry_garden: bool = True, meters: Sequence[Meter] = ()) -> None:
        self._fault("apply")
        self.apply_meters.append(list(meters))
        live_ips = {s.ip for s in sessions if s.expires > now}
        self.meters = {}
        for m in meters:
            if m.ip in live_ips:
                self._meter(m)
        live = self.applied > 0
        authorized: dict[MacIp, int] = {}
        active: dict[MacIp, int] = {}
        for s in sessions:
            left = s.expires - now
            if left <= 0:
                continue
            key = (s.mac, s.ip)
            authorized[key] = left
            held = live and key in self.authorized  # else never in the kernel: a fresh window
            idle_left = self.active.get(key) if held else min(s.idle_timeout, left)
            if idle_left is not None:
                active[key] = max(1, idle_left)
        self.authorized, self.active = authorized, active
        self.active_down = {ip: n for ip, n in self.active_down.items()
                            if live and ip in {k[1] for k in authorized}}
        self.applied += 1
        self.last_config = cfg
        self.last_carry_garden = carry_garden
        if not carry_garden:
            self.garden.clear()
        self.flushed = False

    async def authorize(self, session: Session, now: int, class_text: str | None,
                        meter: Meter | None = None) -> None:
        self._fault("authorize")
        self._table()
        if meter is not None:
            self._meter(meter)
        left = max(1, session.expires - now)
        key = (session.mac, session.ip)
        self.authorized[key] = left
        self.active[key] = min(session.idle_timeout, left)
        if class_text is not None:
            self.classes[session.ip] = class_text
        self.authorize_log.append((session, class_text))

    async def revoke(self, mac: str, ip: str, class_text: str | None,
                     meter: Meter | None = None) -> None:
        self._fault("revoke")
        self._table()
        if meter is not None:
            self.meters.pop(ip, None)
        self.authorized.pop((mac, ip), None)
        self.active.pop((mac, ip), None)
        self.active_down.pop(ip, None)
        if class_text is not None:
            self.classes.pop(ip, None)
        self.revoke_log.append((mac, ip, class_text))

    async def read_meters(self, counters: bool = True) -> MeterReading:
        self._fault("read_meters", changes=False)
        self._table()
        counts = {v: (d, u) for v, (d, u) in self.counts.items()} if counters else {}
        for c in self.counts.values() if counters else ():
            c[0] = c[1] = 0
        quotas: dict[str, dict[QuotaKind, QuotaUse]] = {}
        names: set[str] = set()
        for v in self.counts:
            names.update(counter_names(v))
            for kind in QUOTA_KINDS:
                q = self.quotas.get(quota_name(kind, v))
                if q is not None:
                    quotas.setdefault(v, {})[kind] = QuotaUse(q[0], q[1])
                    names.add(quota_name(kind, v))
        return MeterReading(counts, quotas, frozenset(names))

    async def drop_meters(self, names: Sequence[str]) -> None:
        self._fault("drop_meters")
        used = {m.voucher for m in self.meters.values()}
        for name in names:
            for v in list(self.counts):
                if name in counter_names(v):
                    if v in used:
                        raise FirewallError("nftables refused the change: Device or resource "
                                            "busy (a map element refers to the object)")
                    self.counts.pop(v, None)
            self.quotas.pop(name, None)

    async def active_clients(self) -> dict[MacIp, int]:
        self._fault("active_clients", changes=False)
        self._table()
        return dict(self.active)

    async def active_addresses(self) -> dict[str, int]:
        self._fault("active_addresses", changes=False)
        self._table()
        return dict(self.active_down)

    async def authorized_clients(self) -> dict[MacIp, int]:
        self._fault("authorized_clients", changes=False)
        self._table()
        return dict(self.authorized)

    async def client_entry(self, mac: str, ip: str) -> tuple[bool, bool]:
        self._fault("client_entry", changes=False)
        self._table()
        return (mac, ip) in self.authorized, (mac, ip) in self.active

    async def intact(self) -> bool:
        self._fault("intact", changes=False)
        return not self.flushed

    async def client_classes(self) -> dict[str, str]:
        self._fault("client_classes", changes=False)
        return dict(self.classes)

    async def sync_leases(self, cfg: Config, leases: Mapping[str, str]) -> None:
        self._fault("sync_leases")
        self.leases = dict(leases)
        self.lease_syncs += 1

    async def end_connections(self, ip: str, redirected_only: bool) -> None:
        self._fault("end_connections")
        self.conntrack_log.append((ip, redirected_only))

    async def open_garden(self, elements: Mapping[str, int]) -> None:
        self._fault("open_garden")
        self.garden.update(elements)

    async def garden_addresses(self) -> dict[str, int]:
        self._fault("garden_addresses", changes=False)
        return dict(self.garden)

    async def remove(self) -> None:
        self._fault("remove")
        self.applied = 0
        self.authorized.clear()
        self.active.clear()
        self.active_down.clear()
        self.classes.clear()
        self.garden.clear()
        self.meters.clear()
        self.counts.clear()
        self.quotas.clear()


def _check(x: FakeFirewall) -> FirewallPort:  # mypy: the fake satisfies the port
    return x
