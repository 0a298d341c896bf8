"""Who may change sessions and kernel state at the same time.

Theory of operation
-------------------
A login waits on two workers in turn: the database worker (its fsynced
transaction), then the kernel worker (its nft and tc calls). With one
plain lock around all of it, a second login waits for both, and the two
workers take turns idling. :class:`SessionLocks` lets changes to
*different* clients run at once, so one login's nft call overlaps the next
one's fsync, while keeping the two orders that matter:

* **client(mac, ip)**: logins, logouts, plan changes. Many may hold it; two
  that name the same MAC or the same address (a DHCP lease that moved to
  another phone shares one shaping class) run one after the other, in the
  order they asked.
* At most ``max_clients_at_once`` client changes run at the same time (4): each
  queues work on the two workers, and a portal page's own lookups wait behind
  whatever is queued there; a small bound keeps the overlap that matters (one
  nft call beside one fsync) without letting a burst of 100 logins fill the
  queues ahead of a villager's page.
* **exclusive()**: the sweep, and converge's steps that rebuild the kernel
  from the session list (a rebuild must not miss a login that is half-way
  between the store and the kernel). It waits until no client change is in
  progress and, while it waits, new client changes wait behind it, so a
  stream of logins cannot starve a reload.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager


class SessionLocks:
    def __init__(self, max_clients_at_once: int = 4) -> None:
        self._slots = asyncio.Semaphore(max_clients_at_once)
        self._cond = asyncio.Condition()
        self._clients = 0  # client changes in progress
        self._exclusive = False
        self._exclusive_waiting = 0
        self._keys: dict[str, tuple[asyncio.Lock, int]] = {}  # key -> (lock, users)

    @asynccontextmanager
    async def client(self, *keys: str) -> AsyncIterator[None]:
        """Hold while changing the sessions and kernel state of the client named by ``keys``
        (its MAC and address)."""
        async with self._cond:
            await self._cond.wait_for(lambda: not self._exclusive and not self._exclusive_waiting)
            self._clients += 1
        try:
            async with AsyncExitStack() as stack:
                for key in sorted(set(keys)):  # one global order: no two changes deadlock
                    await stack.enter_async_context(self._key(key))
                await stack.enter_async_context(self._slots)
                yield
        finally:
            async with self._cond:
                self._clients -= 1
                self._cond.notify_all()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold while no client change may run (the sweep, rebuilding the kernel state)."""
        async with self._cond:
            self._exclusive_waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._exclusive and not self._clients)
            finally:
                self._exclusive_waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            async with self._cond:
                self._exclusive = False
                self._cond.notify_all()

    @asynccontextmanager
    async def _key(self, key: str) -> AsyncIterator[None]:
        lock, users = self._keys.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._keys[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock_now, users_now = self._keys[key]
            if users_now <= 1:
                del self._keys[key]
            else:
                self._keys[key] = (lock_now, users_now - 1)

    @property
    def busy(self) -> bool:
        """True while any change holds or waits (for tests and status)."""
        return bool(self._clients or self._exclusive or self._exclusive_waiting or self._keys)
