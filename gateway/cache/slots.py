"""Upstream-fetch slots per villager: a phone's misses are served a few at a time.

Each LAN address may have ``limit`` upstream fetches in flight. Further ones
wait in arrival order for one of its slots (a phone browser opens six
connections per host, and a page's images must not get 429s); only beyond
``waiting_limit`` waiting is the answer :class:`ClientBusy` (429). A fill the
villager walked away from still holds its slot until it is complete, so opening
many misses and hanging up cannot make the gateway download more at once for
one phone. A waiter whose villager hung up before its turn (the HTTP server
does not cancel its handler) fetches nothing: its turn passes on and it ends
with :class:`ClientGone`. Pure asyncio bookkeeping; nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from gateway.errors import Refused

DEFAULT_MISSES_PER_CLIENT = 6
DEFAULT_WAITING_PER_CLIENT = 64


class ClientBusy(Refused):
    """One villager already has ``limit`` upstream fetches in flight and ``waiting`` more
    waiting for one of them."""

    def __init__(self, client: str, limit: int, waiting: int = 0) -> None:
        self.client, self.limit, self.waiting = client, limit, waiting
        super().__init__("client_busy", f"{client} already has {limit} upstream fetches in "
                                        f"flight and {waiting} waiting")


class ClientGone(Exception):
    """The villager went away while its request waited for a slot: nothing was fetched."""


Gone = Callable[[], bool]  # True once nobody waits for the request's answer any more


class _Connected(Protocol):
    @property
    def transport(self) -> asyncio.BaseTransport | None: ...


def disconnected(request: _Connected) -> Gone:
    """``gone`` for a request of the HTTP server: its connection is closed or closing."""
    def gone() -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()
    return gone


class FetchSlots:
    def __init__(self, limit: int = DEFAULT_MISSES_PER_CLIENT,
                 waiting_limit: int = DEFAULT_WAITING_PER_CLIENT) -> None:
        self.limit = limit
        self.waiting_limit = waiting_limit
        self._fetching: Counter[str] = Counter()  # fetches in flight per LAN address
        # Per LAN address, the requests waiting for one of its slots, first come first served.
        self._waiting: dict[str, deque[tuple[asyncio.Future[None], Gone | None]]] = {}

    def in_flight(self) -> int:
        return sum(self._fetching.values())

    def waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    @contextlib.asynccontextmanager
    async def hold(self, client: str, gone: Gone | None = None) -> AsyncIterator[None]:
        """Hold one of ``client``'s slots for the block (waits for one; raises ClientBusy
        when too many already wait, ClientGone when ``gone()`` says the villager left
        while it waited)."""
        await self._acquire(client, gone)
        try:
            yield
        finally:
            self._release(client)

    async def _acquire(self, client: str, gone: Gone | None) -> None:
        queue = self._waiting.get(client)
        if not queue and self._fetching[client] < self.limit:
            self._fetching[client] += 1
            return
        if queue is None:
            queue = self._waiting[client] = deque()
        if len(queue) >= self.waiting_limit:
            for item in [item for item in queue if item[1] is not None and item[1]()]:
                queue.remove(item)  # their villagers left: they make room
                item[0].set_exception(ClientGone())
        if len(queue) >= self.waiting_limit:
            raise ClientBusy(client, self.limit, len(queue))
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append((turn, gone))
        try:
            await turn  # a finishing fetch hands its slot over (see _release)
        except BaseException:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._release(client)  # handed over as the wait was cancelled: pass it on
            elif not turn.done() or turn.cancelled():
                with contextlib.suppress(ValueError):
                    queue.remove((turn, gone))
                if not queue and self._waiting.get(client) is queue:
                    del self._waiting[client]
            raise

    def _release(self, client: str) -> None:
        queue = self._waiting.get(client)
        while queue:
            turn, gone = queue.popleft()
            if not queue:
                del self._waiting[client]
            if turn.done():
                continue
            if gone is not None and gone():
                turn.set_exception(ClientGone())  # nobody to fetch for: the next in line
                continue
            turn.set_result(None)  # the slot goes to the next in line; the count stays
            return
        self._fetching[client] -= 1
        if self._fetching[client] <= 0:
            del self._fetching[client]
