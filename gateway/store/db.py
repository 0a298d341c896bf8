"""AsyncStore: SessionStorePort over the SQLite ``Store``, on the database worker.

Every method is one SQLite transaction (a write fsyncs) run on the one
database worker thread: the event loop never waits for the disk, and calls
run one at a time in the order they were made, so two awaits never
interleave inside a transaction. Errors are the ``Store``'s: StoreError for
the database, VoucherError(reason) for the voucher rules.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.kernel import DatabaseWorker
from gateway.model import PlanStamp, Session, Voucher, VoucherLimits
from gateway.store.sqlite import Store

if TYPE_CHECKING:
    from gateway.ports import SessionStorePort


class AsyncStore:
    """No method blocks the loop: each awaits the database worker, where SQLite blocks."""

    def __init__(self, store: Store, worker: DatabaseWorker) -> None:
        self.store = store
        self.worker = worker

    @property
    def path(self) -> str:
        return self.store.path

    # -- sessions ------------------------------------------------------------

    async def start_session(self, session: Session) -> None:
        """Record a new active session, ending ("replaced") an earlier one of the MAC.

        Awaits the database worker.
        """
        await self.worker.call(self.store.start_session, session)

    async def end_session(self, mac: str, now: int, reason: str) -> Session | None:
        """End the MAC's open session (even one past its expiry); None if there was none.

        Awaits the database worker.
        """
        return await self.worker.call(self.store.end_session, mac, now, reason)

    async def active_session(self, mac: str, now: int) -> Session | None:
        """Awaits the database worker (one SQLite read or fsynced write)."""
        return await self.worker.call(self.store.active_session, mac, now)

    async def active_sessions(self, now: int) -> list[Session]:
        """Open, unexpired sessions, oldest first. Awaits the database worker."""
        return await self.worker.call(self.store.active_sessions, now)

    async def count_active(self, now: int) -> int:
        """Awaits the database worker (one SQLite read or fsynced write)."""
        return await self.worker.call(self.store.count_active, now)

    async def macs_on(self, ip: str, now: int) -> list[str]:
        """The MACs with an active session on ``ip``. Awaits the database worker."""
        return await self.worker.call(self.store.macs_on, ip, now)

    async def ip_taken(self, ip: str, mac: str, now: int) -> bool:
        """Awaits the database worker (one SQLite read or fsynced write)."""
        return await self.worker.call(self.store.ip_taken, ip, mac, now)

    async def change_plan(self, mac: str, plan: str | None, now: int) -> Session | None:
        """Awaits the database worker (one SQLite read or fsynced write)."""
        return await self.worker.call(self.store.change_plan, mac, plan, now)

    async def expire_sessions(self, now: int) -> list[Session]:
        """End ("expired", at their expiry) sessions whose time ran out; return them.

        Awaits the database worker.
        """
        return await self.worker.call(self.store.expire_sessions, now)

    async def prune_ended(self, before: int) -> int:
        """Awaits the database worker (one SQLite read or fsynced write)."""
        return await self.worker.call(self.store.prune_ended, before)

    # -- vouchers --------------------------------------------------------------

    async def add_vouchers(self, vouchers: Iterable[Voucher]) -> list[Voucher]:
        """All or none: a duplicate code raises StoreError and adds nothing. Awaits the database worker."""
        return await self.worker.call(self.store.add_vouchers, list(vouchers))

    async def add_voucher_bytes(self, deltas: Mapping[str, tuple[int, int]],
                                states: Mapping[str, str]) -> None:
        """Add byte deltas and set quota states (one fsynced transaction). Awaits the
        database worker."""
        await self.worker.call(self.store.add_voucher_bytes, dict(deltas), dict(states))

    async def voucher_usage(self, codes: Iterable[str]) -> dict[str, tuple[int, int]]:
        """code -> (bytes down, bytes up). Awaits the database worker (one read)."""
        return await self.worker.call(self.store.voucher_usage, list(codes))

    async def voucher(self, code: str) -> Voucher | None:
        """Awaits the database worker (one SQLite read or fsynced write)."""
        return await self.worker.call(self.store.voucher, code)

    async def vouchers(self, batch: str | None = None) -> list[Voucher]:
        """Awaits the database worker (one SQLite read or fsynced write)."""
        return await self.worker.call(self.store.vouchers, batch)

    async def revoke_voucher(self, code: str, now: int) -> tuple[Voucher, list[Session]]:
        """Revoke and end its sessions; return the voucher and the sessions ended.

        Awaits the database worker.
        """
        return await self.worker.call(self.store.revoke_voucher, code, now)

    async def release_voucher(self, code: str, mac: str | None, now: int
                              ) -> tuple[Voucher, list[Session]]:
        """Free a device slot (or all) and end the sessions on it. Awaits the database worker."""
        return await self.worker.call(self.store.release_voucher, code, mac, now)

    async def login(
        self,
        mac: str,
        now: int,
        voucher_code: str | None,
        admit: Callable[[Session | None, int], None],
        build: Callable[[Voucher | None], Session],
    ) -> tuple[Session | None, Session]:
        """A whole login in one transaction. Awaits the database worker once (``admit``
        and ``build`` run there: they must be pure)."""
        return await self.worker.call(self.store.login, mac, now, voucher_code, admit, build)

    async def add_used_seconds(self, used: Mapping[str, int],
                               plans: Collection[str] | None = None) -> list[Voucher]:
        """Add seconds of use to vouchers; return them (of ``plans`` when given). Awaits
        the database worker."""
        return await self.worker.call(self.store.add_used_seconds, used, plans)

    async def stamp_plans(self, stamps: Iterable[PlanStamp]) -> list[VoucherLimits]:
        """Stamp plans' limits on their vouchers; return the old ones. Awaits the worker."""
        return await self.worker.call(self.store.stamp_plans, list(stamps))

    async def restore_limits(self, limits: Iterable[VoucherLimits]) -> None:
        """Undo :meth:`stamp_plans`. Awaits the database worker."""
        await self.worker.call(self.store.restore_limits, list(limits))

    async def redeem_voucher(self, code: str, mac: str, now: int) -> Voucher:
        """Bind ``mac`` (first use starts the clock) or raise VoucherError(reason).

        Awaits the database worker.
        """
        return await self.worker.call(self.store.redeem_voucher, code, mac, now)

    async def backup(self) -> Path | None:
        """A consistent copy into the backup directory (None when running in memory).

        Awaits the database worker; raises StoreError (the older backups stay)."""
        return await self.worker.call(self.store.backup)

    async def close(self) -> None:
        """Awaits the database worker (one SQLite read or fsynced write)."""
        await self.worker.call(self.store.close)


def _check(x: AsyncStore) -> SessionStorePort:  # mypy: the adapter satisfies its port
    return x
