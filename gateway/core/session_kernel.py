"""The kernel side of sessions: the firewall entries, HTB classes and tracked
connections that a session's store record stands for.

:class:`SessionKernel` is what the logins and logouts of
:class:`~gateway.core.sessions.SessionService`, its sweep and its portal-visit
check share: put a live session back into the kernel, take an ended one out,
and end an address's connections. It decides nothing about who may be online;
the store does.

Connections: the kernel's verdicts are bound to tracked connections, so a
login also ends the client's connections the portal redirect caught (a
browser's keep-alive would stay on the portal), and a cut-off ends its flows
(a UDP stream in progress would flow on; see ``FirewallPort.end_connections``).
Failing to do so is logged, not raised: the sets, the truth of who may pass,
are already right.

Revocations are numbered as they happen: the sweep lists the kernel's sets
before it takes the lock, so its snapshot may still show an entry revoked
meanwhile, and :meth:`SessionKernel.revoked_since` tells it which ones are no
stale leftovers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.clock import Clock
from gateway.config.schema import Config
from gateway.core.locks import SessionLocks
from gateway.core.quota import meter_for
from gateway.errors import DesanetError
from gateway.model import Session
from gateway.ports import FirewallPort, MacIp, SessionStorePort
from gateway.shaping.service import ShapingService

# The sessions' logger: the journal reads as it did before this code had its own module.
log = logging.getLogger("desanet.sessions")


class SessionKernel:
    def __init__(
        self,
        config: Callable[[], Config],
        store: SessionStorePort,
        firewall: FirewallPort,
        shaping: ShapingService,
        clock: Clock,
        locks: SessionLocks,
    ) -> None:
        self._config = config
        self._store = store
        self._firewall = firewall
        self._shaping = shaping
        self._clock = clock
        self._locks = locks
        self._suspect: Callable[[], None] | None = None
        # Kernel entries revoked here, by a running count (see revoked_since).
        self.revocations = 0
        self._revoked: dict[MacIp, int] = {}

    def set_suspect(self, suspect: Callable[[], None]) -> None:
        """``suspect()`` asks for a check of the whole kernel state now. Must not block."""
        self._suspect = suspect

    def suspect(self) -> None:
        """The kernel refused something: its table or trees may have gone."""
        if self._suspect is not None:
            self._suspect()

    def revoked_since(self, mark: int) -> set[MacIp]:
        """The entries revoked after ``mark`` (an earlier ``revocations``); older ones are
        forgotten, as the caller's snapshot was taken after them."""
        self._revoked = {key: seq for key, seq in self._revoked.items() if seq > mark}
        return set(self._revoked)

    async def restore(self, session: Session, now: int) -> None:
        """Re-add a live session's classes and entries (call holding its lock or the
        exclusive one). A refusal is logged, never raised."""
        try:
            await self._shaping.add(session)
            used = await self._store.voucher_usage([session.voucher] if session.voucher else [])
            meter = meter_for(self._config(), session,
                              used.get(session.voucher or "", (0, 0)))
            await self._firewall.authorize(session, now, self._shaping.class_text(session),
                                          meter=meter)
        except DesanetError as exc:
            log.error("could not restore the kernel entries of %s (%s): %s",
                      session.mac, session.ip, exc)
            self.suspect()
            return
        log.warning("restored the kernel entries of %s (%s): the kernel had lost them "
                    "while the session was live", session.mac, session.ip)

    async def cut_off_locked(self, session: Session) -> None:
        """:meth:`cut_off` under the lock of the session's MAC and address."""
        async with self._locks.client(session.mac, session.ip):
            await self.cut_off(session)

    async def cut_off(self, session: Session) -> None:
        """Kernel side of a session the store has ended: firewall first, then its classes.

        Call it holding the lock of the session's MAC and address (or the
        exclusive one), so no login on either can interleave. The store says
        what is still needed: when the same phone already has a newer session on
        this address (it logged in again at once), the entries are that
        session's now and stay; when another phone's live session holds the
        address (its DHCP lease moved), that session keeps the address's class
        and map entry, and only this MAC's authorization goes.
        """
        users = await self._store.macs_on(session.ip, self._clock.now())
        if session.mac in users:
            return
        class_text = None if users else self._shaping.class_text(session)
        meter = None if users else meter_for(self._config(), session)
        await self._firewall.revoke(session.mac, session.ip, class_text, meter=meter)
        if not users:  # else the address's connections are the other phone's now
            await self.end_connections(session.ip, redirected_only=False)
        # Counted once the kernel has done it: a sweep snapshot taken before this
        # point may still show the entry, one taken after cannot.
        self.revocations += 1
        self._revoked[(session.mac, session.ip)] = self.revocations
        if class_text is not None:
            await self._shaping.remove(session)

    async def end_connections(self, ip: str, redirected_only: bool) -> None:
        """End the address's tracked connections; a refusal is logged, never raised."""
        try:
            await self._firewall.end_connections(ip, redirected_only)
        except DesanetError as exc:
            log.error("could not end the tracked connections of %s: %s", ip, exc)
