"""The village office's queries on the state database: the sales report, imported
codes, and the free trial's minutes per device per day.

Beside :class:`gateway.store.sqlite.Store` on the same database (one transaction per
public method, the same worker thread in the daemon). The report is SQL aggregates:
one pass per grouping over the vouchers that were created or first used in the
range, never a Python loop over rows. Its shape is documented in
docs/vouchers-office.md ("Report JSON") and built by :func:`gateway.core.office.report_json`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from gateway.kernel import DatabaseWorker
from gateway.model import Voucher
from gateway.model_office import ReportQuery
from gateway.store.sqlite import Store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trial_use (
    mac TEXT NOT NULL,
    day TEXT NOT NULL,
    seconds INTEGER NOT NULL,
    until INTEGER NOT NULL,
    last INTEGER NOT NULL,
    PRIMARY KEY (mac, day)
);
CREATE INDEX IF NOT EXISTS sessions_mac_started ON sessions(mac, started);
CREATE INDEX IF NOT EXISTS vouchers_first_used ON vouchers(first_used);
CREATE INDEX IF NOT EXISTS vouchers_created ON vouchers(created);
"""


def _row(q: ReportQuery) -> str:
    """The aggregates of one report row. A sold voucher is over when its wall-clock time
    from first use ran out, its quota was cut, or it used the time of use its plan sells;
    revoked ones count on their own. (A CASE over the plans, not a JSON lookup per row:
    ~3x faster at 100,000 vouchers.)"""
    over = (f"(first_used + duration <= :now OR quota_state = 'cut' OR "
            f"used_seconds >= {q.time_of_use_sql()})")
    return f"""
    count(*) FILTER (WHERE c_in) AS created,
    count(*) FILTER (WHERE u_in) AS sold,
    count(*) FILTER (WHERE u_in AND NOT revoked AND NOT {over}) AS active,
    count(*) FILTER (WHERE u_in AND NOT revoked AND {over}) AS expired,
    count(*) FILTER (WHERE u_in AND revoked) AS revoked,
    count(*) FILTER (WHERE c_in AND first_used IS NULL AND NOT revoked) AS unused,
    count(*) FILTER (WHERE u_in AND imported) AS imported,
    coalesce(sum(price) FILTER (WHERE u_in AND NOT imported), 0) AS revenue,
    coalesce(sum(bytes_down) FILTER (WHERE u_in), 0) AS bytes_down,
    coalesce(sum(bytes_up) FILTER (WHERE u_in), 0) AS bytes_up,
    coalesce(sum(used_seconds) FILTER (WHERE u_in), 0) AS used_seconds
"""


ROW_KEYS = ("created", "sold", "active", "expired", "revoked", "unused", "imported",
            "revenue", "bytes_down", "bytes_up", "used_seconds")

_SCOPE = """
WITH v AS (
    SELECT plan, batch, batch_name, seller, created, first_used, duration, quota_state,
           used_seconds, revoked, imported, price, bytes_down, bytes_up,
           (created >= :start AND created < :end) AS c_in,
           (first_used IS NOT NULL AND first_used >= :start AND first_used < :end) AS u_in
    FROM vouchers
    WHERE (:batch IS NULL OR batch = :batch) AND (:seller IS NULL OR seller = :seller)
      AND ((created >= :start AND created < :end)
           OR (first_used >= :start AND first_used < :end))
)
"""


