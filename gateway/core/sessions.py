"""The session service: who is online, and the kernel state that lets them out.

Theory of operation
-------------------
The store is the source of truth for sessions; the kernel sets and HTB
classes are a cache of it. Every change is written to the store first and
then to the kernel:

* login:  store.start_session -> shaping.add -> firewall.authorize. A crash
          in between is healed at start, when converge rebuilds the kernel
          from the store: a session the live table never held gets a fresh
          idle window there (it is no idle one), so every session the store
          holds is then fully in the kernel.
* logout: store.end_session -> firewall.revoke -> end its connections ->
          shaping.remove. A crash in between leaves a kernel entry the store no
          longer backs; the sweep removes it, so nobody regains access.

Connections: a login ends the client's connections the portal redirect
caught, a cut-off ends its flows (session_kernel.py says why).

Healing: whatever else takes a live session's entry out of the kernel (a hand
edit, a crash of an older version), two places put it back. The sweep compares
the store with the sets it lists anyway; a portal visit (``identify``,
entry_check.py) asks the kernel for that one client's entries. Both re-add the
session as it is in the store. A refused login also asks the reconciler to
check the whole kernel state at once (``set_kernel_suspect``).

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

:class:`~gateway.core.locks.SessionLocks` (shared with the reconciler's
converge) lets changes of different clients run at once, orders two changes
of the same client, and gives the sweep and a rebuild of the kernel state the
sessions to themselves, so a reload never rebuilds the ruleset from a session
list that a concurrent login has already made stale. Every port
call is awaited: kernel and SQLite work runs on their worker threads.

This is the portal's backend (:class:`gateway.portal.backend.PortalBackend`).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping

from gateway.clock import Clock
from gateway.config.schema import Config
from gateway.config.units import format_left
from gateway.core.entry_check import EntryCheck
from gateway.core.events import EndReason, EventBus, PlanChanged, SessionEnded, SessionStarted
from gateway.core.locks import SessionLocks
from gateway.core.quota import meter_for, voucher_used
from gateway.core.returning import ReturningDevices
from gateway.core.session_kernel import SessionKernel
from gateway.core.session_rules import (
    idle_sessions,
    leased_addresses,
    missing_kernel_entries,
    new_session,
    stale_kernel_entries,
    takeover_refused,
)
from gateway.core.trial import TrialService
from gateway.core.usage import TimeOfUse, latest_activity
from gateway.errors import (
    AmbiguousClient,
    DesanetError,
    Invalid,
    NotFound,
    PortalDenied,
    Refused,
    VoucherError,
)
from gateway.model import ClientView, Session, SessionSource, Voucher
from gateway.ports import FirewallPort, NeighboursPort, SessionStorePort
from gateway.shaping.service import ShapingService

log = logging.getLogger("desanet.sessions")

MIN_SWEEP_GAP = 1.0  # seconds between two sweeps asked for by deadlines (bounds the cost)
LISTING_SHARE = 20  # ... and at least this many times the last listing of the kernel's sets
DEADLINE_SLACK = 0.05  # wake just after a deadline, never on the second before it
# Refused.reason when a manual grant would replace a villager's voucher session.
VOUCHER_SESSION = "voucher_session"
LEASE_RESYNC = 15.0  # s: the lease sets are written again this often even when unchanged
QUOTA_CUT_MEMORY = 4096  # MACs remembered as cut off by their quota (then all are forgotten)


class SessionService:
    def __init__(
        self,
        config: Callable[[], Config],
        store: SessionStorePort,
        firewall: FirewallPort,
        shaping: ShapingService,
        neighbours: NeighboursPort,
        clock: Clock,
        bus: EventBus,
        locks: SessionLocks | None = None,
    ) -> None:
        self._config = config
        self.store = store
        self.firewall = firewall
        self.shaping = shaping
        self.neighbours = neighbours
        self.clock = clock
        self.bus = bus
        self.locks = locks or SessionLocks()
        self._wakeup: Callable[[float], None] | None = None
        self._last_sweep = float("-inf")
        self._listing = 0.0  # seconds the last sweep's listing of the kernel's sets took
        self._leases_synced: dict[str, str] | None = None  # what the lease sets hold
        self._leases_synced_at = float("-inf")
        self._quota_cut: dict[str, str] = {}  # MAC -> voucher, cut off by its quota
        self.usage = TimeOfUse(config, store)  # plans: vouchers' time of use
        self._kernel = SessionKernel(config, store, firewall, shaping, clock, self.locks)
        self._entry_check = EntryCheck(store, firewall, clock, self.locks, self._kernel)
        # Since the daemon started, for telemetry (counts only): villagers' logins through the
        # portal, and voucher codes refused (well-formed codes that were wrong, used up, ...).
        self.logins = 0
        self.voucher_failures = 0
        # office (Step 11), set by the daemon: the terms button's free trial, and phones
        # let in again with their auto_login voucher (gateway/core/trial.py, returning.py)
        self.trial: TrialService | None = None
        self.returning: ReturningDevices | None = None

    def set_wakeup(self, wakeup: Callable[[float], None]) -> None:
        """``wakeup(at)`` asks for a sweep at wall-clock time ``at`` (the reconciler's timer)."""
        self._wakeup = wakeup

    def set_kernel_suspect(self, suspect: Callable[[], None]) -> None:
        """``suspect()`` asks for a check of the whole kernel state now (the kernel
        refused a login: its table or trees may have gone). Must not block."""
        self._kernel.set_suspect(suspect)

    def _wake_at(self, deadline: float) -> None:
        if self._wakeup is not None:
            gap = max(MIN_SWEEP_GAP, LISTING_SHARE * self._listing)
            self._wakeup(max(deadline + DEADLINE_SLACK, self._last_sweep + gap))

    def now(self) -> int:
        return self.clock.now()

    def sweep_soon(self) -> None:
        """Ask for a sweep now (a plan changed: sessions may be over their new limits)."""
        self._wake_at(self.clock.time())

    # -- portal backend ---------------------------------------------------------------

    async def identify(self, ip: str) -> ClientView:
        """Who is behind this LAN address right now. Raises StoreError.

        A client the store says is online whose kernel entries are missing gets
        them back here (see "Healing" above): the portal says "online" only when
        the kernel lets the client out.
        """
        mac = await self.neighbours.mac_of(ip)
        session = await self.store.active_session(mac, self.now()) if mac else None
        if session is not None and session.ip != ip:
            session = None
        if session is not None:
            await self._entry_check.check(session)
        elif mac is not None and self.returning is not None:
            session = await self._readmit(mac, ip)
        voucher = None
        if session is not None and session.voucher is not None:
            voucher = await self.store.voucher(session.voucher)
        elif session is None and mac is not None and mac in self._quota_cut:
            # quota: the portal tells a phone cut off for its voucher's data why
            voucher = await self.store.voucher(self._quota_cut[mac])
        return ClientView(ip=ip, mac=mac, session=session, voucher=voucher)

    async def _readmit(self, mac: str, ip: str) -> Session | None:
        """A returning phone's login with its auto_login voucher (returning.py); None when
        it is not one, or the login is refused (the portal then shows the login page)."""
        assert self.returning is not None
        code = await self.returning.voucher_for(mac)
        if code is None:
            return None
        try:
            session = await self.authorize(mac, ip, "voucher", voucher_code=code)
        except DesanetError as exc:
            log.info("returning device %s (%s) not let in again: %s", mac, ip, exc)
            return None
        self.returning.readmitted += 1
        log.info("returning device %s (%s) let in again without the portal", mac, ip)
        return session

    def note_quota_cut(self, mac: str, code: str) -> None:
        """Remember that ``mac``'s session ends for its voucher's used-up quota, so the
        portal can say so (until it logs in again; in memory: after a restart the portal
        says it when the code is typed again)."""
        if len(self._quota_cut) >= QUOTA_CUT_MEMORY:
            self._quota_cut.clear()
        self._quota_cut[mac] = code

    async def login_terms(self, client: ClientView) -> Session:
        """Authorize after the terms were accepted. Raises PortalDenied."""
        if self._config().portal.mode == "voucher":
            raise PortalDenied("mode")
        if client.mac is None:
            raise PortalDenied("no_mac")
        duration = plan = None
        if self.trial is not None and self.trial.enabled():  # a day's free minutes
            duration, plan = await self.trial.grant(client.mac)
        session = await self.authorize(client.mac, client.ip, "terms", duration, plan)
        self.logins += 1
        return session

    async def login_voucher(self, client: ClientView, code: str) -> Session:
        """Redeem a canonical voucher code. Raises VoucherError(reason) or PortalDenied."""
        if self._config().portal.mode == "terms":
            raise PortalDenied("mode")
        if client.mac is None:
            raise PortalDenied("no_mac")
        try:
            session = await self.authorize(client.mac, client.ip, "voucher", voucher_code=code)
        except VoucherError:
            self.voucher_failures += 1
            raise
        self.logins += 1
        return session

    async def logout(self, client: ClientView) -> None:
        if client.mac is not None:
            await self.end(client.mac, EndReason.LOGOUT)

    # -- sessions ------------------------------------------------------------------------

    async def authorize(
        self,
        mac: str,
        ip: str | None,
        source: SessionSource,
        duration: int | None = None,
        plan: str | None = None,
        voucher_code: str | None = None,
        keep_voucher: bool = False,
    ) -> Session:
        """Start (or replace) ``mac``'s session and open the kernel for it.

        ``ip`` None means "look it up" (DHCP lease, then neighbour table).
        Raises Invalid (plan, ip), NotFound (no address known), AmbiguousClient
        (no ``ip`` and the MAC holds several leases), PortalDenied (blocked, full,
        in_use: a portal login would end the MAC's live session on another
        address that is still leased to it, see ``takeover_refused``),
        VoucherError, Refused("voucher_session") with ``keep_voucher`` when the
        current session is a voucher's, and FirewallError/ShapingError when the kernel refuses
        (the session is then ended again).
        """
        cfg = self._config()
        self.check_plan(plan)
        leases = await self.neighbours.leases() if ip is None or source != "manual" else {}
        if ip is None:
            several = leased_addresses(leases, mac)
            if len(several) > 1:
                raise AmbiguousClient(mac, several)
            ip = await self.neighbours.ip_of(mac)
            if not ip:
                raise NotFound(f"no IPv4 address known for {mac} (no DHCP lease, no neighbour "
                               'entry); pass "ip" too')
        self._check_client_ip(cfg, ip)
        if mac in cfg.access.blocked_macs:
            raise PortalDenied("blocked")
        client_ip = ip
        async with self.locks.client(mac, ip):
            now = self.now()

            def admit(current: Session | None, active: int) -> None:
                if takeover_refused(current, client_ip, source, leases):
                    raise PortalDenied("in_use")
                if current is None and active >= cfg.portal.max_clients:
                    raise PortalDenied("full")
                # Checked inside the login's transaction: a voucher login that lands
                # just before cannot be replaced unseen.
                if keep_voucher and current is not None and current.voucher is not None:
                    raise Refused(VOUCHER_SESSION, f"{mac} is online with voucher "
                                  f"{current.voucher} ({format_left(current.remaining(now))} "
                                  "left); replacing that session needs force")

            redeemed: list[Voucher] = []

            def build(voucher: Voucher | None) -> Session:
                if voucher is not None:
                    redeemed.append(voucher)  # its bytes so far start its quota (meter)
                return new_session(cfg, mac, client_ip, now, source, voucher, duration, plan)

            # One store transaction for the whole login: one trip to the database worker.
            current, session = await self.store.login(mac, now, voucher_code, admit, build)
            if current is not None:
                self.bus.publish(SessionEnded(current.mac, current.ip, EndReason.REPLACED))
            try:
                await self.shaping.add(session)
                meter = meter_for(cfg, session,
                                  voucher_used(redeemed[-1] if redeemed else None))
                await self.firewall.authorize(session, now, self.shaping.class_text(session),
                                              meter=meter)
            except DesanetError:
                self._kernel.suspect()  # the table or a tree may be gone: check at once
                await self.store.end_session(mac, now, EndReason.KERNEL_REFUSED)
                await self._kernel.cut_off(session)
                self.bus.publish(SessionEnded(mac, ip, EndReason.KERNEL_REFUSED))
                raise
            self._quota_cut.pop(mac, None)
            # After the sets: a connection tracked again from here is not redirected.
            await self._kernel.end_connections(ip, redirected_only=True)
        self._wake_at(min(session.expires, session.started + session.idle_timeout))
        if self.returning is not None:
            self.returning.forget(mac)  # a new latest session: look it up afresh
        log.info("authorized %s (%s) via %s until %s", mac, ip, source, session.expires)
        self.bus.publish(SessionStarted(mac, ip, source, session.plan, session.voucher,
                                        session.expires))
        if current is not None and current.ip != ip:
            # The phone came back on another address: its old entry goes, under that
            # address's own lock. A failure here must not fail the login that worked:
            # the store no longer backs the old entry, so the sweep removes it.
            try:
                await self._kernel.cut_off_locked(current)
            except DesanetError as exc:
                log.error("could not remove the old entry of %s (%s): %s; the sweep will",
                          mac, current.ip, exc)
        return session

    async def end(self, mac: str, reason: EndReason) -> Session:
        """End ``mac``'s session now. Raises NotFound when it has none."""
        async with self.locks.client(mac):
            session = await self.store.end_session(mac, self.now(), reason)
        if session is None:
            raise NotFound(f"{mac} has no active session")
        await self._kernel.cut_off_locked(session)
        log.info("ended session of %s (%s): %s", mac, session.ip, reason)
        self.bus.publish(SessionEnded(mac, session.ip, reason))
        return session

    async def change_plan(self, mac: str, plan: str | None) -> Session:
        """Move a live client to another plan; its connections are not touched.

        Raises Invalid (unknown plan), NotFound (no session).
        """
        self.check_plan(plan)
        async with self.locks.client(mac):
            session = await self.store.change_plan(mac, plan, self.now())
            if session is None:
                raise NotFound(f"{mac} has no active session")
            await self.shaping.add(session)
            if session.voucher is not None:  # quota: the new plan's limits, at once
                used = await self.store.voucher_usage([session.voucher])
                await self.firewall.authorize(
                    session, self.now(), self.shaping.class_text(session),
                    meter=meter_for(self._config(), session, used.get(session.voucher, (0, 0))))
        log.info("plan of %s is now %s", mac, plan or "default")
        self.bus.publish(PlanChanged(mac, plan))
        return session

    async def cut_off_ended(self, sessions: list[Session], reason: EndReason) -> None:
        """Kernel side of sessions the store has already ended (e.g. a revoked voucher)."""
        for s in sessions:
            await self._kernel.cut_off_locked(s)
        for s in sessions:
            self.bus.publish(SessionEnded(s.mac, s.ip, reason))

    async def active(self) -> list[Session]:
        return await self.store.active_sessions(self.now())

    async def count_active(self) -> int:
        return await self.store.count_active(self.now())

    def check_plan(self, plan: str | None) -> None:
        plans = self._config().shaping.plans
        if plan is not None and plan not in plans:
            raise Invalid("plan", plan, f"a plan in shaping.plans (known: "
                          f"{', '.join(plans) or 'none'}) or null for the default plan",
                          next(iter(plans), None))

    @staticmethod
    def _check_client_ip(cfg: Config, ip: str) -> None:
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError:
            raise Invalid("ip", ip, "an IPv4 address", '"10.42.0.100"') from None
        iface = cfg.network.lan_address
        lan = iface.network
        if addr in (lan.network_address, lan.broadcast_address, iface.ip):
            raise Invalid("ip", ip, "a client's address, not the gateway's or the LAN's own",
                          f'"{lan.network_address + 100}"')
        # Outside the LAN is allowed with shaping off (bench/portal_auth.py
        # authorizes more clients than the lab's /24 holds); it matches nothing.
        if cfg.shaping.enabled and addr not in lan:
            raise Invalid("ip", ip, f"an address inside the LAN {lan} (with shaping on a "
                          "client's class id comes from its address)",
                          f'"{lan.network_address + 100}"')

    # -- sweeping ----------------------------------------------------------------------

    async def sweep(self) -> None:
        """End expired and idle sessions; drop kernel entries the store does not back."""
        await self._sync_leases()
        ended: list[tuple[Session, EndReason]] = []
        mark = self._kernel.revocations
        self._last_sweep = snapshot = self.clock.time()
        # The kernel's sets are listed before taking the lock: at 5,000 clients that
        # takes a while, and logins must not wait for it. Safe: a session started since
        # cannot be idle yet (see idle_sessions), an entry added since is not in the
        # snapshot, and revoking an entry that has gone meanwhile is a no-op.
        started = self.clock.monotonic()
        sent = await self.firewall.active_clients()
        downloads = await self.firewall.active_addresses()
        authorized = await self.firewall.authorized_clients()
        # Time of use counts both ways (a silent phone receiving a stream is charged for it,
        # usage.py), but idle is the client's own silence: a phone that left must not be
        # kept online by a stream still pushed to it (tests/integration/test_connections.py).
        active = latest_activity(sent, downloads, authorized)
        self._listing = self.clock.monotonic() - started
        async with self.locks.exclusive():
            now = self.now()
            for s in await self.store.expire_sessions(now):
                await self._kernel.cut_off(s)
                ended.append((s, EndReason.EXPIRED))
            sessions = await self.store.active_sessions(now)
            # Out of auth4 is no idleness but a lost entry: restored below, not ended.
            listed = [s for s in sessions if (s.mac, s.ip) in authorized]
            # Counted before the idle ends: a session ending now is charged up to its last
            # packet either way (a stream it received until now included).
            spent = await self._count_use(sessions, active, started, now)
            for s in idle_sessions(listed, sent, now):
                await self.store.end_session(s.mac, now, EndReason.IDLE)
                await self._kernel.cut_off(s)
                ended.append((s, EndReason.IDLE))
            for s in spent:
                if await self.store.end_session(s.mac, now, EndReason.TIME_USED) is not None:
                    await self._kernel.cut_off(s)
                    ended.append((s, EndReason.TIME_USED))
            live = await self.store.active_sessions(now)
            live_ips = {s.ip for s in live}
            # An entry revoked since the snapshot (a logout meanwhile) is gone already.
            recent = self._kernel.revoked_since(mark)
            for mac, ip in stale_kernel_entries(live, authorized):
                if (mac, ip) in recent:
                    continue
                # The address's class and map entry belong to a live session if any.
                cls = None if ip in live_ips else self.shaping.ip_class_text(ip)
                await self.firewall.revoke(mac, ip, cls)
                if ip not in live_ips:
                    await self._kernel.end_connections(ip, redirected_only=False)
                log.warning("removed kernel authorization with no session: %s %s", mac, ip)
            for s in missing_kernel_entries(live, authorized, active, now, snapshot):
                await self._kernel.restore(s, now)
        for s, reason in ended:
            log.info("session of %s (%s) ended: %s", s.mac, s.ip, reason)
            self.bus.publish(SessionEnded(s.mac, s.ip, reason))
        deadline = next_deadline(live, active, snapshot)
        if self.usage.deadline is not None:  # a time of use running out
            deadline = min(deadline or self.usage.deadline, self.usage.deadline)
        if deadline is not None:
            self._wake_at(deadline)

    async def _count_use(self, sessions: list[Session], active: Mapping[tuple[str, str], int],
                         listed: float, now: int) -> list[Session]:
        """Time of use (gateway/core/usage.py); the sessions whose time is used up. A store
        failure is logged: the sweep's own work goes on, the time is counted next turn."""
        try:
            return await self.usage.tick(sessions, active, listed, now)
        except DesanetError as exc:
            log.error("could not count the vouchers' time of use: %s", exc)
            return []

    async def _sync_leases(self) -> None:
        """Give the kernel's lease sets (ARP, source and DHCP checks) the lease file's
        content when it changed, and every LEASE_RESYNC seconds anyway (a ruleset
        rebuilt from scratch starts empty). A failure is logged, never raised: the
        sweep's own work must go on."""
        try:
            leases = await self.neighbours.leases()
            due = self.clock.monotonic() - self._leases_synced_at >= LEASE_RESYNC
            if leases != self._leases_synced or due:
                await self.firewall.sync_leases(self._config(), leases)
                self._leases_synced = leases
                self._leases_synced_at = self.clock.monotonic()
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
