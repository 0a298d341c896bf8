"""MemoryStore: SessionStorePort in dicts, with the SQLite store's semantics (tests only).

tests/unit/test_store_contract.py runs one table of cases against this and
against :class:`gateway.store.db.AsyncStore` over a real SQLite file, so the
two cannot drift. The rules, as the SQL implements them:

- one open session per MAC: starting one ends ("replaced", at the new start)
  any open one of that MAC, even if it is past its expiry;
- "active" means open and ``expires > now``; ``end_session`` ends an open
  session even past its expiry; ``expire_sessions`` ends the open ones with
  ``expires <= now`` at their expiry time;
- lists of sessions are oldest first (start time, then insertion order);
- vouchers: ``add_vouchers`` is all or none (a duplicate code: StoreError),
  numbers each voucher 1..N within its batch and keeps one name per batch;
  redeeming binds the MAC, the first use starts the clock, a revoked or
  expired voucher raises VoucherError(reason), a full one "in_use", an unknown
  one "unknown"; revoking ends the voucher's open sessions.
- after ``close`` every call raises StoreError.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from gateway.errors import StoreError, VoucherError
from gateway.faults import FaultInjection
from gateway.model import PlanStamp, QuotaState, Session, Voucher, VoucherLimits

if TYPE_CHECKING:
    from gateway.ports import SessionStorePort


@dataclass(slots=True)
class _Row:
    id: int
    session: Session
    ended: int | None = None
    end_reason: str | None = None

    def open(self) -> bool:
        return self.ended is None

    def active(self, now: int) -> bool:
        return self.ended is None and self.session.expires > now


class MemoryStore(FaultInjection):
    def __init__(self, path: str = ":memory:") -> None:
        super().__init__()
        self.path = path
        self.rows: dict[int, _Row] = {}
        self._vouchers: dict[str, Voucher] = {}
        self._next_id = 1
        self._closed = False
        self.writes = 0  # committed write transactions

    def _use(self, method: str, changes: bool) -> None:
        if self._closed:
            raise StoreError(f"state database error in {self.path}: the store is closed")
        self._fault(method, changes)

    def _open_rows(self) -> list[_Row]:
        return [r for r in self.rows.values() if r.open()]

    @staticmethod
    def _oldest_first(rows: Iterable[_Row]) -> list[Session]:
        return [r.session for r in sorted(rows, key=lambda r: (r.session.started, r.id))]

    # -- sessions ------------------------------------------------------------

    async def start_session(self, session: Session) -> None:
        self._use("start_session", True)
        self._start(session)
        self.writes += 1

    def _start(self, session: Session) -> None:
        for row in self._open_rows():
            if row.session.mac == session.mac:
                row.ended, row.end_reason = session.started, "replaced"
        self.rows[self._next_id] = _Row(self._next_id, session)
        self._next_id += 1

    async def end_session(self, mac: str, now: int, reason: str) -> Session | None:
        self._use("end_session", True)
        self.writes += 1
        for row in self._open_rows():
            if row.session.mac == mac:
                row.ended, row.end_reason = now, reason
                code = row.session.voucher
                if code is not None and code in self._vouchers:  # the slot is free again
                    v = self._vouchers[code]
                    self._vouchers[code] = dataclasses.replace(
                        v, devices=tuple(d for d in v.devices if d != mac))
                return row.session
        return None

    async def login(
        self,
        mac: str,
        now: int,
        voucher_code: str | None,
        admit: Callable[[Session | None, int], None],
        build: Callable[[Voucher | None], Session],
    ) -> tuple[Session | None, Session]:
        """Same rules as the SQLite store's one transaction: nothing awaits in between,
        and a refusal raised before the writes changes nothing."""
        # Armed faults of the steps fire first, before anything is written: like the
        # SQLite transaction, a login that fails changes nothing.
        self._use("login", True)
        if voucher_code is not None:
            self._use("redeem_voucher", True)
        self._use("start_session", True)
        current = next((r.session for r in self.rows.values()
                        if r.session.mac == mac and r.active(now)), None)
        admit(current, sum(1 for r in self.rows.values() if r.active(now)))
        redeemed = None if voucher_code is None else self._redeemed(voucher_code, mac, now)
        session = build(redeemed)
        if redeemed is not None:
            self._vouchers[redeemed.code] = redeemed
        self._start(session)
        self.writes += 1  # one transaction
        return current, session

    async def active_session(self, mac: str, now: int) -> Session | None:
        self._use("active_session", False)
        for row in self.rows.values():
            if row.session.mac == mac and row.active(now):
                return row.session
        return None

    async def active_sessions(self, now: int) -> list[Session]:
        self._use("active_sessions", False)
        return self._oldest_first(r for r in self.rows.values() if r.active(now))

    async def count_active(self, now: int) -> int:
        self._use("count_active", False)
        return sum(1 for r in self.rows.values() if r.active(now))

    async def macs_on(self, ip: str, now: int) -> list[str]:
        self._use("macs_on", False)
        return sorted(r.session.mac for r in self.rows.values()
                      if r.session.ip == ip and r.active(now))

    async def ip_taken(self, ip: str, mac: str, now: int) -> bool:
        self._use("ip_taken", False)
        return any(r.session.ip == ip and r.session.mac != mac and r.active(now)
                   for r in self.rows.values())

    async def change_plan(self, mac: str, plan: str | None, now: int) -> Session | None:
        self._use("change_plan", True)
        self.writes += 1
        for row in self.rows.values():
            if row.session.mac == mac and row.active(now):
                row.session = dataclasses.replace(row.session, plan=plan)
                return row.session
        return None

    async def expire_sessions(self, now: int) -> list[Session]:
        self._use("expire_sessions", True)
        self.writes += 1
        due = [r for r in self._open_rows() if r.session.expires <= now]
        for row in due:
            row.ended, row.end_reason = row.session.expires, "expired"
        return self._oldest_first(due)

    async def prune_ended(self, before: int) -> int:
        self._use("prune_ended", True)
        self.writes += 1
        gone = [r.id for r in self.rows.values() if r.ended is not None and r.ended < before]
        for row_id in gone:
            del self.rows[row_id]
        return len(gone)

    # -- vouchers --------------------------------------------------------------

    async def add_vouchers(self, vouchers: Iterable[Voucher]) -> list[Voucher]:
        self._use("add_vouchers", True)
        new: dict[str, Voucher] = {}
        batches: dict[str, tuple[str, int]] = {}  # batch -> (name, last serial)
        for v in vouchers:
            if v.code in self._vouchers or v.code in new:
                raise StoreError(f"state database error in {self.path}: "
                                 f"UNIQUE constraint failed: vouchers.code ({v.code})")
            if v.batch not in batches:
                old = [o for o in self._vouchers.values() if o.batch == v.batch]
                batches[v.batch] = (max((o.batch_name for o in old), default=""),
                                    max((o.serial for o in old), default=0))
            name, last = batches[v.batch]
            batches[v.batch] = (v.batch_name or name, last + 1)
            new[v.code] = dataclasses.replace(v, first_used=None, revoked=False, devices=(),
                                              serial=last + 1)
        self._vouchers.update(new)
        for code, v in self._vouchers.items():  # one name per batch
            if v.batch in batches:
                self._vouchers[code] = dataclasses.replace(v, batch_name=batches[v.batch][0])
        self.writes += 1
        return [self._vouchers[code] for code in new]

    async def add_voucher_bytes(self, deltas: Mapping[str, tuple[int, int]],
                                states: Mapping[str, str]) -> None:
        self._use("add_voucher_bytes", True)
        for code, (down, up) in deltas.items():
            if down < 0 or up < 0:
                raise ValueError(f"negative byte delta for voucher {code}: {down}, {up}")
        for code, (down, up) in deltas.items():
            v = self._vouchers.get(code)
            if v is not None:
                self._vouchers[code] = dataclasses.replace(
                    v, bytes_down=v.bytes_down + down, bytes_up=v.bytes_up + up)
        for code, state in states.items():
            v = self._vouchers.get(code)
            if v is not None:
                self._vouchers[code] = dataclasses.replace(v, quota_state=cast(QuotaState, state))
        self.writes += 1

    async def voucher_usage(self, codes: Iterable[str]) -> dict[str, tuple[int, int]]:
        self._use("voucher_usage", False)
        return {c: (v.bytes_down, v.bytes_up) for c in set(codes)
                if (v := self._vouchers.get(c)) is not None}

    async def voucher(self, code: str) -> Voucher | None:
        self._use("voucher", False)
        return self._vouchers.get(code)

    async def vouchers(self, batch: str | None = None) -> list[Voucher]:
        self._use("vouchers", False)
        if batch is None:
            return sorted(self._vouchers.values(),
                          key=lambda v: (v.created, v.batch, v.serial, v.code))
        return sorted((v for v in self._vouchers.values() if v.batch == batch),
                      key=lambda v: (v.serial, v.code))

    async def revoke_voucher(self, code: str, now: int) -> tuple[Voucher, list[Session]]:
        self._use("revoke_voucher", True)
        voucher = self._vouchers.get(code)
        if voucher is None:
            raise VoucherError("unknown", f"voucher {code} does not exist")
        voucher = self._vouchers[code] = dataclasses.replace(voucher, revoked=True)
        ended = [r for r in self._open_rows() if r.session.voucher == code]
        for row in ended:
            row.ended, row.end_reason = now, "voucher_revoked"
        self.writes += 1
        return voucher, self._oldest_first(ended)

    async def release_voucher(self, code: str, mac: str | None, now: int
                              ) -> tuple[Voucher, list[Session]]:
        self._use("release_voucher", True)
        voucher = self._vouchers.get(code)
        if voucher is None:
            raise VoucherError("unknown", f"voucher {code} does not exist")
        ended = [r for r in self._open_rows()
                 if r.session.voucher == code and (mac is None or r.session.mac == mac)]
        for row in ended:
            row.ended, row.end_reason = now, "voucher_released"
        devices = () if mac is None else tuple(d for d in voucher.devices if d != mac)
        voucher = self._vouchers[code] = dataclasses.replace(voucher, devices=devices)
        self.writes += 1
        return voucher, self._oldest_first(ended)

    async def redeem_voucher(self, code: str, mac: str, now: int) -> Voucher:
        self._use("redeem_voucher", True)
        voucher = self._vouchers[code] = self._redeemed(code, mac, now)
        self.writes += 1
        return voucher

    async def add_used_seconds(self, used: Mapping[str, int],
                               plans: Collection[str] | None = None) -> list[Voucher]:
        self._use("add_used_seconds", True)
        self.writes += 1
        for code, seconds in used.items():
            if code in self._vouchers and seconds > 0:
                v = self._vouchers[code]
                self._vouchers[code] = dataclasses.replace(v, used_seconds=v.used_seconds + seconds)
        return [self._vouchers[c] for c in sorted(used) if c in self._vouchers
                and (plans is None or self._vouchers[c].plan in plans)]

    async def stamp_plans(self, stamps: Iterable[PlanStamp]) -> list[VoucherLimits]:
        self._use("stamp_plans", True)
        self.writes += 1
        before: list[VoucherLimits] = []
        for plan, validity, devices in stamps:
            for v in sorted(self._vouchers.values(), key=lambda v: v.code):
                new = (v.code, v.duration if validity is None else validity,
                       v.max_devices if devices is None else devices)
                if v.plan == plan and new != (v.code, v.duration, v.max_devices):
                    before.append((v.code, v.duration, v.max_devices))
                    self._set_limits(*new)
        return before

    async def restore_limits(self, limits: Iterable[VoucherLimits]) -> None:
        self._use("restore_limits", True)
        self.writes += 1
        for row in limits:
            self._set_limits(*row)

    def _set_limits(self, code: str, duration: int, max_devices: int) -> None:
        v = self._vouchers[code] = dataclasses.replace(
            self._vouchers[code], duration=duration, max_devices=max_devices)
        if v.first_used is not None:
            for row in self._open_rows():
                if row.session.voucher == code:
                    row.session = dataclasses.replace(row.session,
                                                      expires=v.first_used + v.duration)

    def _redeemed(self, code: str, mac: str, now: int) -> Voucher:
        """The voucher as redeeming it by ``mac`` would leave it (not stored yet)."""
        voucher = self._vouchers.get(code)
        if voucher is None:
            raise VoucherError("unknown")
        state = voucher.state(now)
        if state in ("revoked", "expired"):
            raise VoucherError(state)
        devices = voucher.devices
        if mac not in devices:
            if len(devices) >= voucher.max_devices:
                raise VoucherError("in_use", devices=voucher.max_devices)
            devices = tuple(sorted((*devices, mac)))
        first_used = now if voucher.first_used is None else voucher.first_used
        return dataclasses.replace(voucher, devices=devices, first_used=first_used)

    async def close(self) -> None:
        self._closed = True

    # -- for tests ---------------------------------------------------------------

    def end_reason(self, mac: str) -> str | None:
        """Why the MAC's most recent session ended (None: still open or never seen)."""
        for row in reversed(self.rows.values()):
            if row.session.mac == mac:
                return row.end_reason
        return None


def _check(x: MemoryStore) -> SessionStorePort:  # mypy: the fake satisfies the port
    return x