def _rows(db: sqlite3.Connection, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    cur = db.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [{k: (0 if v is None and k in ROW_KEYS else v) for k, v in zip(names, r, strict=True)}
            for r in cur.fetchall()]


class OfficeStore:
    """Synchronous, like Store: the daemon calls it on the database worker."""

    def __init__(self, store: Store) -> None:
        self._db = store.database
        with self._db.tx() as db:
            for statement in _statements():
                db.execute(statement)

    # -- report ---------------------------------------------------------------------

    def span(self, batch: str | None, seller: str | None) -> tuple[int, int] | None:
        """The earliest and latest creation or first use among the chosen vouchers."""
        with self._db.read() as db:
            row = db.execute(
                "SELECT min(min(created), coalesce(min(first_used), min(created))), "
                "max(max(created), coalesce(max(first_used), max(created))) FROM vouchers "
                "WHERE (:batch IS NULL OR batch = :batch) AND (:seller IS NULL OR seller = :seller)",
                {"batch": batch, "seller": seller}).fetchone()
        return None if row[0] is None else (int(row[0]), int(row[1]))

    def report(self, q: ReportQuery) -> dict[str, Any]:
        """Totals and the breakdowns by plan, batch, seller and day (one read transaction,
        so the parts agree)."""
        p = q.params()
        row = _row(q)
        with self._db.read() as db:
            by_plan = _rows(db, f"{_SCOPE} SELECT plan, {row} FROM v GROUP BY plan "
                            "ORDER BY plan IS NOT NULL, plan", p)
            by_batch = _rows(db, f"{_SCOPE} SELECT batch, max(batch_name) AS batch_name, "
                             f"min(created) AS first_created, {row} FROM v GROUP BY batch "
                             "ORDER BY first_created, batch", p)
            by_seller = _rows(db, f"{_SCOPE} SELECT seller, {row} FROM v GROUP BY seller "
                              "ORDER BY seller", p)
            by_day = self._by_day(db, q, p) if q.days else []
        for b in by_batch:
            b.pop("first_created", None)
        # the totals are the sums of the (few) plan rows: one scan of the vouchers less
        totals = {k: sum(int(r[k]) for r in by_plan) for k in ROW_KEYS}
        return {"totals": totals, "by_plan": by_plan, "by_batch": by_batch,
                "by_seller": by_seller, "by_day": by_day}

    @staticmethod
    def _by_day(db: sqlite3.Connection, q: ReportQuery, p: dict[str, Any]
                ) -> list[dict[str, Any]]:
        """Created, sold and revenue per local day. The days come in as one JSON parameter;
        each joins the vouchers through the index on created / first_used (a range scan
        per day, not a scan of every voucher per day)."""
        days = {**p, "days": json.dumps(q.days)}
        table = ("WITH d AS (SELECT json_extract(value, '$[0]') AS day, "
                 "json_extract(value, '$[1]') AS s, json_extract(value, '$[2]') AS e "
                 "FROM json_each(:days))")
        where = "(:batch IS NULL OR v.batch = :batch) AND (:seller IS NULL OR v.seller = :seller)"
        made = dict(db.execute(
            f"{table} SELECT d.day, count(*) FROM d JOIN vouchers v "
            f"ON v.created >= d.s AND v.created < d.e WHERE {where} GROUP BY d.day", days,
        ).fetchall())
        sold = {r[0]: (r[1], r[2]) for r in db.execute(
            f"{table} SELECT d.day, count(*), "
            "sum(CASE WHEN v.imported THEN 0 ELSE v.price END) FROM d JOIN vouchers v "
            f"ON v.first_used >= d.s AND v.first_used < d.e WHERE {where} GROUP BY d.day", days,
        ).fetchall()}
        return [{"day": label, "created": int(made.get(label, 0)),
                 "sold": int(sold.get(label, (0, 0))[0]),
                 "revenue": int(sold.get(label, (0, 0))[1] or 0)}
                for label, _, _ in q.days]

    # -- import ---------------------------------------------------------------------

    def import_vouchers(self, vouchers: Sequence[Voucher]) -> tuple[list[Voucher], set[str]]:
        """Store codes sold elsewhere, all or none, marked imported, numbered on in their
        batch: (the stored vouchers, set()); or, when some codes are stored already,
        ([], those codes) and nothing is added (checked and written in one transaction)."""
        codes = [v.code for v in vouchers]
        with self._db.tx() as db:
            taken = _existing(db, codes)
            if taken or not vouchers:
                return [], taken
            batch = vouchers[0].batch
            last = int(db.execute("SELECT coalesce(max(serial), 0) FROM vouchers WHERE batch=?",
                                  (batch,)).fetchone()[0])
            stored = [replace(v, serial=last + i + 1, first_used=None, revoked=False,
                              devices=()) for i, v in enumerate(vouchers)]
            db.executemany(
                "INSERT INTO vouchers (code, duration, plan, created, batch, max_devices, "
                "batch_name, serial, price, seller, imported) VALUES (?,?,?,?,?,?,?,?,?,?,1)",
                [(v.code, v.duration, v.plan, v.created, v.batch, v.max_devices, v.batch_name,
                  v.serial, v.price, v.seller) for v in stored])
        return stored, set()

    # -- trial ----------------------------------------------------------------------

    def trial_used(self, mac: str, day: str, now: int) -> int:
        """Seconds of trial ``mac`` has used on local ``day`` ("2026-12-02") by ``now``."""
        with self._db.read() as db:
            row = db.execute("SELECT seconds, until, last FROM trial_use WHERE mac=? AND day=?",
                             (mac, day)).fetchone()
        return 0 if row is None else _used(row[0], row[1], row[2], now)

    def trial_grant(self, mac: str, day: str, now: int, allowance: int) -> int:
        """Grant ``mac`` what is left of its ``allowance`` of trial seconds on ``day``;
        return the seconds granted (0: used up). One transaction: what a grant gives is
        counted when it is made, so neither a restart nor a crash gives a minute twice.
        When the previous grant still has time left (its session was replaced, or the
        login it was for was refused), that rest is given back; see :func:`_used`."""
        with self._db.tx() as db:
            row = db.execute("SELECT seconds, until, last FROM trial_use WHERE mac=? AND day=?",
                             (mac, day)).fetchone()
            used = 0 if row is None else _used(row[0], row[1], row[2], now)
            grant = max(0, allowance - used)
            if grant:
                db.execute(
                    "INSERT INTO trial_use (mac, day, seconds, until, last) VALUES (?,?,?,?,?) "
                    "ON CONFLICT(mac, day) DO UPDATE SET seconds=excluded.seconds, "
                    "until=excluded.until, last=excluded.last",
                    (mac, day, used + grant, now + grant, grant))
        return grant

    def last_session(self, mac: str) -> tuple[str | None, str | None, int | None] | None:
        """(voucher, end reason, ended) of ``mac``'s latest session, None if it had none."""
        with self._db.read() as db:
            row = db.execute("SELECT voucher, end_reason, ended FROM sessions WHERE mac=? "
                             "ORDER BY started DESC, id DESC LIMIT 1", (mac,)).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def prune_trials(self, before_day: str) -> int:
        with self._db.tx() as db:
            return db.execute("DELETE FROM trial_use WHERE day < ?", (before_day,)).rowcount


def _used(seconds: int, until: int, last: int, now: int) -> int:
    """Trial seconds used: all granted, less what the last grant still had at ``now``
    when ``now`` falls inside that grant. A clock stepped back before the grant began
    gives nothing back; one stepped forward counts the jump as used."""
    left = until - now if until - last <= now < until else 0
    return max(0, seconds - left)


def _statements() -> Iterable[str]:
    return (s.strip() for s in _SCHEMA.split(";") if s.strip())


def _existing(db: sqlite3.Connection, codes: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(codes), 500):
        part = codes[i:i + 500]
        found.update(c for (c,) in db.execute(
            f"SELECT code FROM vouchers WHERE code IN ({','.join('?' * len(part))})", part))
    return found


__all__ = ["ROW_KEYS", "AsyncOfficeStore", "OfficeStore", "ReportQuery"]


class AsyncOfficeStore:
    """OfficeStore on the database worker (as AsyncStore is for Store): the event loop
    never waits for SQLite."""

    def __init__(self, office: OfficeStore, worker: DatabaseWorker) -> None:
        self.office = office
        self.worker = worker

    async def report(self, query: ReportQuery) -> dict[str, Any]:
        return await self.worker.call(self.office.report, query)

    async def span(self, batch: str | None, seller: str | None) -> tuple[int, int] | None:
        return await self.worker.call(self.office.span, batch, seller)

    async def import_vouchers(self, vouchers: list[Voucher]) -> tuple[list[Voucher], set[str]]:
        return await self.worker.call(self.office.import_vouchers, vouchers)

    async def trial_used(self, mac: str, day: str, now: int) -> int:
        return await self.worker.call(self.office.trial_used, mac, day, now)

    async def trial_grant(self, mac: str, day: str, now: int, allowance: int) -> int:
        return await self.worker.call(self.office.trial_grant, mac, day, now, allowance)

    async def last_session(self, mac: str) -> tuple[str | None, str | None, int | None] | None:
        return await self.worker.call(self.office.last_session, mac)

    async def prune_trials(self, before_day: str) -> int:
        return await self.worker.call(self.office.prune_trials, before_day)
