"""A portal visit's check that the kernel still lets an online client out.

The store may say a client is online while the kernel has lost its entries (a
hand edit, a crash of an older version). The sweep finds that for everyone
(sweep.py); a portal visit (``SessionService.identify``: the status page, the
captive-portal API, a login that finds the client online) finds it at once for
that one client, so the portal says "online" only when the kernel lets the
client out. It asks the kernel for the client's entries at most every
``ENTRY_CHECK_INTERVAL`` seconds per client, and re-adds the session as it is in
the store. A session in ``auth4`` but out of ``active4`` after its first idle
window is idle, not lost: the sweep ends it.
"""

from __future__ import annotations

import logging

from gateway.clock import Clock
from gateway.core.locks import SessionLocks
from gateway.core.session_kernel import SessionKernel
from gateway.errors import DesanetError
from gateway.model import Session
from gateway.ports import FirewallPort, MacIp, SessionStorePort

# The sessions' logger: the journal reads as it did before this code had its own module.
log = logging.getLogger("desanet.sessions")

ENTRY_CHECK_INTERVAL = 10.0  # a client's kernel entries are checked at most this often on visits
ENTRY_CHECK_MEMORY = 4096  # clients remembered as checked (then the oldest half is forgotten)


class EntryCheck:
    def __init__(
        self,
        store: SessionStorePort,
        firewall: FirewallPort,
        clock: Clock,
        locks: SessionLocks,
        kernel: SessionKernel,
    ) -> None:
        self._store = store
        self._firewall = firewall
        self._clock = clock
        self._locks = locks
        self._kernel = kernel
        self._checked: dict[MacIp, float] = {}  # client -> monotonic time found whole

    async def check(self, session: Session) -> None:
        """Put back the client's kernel entries when the kernel lost them; never raises
        (a portal page must not fail for it: the sweep tries again)."""
        key = (session.mac, session.ip)
        mono = self._clock.monotonic()
        if mono - self._checked.get(key, float("-inf")) < ENTRY_CHECK_INTERVAL:
            return
        try:
            authorized, active = await self._firewall.client_entry(session.mac, session.ip)
        except DesanetError as exc:  # the table itself is gone: the reconciler rebuilds it
            log.warning("could not look up the kernel entries of %s (%s): %s",
                        session.mac, session.ip, exc)
            self._kernel.suspect()
            return
        now = self._clock.now()
        if authorized and (active or now - session.started >= session.idle_timeout):
            if len(self._checked) >= ENTRY_CHECK_MEMORY:
                oldest = sorted(self._checked, key=self._checked.__getitem__)
                for k in oldest[:ENTRY_CHECK_MEMORY // 2]:
                    del self._checked[k]
            self._checked[key] = mono
            return  # whole, or idle (the sweep ends it)
        async with self._locks.client(session.mac, session.ip):
            current = await self._store.active_session(session.mac, now)
            if current is None or current.ip != session.ip:
                return  # ended or moved meanwhile: nothing of this session to restore
            try:  # again under the lock: a login's kernel write may just have landed
                if all(await self._firewall.client_entry(current.mac, current.ip)):
                    return
            except DesanetError:
                pass  # the restore below says what is wrong
            await self._kernel.restore(current, now)
