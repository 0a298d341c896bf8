"""The session sweep: expired, idle and used-up sessions end; the kernel is made
to match the store again; and when to sweep next.

Timing: the kernel enforces expiry and idle itself (set element timeouts);
the sweep turns them into ended sessions, events and ended connections. It
runs every few seconds and, through ``set_wakeup``, is asked for again at the
next expiry or end of an idle window it knows of, so a session ends within
about a second of its deadline. Each sweep lists the kernel's sets (O(clients):
~150 ms at 5,000 clients on a test VM), so deadline sweeps are spaced by at
least ``MIN_SWEEP_GAP`` and by ``LISTING_SHARE`` times the last listing's
duration: a village of hundreds gets its second, a very large one a few
seconds, and the kernel worker never spends more than 1/LISTING_SHARE of its
time listing for deadlines.

Healing: the sweep compares the store with the sets it lists anyway. A kernel
entry no live session backs (a logout that crashed half-way) is removed, so
nobody regains access; a live session out of ``auth4`` (lost, not idle) is put
back. Each sweep also counts the vouchers' time of use (usage.py) and gives
the kernel's lease sets the DHCP leases.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from gateway.clock import Clock
from gateway.config.schema import Config
from gateway.core.events import EndReason, EventBus, SessionEnded
from gateway.core.locks import SessionLocks
from gateway.core.session_kernel import SessionKernel
from gateway.core.session_rules import idle_sessions, missing_kernel_entries, stale_kernel_entries
from gateway.core.usage import TimeOfUse, latest_activity
from gateway.errors import DesanetError
from gateway.model import Session
from gateway.ports import FirewallPort, NeighboursPort, SessionStorePort
from gateway.shaping.service import ShapingService

# The sessions' logger: the journal reads as it did before this code had its own module.
log = logging.getLogger("desanet.sessions")

MIN_SWEEP_GAP = 1.0  # seconds between two sweeps asked for by deadlines (bounds the cost)
LISTING_SHARE = 20  # ... and at least this many times the last listing of the kernel's sets
DEADLINE_SLACK = 0.05  # wake just after a deadline, never on the second before it
LEASE_RESYNC = 15.0  # s: the lease sets are written again this often even when unchanged


class Sweeper:
    def __init__(
        self,
        config: Callable[[], Config],
        store: SessionStorePort,
        firewall: FirewallPort,
        shaping: ShapingService,
        neighbours: NeighboursPort,
        clock: Clock,
        bus: EventBus,
        locks: SessionLocks,
        kernel: SessionKernel,
        usage: TimeOfUse,
    ) -> None:
        self._config = config
        self._store = store
        self._firewall = firewall
        self._shaping = shaping
        self._neighbours = neighbours
        self._clock = clock
        self._bus = bus
        self._locks = locks
        self._kernel = kernel
        self._usage = usage
        self._wakeup: Callable[[float], None] | None = None
        self._last_sweep = float("-inf")
        self._listing = 0.0  # seconds the last sweep's listing of the kernel's sets took
        self._leases_synced: dict[str, str] | None = None  # what the lease sets hold
        self._leases_synced_at = float("-inf")

    def set_wakeup(self, wakeup: Callable[[float], None]) -> None:
        """``wakeup(at)`` asks for a sweep at wall-clock time ``at`` (the reconciler's timer)."""
        self._wakeup = wakeup

    def wake_at(self, deadline: float) -> None:
        """Ask for a sweep just after ``deadline``, spaced from the last one (see Timing)."""
        if self._wakeup is not None:
            gap = max(MIN_SWEEP_GAP, LISTING_SHARE * self._listing)
            self._wakeup(max(deadline + DEADLINE_SLACK, self._last_sweep + gap))

    async def sweep(self) -> None:
        """End expired and idle sessions; drop kernel entries the store does not back."""
        await self._sync_leases()
        ended: list[tuple[Session, EndReason]] = []
        mark = self._kernel.revocations
        self._last_sweep = snapshot = self._clock.time()
        # The kernel's sets are listed before taking the lock: at 5,000 clients that
        # takes a while, and logins must not wait for it. Safe: a session started since
        # cannot be idle yet (see idle_sessions), an entry added since is not in the
        # snapshot, and revoking an entry that has gone meanwhile is a no-op.
        started = self._clock.monotonic()
        sent = await self._firewall.active_clients()
        downloads = await self._firewall.active_addresses()
        authorized = await self._firewall.authorized_clients()
        # Time of use counts both ways (a silent phone receiving a stream is charged for it,
        # usage.py), but idle is the client's own silence: a phone that left must not be
        # kept online by a stream still pushed to it (tests/integration/test_connections.py).
        active = latest_activity(sent, downloads, authorized)
        self._listing = self._clock.monotonic() - started
        async with self._locks.exclusive():
            now = self._clock.now()
            for s in await self._store.expire_sessions(now):
                await self._kernel.cut_off(s)
                ended.append((s, EndReason.EXPIRED))
            sessions = await self._store.active_sessions(now)
            # Out of auth4 is no idleness but a lost entry: restored below, not ended.
            listed = [s for s in sessions if (s.mac, s.ip) in authorized]
            # Counted before the idle ends: a session ending now is charged up to its last
            # packet either way (a stream it received until now included).
            spent = await self._count_use(sessions, active, started, now)
            for s in idle_sessions(listed, sent, now):
                await self._store.end_session(s.mac, now, EndReason.IDLE)
                await self._kernel.cut_off(s)
                ended.append((s, EndReason.IDLE))
            for s in spent:
                if await self._store.end_session(s.mac, now, EndReason.TIME_USED) is not None:
                    await self._kernel.cut_off(s)
                    ended.append((s, EndReason.TIME_USED))
            live = await self._store.active_sessions(now)
            live_ips = {s.ip for s in live}
            # An entry revoked since the snapshot (a logout meanwhile) is gone already.
            recent = self._kernel.revoked_since(mark)
            for mac, ip in stale_kernel_entries(live, authorized):
                if (mac, ip) in recent:
                    continue
                # The address's class and map entry belong to a live session if any.
                cls = None if ip in live_ips else self._shaping.ip_class_text(ip)
                await self._firewall.revoke(mac, ip, cls)
                if ip not in live_ips:
                    await self._kernel.end_connections(ip, redirected_only=False)
                log.warning("removed kernel authorization with no session: %s %s", mac, ip)
            for s in missing_kernel_entries(live, authorized, active, now, snapshot):
                await self._kernel.restore(s, now)
        for s, reason in ended:
            log.info("session of %s (%s) ended: %s", s.mac, s.ip, reason)
            self._bus.publish(SessionEnded(s.mac, s.ip, reason))
        deadline = next_deadline(live, active, snapshot)
        if self._usage.deadline is not None:  # a time of use running out
            deadline = min(deadline or self._usage.deadline, self._usage.deadline)
        if deadline is not None:
            self.wake_at(deadline)

    async def _count_use(self, sessions: list[Session], active: Mapping[tuple[str, str], int],
                         listed: float, now: int) -> list[Session]:
        """Time of use (gateway/core/usage.py); the sessions whose time is used up. A store
        failure is logged: the sweep's own work goes on, the time is counted next turn."""
        try:
            return await self._usage.tick(sessions, active, listed, now)
        except DesanetError as exc:
            log.error("could not count the vouchers' time of use: %s", exc)
            return []

    async def _sync_leases(self) -> None:
        """Give the kernel's lease sets (ARP, source and DHCP checks) the lease file's
        content when it changed, and every LEASE_RESYNC seconds anyway (a ruleset
        rebuilt from scratch starts empty). A failure is logged, never raised: the
        sweep's own work must go on."""
        try:
            leases = await self._neighbours.leases()
            due = self._clock.monotonic() - self._leases_synced_at >= LEASE_RESYNC
            if leases != self._leases_synced or due:
                await self._firewall.sync_leases(self._config(), leases)
                self._leases_synced = leases
                self._leases_synced_at = self._clock.monotonic()
        except DesanetError as exc:
            self._leases_synced = None  # try again at the next sweep
            log.error("could not write the DHCP leases into the firewall: %s", exc)


def next_deadline(
    sessions: Iterable[Session], active: Mapping[tuple[str, str], int], snapshot: float
) -> float | None:
    """The earliest wall-clock time at which one of ``sessions`` expires or may go idle.

    ``active`` maps a client to the whole seconds its idle window had left when
    the kernel's set was listed at ``snapshot``; the kernel truncates, so the
    window ends within the second after. A client not in it (logged in since)
    cannot be idle before its idle timeout has passed since its start.
    """
    best: float | None = None
    for s in sessions:
        left = active.get((s.mac, s.ip))
        idle = s.started + s.idle_timeout if left is None else snapshot + left + 1
        due = min(float(s.expires), max(idle, float(s.started + s.idle_timeout)))
        best = due if best is None else min(best, due)
    return best
