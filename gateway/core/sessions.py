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
the sweep (sweep.py) turns them into ended sessions, events and ended
connections, every few seconds and, through ``set_wakeup``, just after the next
deadline it knows of.

Where the parts live: this module holds the logins, logouts and plan changes;
session_kernel.py the kernel side they share (restore, cut off, end a client's
connections); sweep.py the periodic sweep and its timing (expiry, idle, time of
use, stale and lost entries, the lease sets); entry_check.py a portal visit's
check of one client's entries; session_rules.py the pure rules all of them use.

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
from collections.abc import Callable

from gateway.clock import Clock
from gateway.config.schema import Config
from gateway.config.units import format_left
from gateway.core.entry_check import EntryCheck
from gateway.core.events import EndReason, EventBus, PlanChanged, SessionEnded, SessionStarted
from gateway.core.locks import SessionLocks
from gateway.core.quota import meter_for, voucher_used
from gateway.core.returning import ReturningDevices
from gateway.core.session_kernel import SessionKernel
from gateway.core.session_rules import leased_addresses, new_session, takeover_refused
from gateway.core.sweep import Sweeper
from gateway.core.trial import TrialService
from gateway.core.usage import TimeOfUse
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

# Refused.reason when a manual grant would replace a villager's voucher session.
VOUCHER_SESSION = "voucher_session"
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
        self._quota_cut: dict[str, str] = {}  # MAC -> voucher, cut off by its quota
        self.usage = TimeOfUse(config, store)  # plans: vouchers' time of use
        self._kernel = SessionKernel(config, store, firewall, shaping, clock, self.locks)
        self._sweeper = Sweeper(config, store, firewall, shaping, neighbours, clock, bus,
                                self.locks, self._kernel, self.usage)
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
        self._sweeper.set_wakeup(wakeup)

    def set_kernel_suspect(self, suspect: Callable[[], None]) -> None:
        """``suspect()`` asks for a check of the whole kernel state now (the kernel
        refused a login: its table or trees may have gone). Must not block."""
        self._kernel.set_suspect(suspect)

    def now(self) -> int:
        return self.clock.now()

    def sweep_soon(self) -> None:
        """Ask for a sweep now (a plan changed: sessions may be over their new limits)."""
        self._sweeper.wake_at(self.clock.time())

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
        self._sweeper.wake_at(min(session.expires, session.started + session.idle_timeout))
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
        """End expired and idle sessions; drop kernel entries the store does not back
        (sweep.py). The reconciler runs it every few seconds and at deadlines."""
        await self._sweeper.sweep()
