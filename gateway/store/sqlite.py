"""SQLite state store: sessions and vouchers.

WAL mode with synchronous=FULL: a committed transaction survives kill -9 and
power loss. Each public method is one transaction, so a crash leaves either
the old or the new state, never half of an operation.

The database holds unused voucher codes, which are worth money, so the file
(and SQLite's -wal/-shm companions, which copy its mode) is root-only (0600).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from gateway.errors import VoucherError
from gateway.model import PlanStamp, Session, Voucher, VoucherLimits
from gateway.sqlitedb import Database
from gateway.store import quota_sql
from gateway.store.backup import KEEP, backup
from gateway.store.heal import Heal
from gateway.store.plan_sql import (
    add_used_seconds,
    set_limits,
    stamp_plans,
)

# 2: vouchers.batch_name and vouchers.serial; 3: the vouchers' usage and sale (plans).
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    mac TEXT NOT NULL,
    ip TEXT NOT NULL,
    started INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    idle_timeout INTEGER NOT NULL,
    source TEXT NOT NULL,
    voucher TEXT,
    plan TEXT,
    ended INTEGER,
    end_reason TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS sessions_one_active_per_mac
    ON sessions(mac) WHERE ended IS NULL;
CREATE INDEX IF NOT EXISTS sessions_active_ip ON sessions(ip) WHERE ended IS NULL;
CREATE TABLE IF NOT EXISTS vouchers (
    code TEXT PRIMARY KEY,
    duration INTEGER NOT NULL,
    plan TEXT,
    created INTEGER NOT NULL,
    batch TEXT NOT NULL,
    max_devices INTEGER NOT NULL DEFAULT 1,
    first_used INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0,
    batch_name TEXT NOT NULL DEFAULT '',
    serial INTEGER NOT NULL DEFAULT 0,
    used_seconds INTEGER NOT NULL DEFAULT 0,
    bytes_down INTEGER NOT NULL DEFAULT 0,
    bytes_up INTEGER NOT NULL DEFAULT 0,
    quota_state TEXT NOT NULL DEFAULT '',
    price INTEGER NOT NULL DEFAULT 0,
    seller TEXT NOT NULL DEFAULT '',
    imported INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS voucher_devices (
    code TEXT NOT NULL REFERENCES vouchers(code),
    mac TEXT NOT NULL,
    PRIMARY KEY (code, mac)
);
"""

_SESSION_COLS = "mac, ip, started, expires, idle_timeout, source, voucher, plan"
_VOUCHER_COLS = ("code, duration, plan, created, batch, max_devices, first_used, revoked, "
                 "batch_name, serial, used_seconds, bytes_down, bytes_up, quota_state, price, "
                 "seller, imported")

# Columns added after version 1, with what an older database gets. Each is added only
# when missing, so a database that an older desanet opened again (an A/B update rolled
# back, which resets user_version) upgrades again without error.
_ADDED_VOUCHER_COLUMNS = (
    ("batch_name", "TEXT NOT NULL DEFAULT ''"),
    ("serial", "INTEGER NOT NULL DEFAULT 0"),
    # 3 (Step 11, plans): usage and sale of each voucher
    ("used_seconds", "INTEGER NOT NULL DEFAULT 0"),
    ("bytes_down", "INTEGER NOT NULL DEFAULT 0"),
    ("bytes_up", "INTEGER NOT NULL DEFAULT 0"),
    ("quota_state", "TEXT NOT NULL DEFAULT ''"),
    ("price", "INTEGER NOT NULL DEFAULT 0"),
    ("seller", "TEXT NOT NULL DEFAULT ''"),
    ("imported", "INTEGER NOT NULL DEFAULT 0"),
)


class Store:
    """Sessions and vouchers; each public method is one transaction.

    Synchronous: every method blocks (SQLite, and an fsync for each write).
    The daemon holds :class:`gateway.store.db.AsyncStore`, which runs them on
    the one database worker thread.
    """

    def __init__(self, path: str | Path, backups: str | Path | None = None,
                 heal: Heal | None = None) -> None:
        """``backups``: where :meth:`backup` writes and a damaged or missing file is
        restored from (default: ``backups/`` beside the file). Never refuses to open
        a damaged file: see :mod:`gateway.store.heal` (``heal.problem`` says what was done)."""
        self.path = str(path)
        self.backups = Path(backups) if backups is not None else Path(self.path).parent / "backups"
        self.heal = heal or Heal(self.backups)
        self._database = Database(self.path, _SCHEMA, SCHEMA_VERSION, "state database",
                                  foreign_keys=True, healing=self.heal)
        self._tx = self._database.tx
        self._read = self._database.read
        self._migrate()

    def _migrate(self) -> None:
        """Bring a database written by an older desanet up to this schema, in one
        transaction: old vouchers keep working, unnamed, numbered in creation order."""
        with self._tx() as db:
            have = {row[1] for row in db.execute("PRAGMA table_info(vouchers)")}
            missing = [(name, decl) for name, decl in _ADDED_VOUCHER_COLUMNS if name not in have]
            for name, decl in missing:
                db.execute(f"ALTER TABLE vouchers ADD COLUMN {name} {decl}")
            if any(name == "serial" for name, _ in missing):
                # rowid order is insertion order, i.e. the order the codes were generated.
                db.execute(
                    "UPDATE vouchers SET serial = (SELECT count(*) FROM vouchers AS o "
                    "WHERE o.batch = vouchers.batch AND o.rowid <= vouchers.rowid)"
                )

    def close(self) -> None:
        self._database.close()

    @property
    def database(self) -> Database:
        """The open database, for stores beside this one (gateway/store/office.py)."""
        return self._database

    @property
    def memory_only(self) -> bool:
        """Running on an in-memory copy (the file could not be written at open)."""
        return self._database.memory

    def backup(self, keep: int = KEEP) -> Path | None:
        """A consistent, checked copy into :attr:`backups`, keeping the newest ``keep``;
        None (nothing written) when running in memory. Raises StoreError."""
        if self._database.memory:
            return None
        return backup(self._database, self.backups, keep)

    # -- sessions ---------------------------------------------------------

    def start_session(self, session: Session) -> None:
        """Record a new active session, ending any earlier one of the same MAC."""
        with self._tx() as db:
            self._start(db, session)

    def login(
        self,
        mac: str,
        now: int,
        voucher_code: str | None,
        admit: Callable[[Session | None, int], None],
        build: Callable[[Voucher | None], Session],
    ) -> tuple[Session | None, Session]:
        """A whole login in ONE transaction (one fsync, one trip to the database worker).

        Reads ``mac``'s active session and the number of active sessions and
        gives them to ``admit`` (which raises to refuse), redeems the voucher
        if a code is given, records the session ``build`` makes from it, and
        returns (the session it replaced, the new one). Anything raised rolls
        the whole transaction back: a refused login changes nothing.
        """
        with self._tx() as db:
            row = db.execute(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE mac=? AND ended IS NULL AND expires>?",
                (mac, now),
            ).fetchone()
            current = Session(*row) if row else None
            count = db.execute(
                "SELECT count(*) FROM sessions WHERE ended IS NULL AND expires>?", (now,)
            ).fetchone()[0]
            admit(current, int(count))
            voucher = None if voucher_code is None else self._redeem(db, voucher_code, mac, now)
            session = build(voucher)
            self._start(db, session)
        return current, session

    @staticmethod
    def _start(db: sqlite3.Connection, session: Session) -> None:
        db.execute(
            "UPDATE sessions SET ended=?, end_reason='replaced' WHERE mac=? AND ended IS NULL",
            (session.started, session.mac),
        )
        db.execute(
            f"INSERT INTO sessions ({_SESSION_COLS}) VALUES (?,?,?,?,?,?,?,?)",
            (session.mac, session.ip, session.started, session.expires,
             session.idle_timeout, session.source, session.voucher, session.plan),
        )

    def end_session(self, mac: str, now: int, reason: str) -> Session | None:
        """End the active session of ``mac``; return it, or None if there was none.

        A voucher session also frees its device slot: ``max_devices`` counts
        phones using the voucher at once, not every phone that ever did (a
        villager who logs out may hand the voucher on, or come back with a new
        random MAC). The voucher's clock keeps running.
        """
        with self._tx() as db:
            row = db.execute(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE mac=? AND ended IS NULL", (mac,)
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE sessions SET ended=?, end_reason=? WHERE mac=? AND ended IS NULL",
                (now, reason, mac),
            )
            session = Session(*row)
            if session.voucher is not None:
                db.execute("DELETE FROM voucher_devices WHERE code=? AND mac=?",
                           (session.voucher, mac))
            return session

    def end_sessions(self, macs: Iterable[str], now: int, reason: str) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE sessions SET ended=?, end_reason=? WHERE mac=? AND ended IS NULL",
                [(now, reason, mac) for mac in macs],
            )

    def active_session(self, mac: str, now: int) -> Session | None:
        with self._read() as db:
            row = db.execute(
                f"SELECT {_SESSION_COLS} FROM sessions "
                "WHERE mac=? AND ended IS NULL AND expires>?",
                (mac, now),
            ).fetchone()
        return Session(*row) if row else None

    def count_active(self, now: int) -> int:
        with self._read() as db:
            row = db.execute(
                "SELECT count(*) FROM sessions WHERE ended IS NULL AND expires>?", (now,)
            ).fetchone()
        return int(row[0])

    def ip_taken(self, ip: str, mac: str, now: int) -> bool:
        """True when another MAC than ``mac`` has an active session on ``ip``.

        After a DHCP lease moves to a new phone, the old phone's session may
        still hold the address until it idles out; both share one shaping
        class (its id comes from the address).
        """
        with self._read() as db:
            row = db.execute(
                "SELECT 1 FROM sessions WHERE ip=? AND mac!=? AND ended IS NULL AND expires>? "
                "LIMIT 1",
                (ip, mac, now),
            ).fetchone()
        return row is not None

    def macs_on(self, ip: str, now: int) -> list[str]:
        """The MACs with an active session on ``ip`` (usually none or one; two while a
        DHCP lease that moved to another phone is still held by the old one)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT mac FROM sessions WHERE ip=? AND ended IS NULL AND expires>? ORDER BY mac",
                (ip, now),
            ).fetchall()
        return [str(mac) for (mac,) in rows]

    def active_sessions(self, now: int) -> list[Session]:
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE ended IS NULL AND expires>? "
                "ORDER BY started, id",
                (now,),
            ).fetchall()
        return [Session(*r) for r in rows]

    def change_plan(self, mac: str, plan: str | None, now: int) -> Session | None:
        """Set the plan of ``mac``'s active session; return it (None: no session)."""
        with self._tx() as db:
            db.execute(
                "UPDATE sessions SET plan=? WHERE mac=? AND ended IS NULL AND expires>?",
                (plan, mac, now),
            )
        return self.active_session(mac, now)

    def prune_ended(self, before: int) -> int:
        """Forget sessions that ended before ``before``; return how many went."""
        with self._tx() as db:
            return db.execute(
                "DELETE FROM sessions WHERE ended IS NOT NULL AND ended < ?", (before,)
            ).rowcount

    def expire_sessions(self, now: int) -> list[Session]:
        """Mark sessions whose time ran out as ended; return them."""
        with self._tx() as db:
            rows = db.execute(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE ended IS NULL AND expires<=? "
                "ORDER BY started, id",
                (now,),
            ).fetchall()
            db.execute(
                "UPDATE sessions SET ended=expires, end_reason='expired' "
                "WHERE ended IS NULL AND expires<=?",
                (now,),
            )
        return [Session(*r) for r in rows]

    # -- vouchers ---------------------------------------------------------

    def add_vouchers(self, vouchers: Iterable[Voucher]) -> list[Voucher]:
        """Store new vouchers, all or none; return them as stored.

        Serials continue their batch (1..N in the order given). A batch has one name:
        vouchers given a name rename their batch, unnamed ones join it under its name.
        """
        stored: list[Voucher] = []
        with self._tx() as db:
            batches: dict[str, tuple[str, int]] = {}  # batch -> (name, last serial)
            for v in vouchers:
                if v.batch not in batches:
                    name, last = db.execute(
                        "SELECT coalesce(max(batch_name), ''), coalesce(max(serial), 0) "
                        "FROM vouchers WHERE batch=?", (v.batch,),
                    ).fetchone()
                    batches[v.batch] = (str(name), int(last))
                name, last = batches[v.batch]
                name = v.batch_name or name
                batches[v.batch] = (name, last + 1)
                stored.append(replace(v, batch_name=name, serial=last + 1, first_used=None,
                                      revoked=False, devices=()))
            db.executemany(
                "INSERT INTO vouchers (code, duration, plan, created, batch, max_devices, "
                "batch_name, serial, used_seconds, bytes_down, bytes_up, quota_state, price, "
                "seller, imported) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(v.code, v.duration, v.plan, v.created, v.batch, v.max_devices, v.batch_name,
                  v.serial, v.used_seconds, v.bytes_down, v.bytes_up, v.quota_state, v.price,
                  v.seller, int(v.imported)) for v in stored],
            )
            for batch, (name, _) in batches.items():
                db.execute("UPDATE vouchers SET batch_name=? WHERE batch=?", (name, batch))
        return [replace(v, batch_name=batches[v.batch][0]) for v in stored]

    def add_voucher_bytes(self, deltas: Mapping[str, tuple[int, int]],
                          states: Mapping[str, str]) -> None:
        """Add byte deltas to vouchers and set quota states, in one transaction
        (:mod:`gateway.store.quota_sql`). Raises ValueError on a negative delta."""
        with self._tx() as db:
            quota_sql.add_voucher_bytes(db, deltas, states)

    def voucher_usage(self, codes: Iterable[str]) -> dict[str, tuple[int, int]]:
        """code -> (bytes down, bytes up) of the vouchers that exist."""
        with self._read() as db:
            return quota_sql.voucher_usage(db, codes)

    def voucher(self, code: str) -> Voucher | None:
        with self._read() as db:
            return self._voucher(db, code)

    def vouchers(self, batch: str | None = None) -> list[Voucher]:
        with self._read() as db:
            if batch is None:
                codes = db.execute("SELECT code FROM vouchers ORDER BY created, batch, serial, code")
            else:
                codes = db.execute(
                    "SELECT code FROM vouchers WHERE batch=? ORDER BY serial, code", (batch,)
                )
            found = [self._voucher(db, c) for (c,) in codes.fetchall()]
        return [v for v in found if v is not None]

    def revoke_voucher(self, code: str, now: int) -> tuple[Voucher, list[Session]]:
        """Revoke a voucher and end the sessions it opened.

        Return the revoked voucher and the sessions this call ended (oldest
        first), so the caller can cut them off in the kernel. Revoking twice
        is allowed and ends nothing the second time. Raises VoucherError
        ("unknown") for a code that does not exist.
        """
        with self._tx() as db:
            if self._voucher(db, code) is None:
                raise VoucherError("unknown", f"voucher {code} does not exist")
            db.execute("UPDATE vouchers SET revoked=1 WHERE code=?", (code,))
            rows = db.execute(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE voucher=? AND ended IS NULL "
                "ORDER BY started, id",
                (code,),
            ).fetchall()
            db.execute(
                "UPDATE sessions SET ended=?, end_reason='voucher_revoked' "
                "WHERE voucher=? AND ended IS NULL",
                (now, code),
            )
            voucher = self._voucher(db, code)
        assert voucher is not None
        return voucher, [Session(*r) for r in rows]

    def release_voucher(self, code: str, mac: str | None, now: int
                        ) -> tuple[Voucher, list[Session]]:
        """Free the voucher's device slot of ``mac`` (None: every slot) and end the
        sessions on it, so another phone may use the voucher. Its clock keeps running
        (time already used is not given back). Raises VoucherError("unknown").
        """
        with self._tx() as db:
            if self._voucher(db, code) is None:
                raise VoucherError("unknown", f"voucher {code} does not exist")
            which = "" if mac is None else " AND mac=?"
            args: tuple[str, ...] = (code,) if mac is None else (code, mac)
            rows = db.execute(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE voucher=? AND ended IS NULL{which} "
                "ORDER BY started, id", args,
            ).fetchall()
            db.execute(
                f"UPDATE sessions SET ended=?, end_reason='voucher_released' "
                f"WHERE voucher=? AND ended IS NULL{which}", (now, *args),
            )
            db.execute(f"DELETE FROM voucher_devices WHERE code=?{which}", args)
            voucher = self._voucher(db, code)
        assert voucher is not None
        return voucher, [Session(*r) for r in rows]

    def add_used_seconds(self, used: Mapping[str, int], plans: Collection[str] | None = None
                         ) -> list[Voucher]:
        """Add seconds of use (time of use) to vouchers in one transaction; return them
        (only those of ``plans`` when given)."""
        with self._tx() as db:
            codes = add_used_seconds(db, used, plans)
            found = [self._voucher(db, c) for c in codes]
        return [v for v in found if v is not None]

    def stamp_plans(self, stamps: Iterable[PlanStamp]) -> list[VoucherLimits]:
        """Stamp plans' limits on their vouchers and open sessions, in one transaction;
        return what the changed vouchers had (plan_sql.stamp_plans)."""
        with self._tx() as db:
            return stamp_plans(db, stamps)

    def restore_limits(self, limits: Iterable[VoucherLimits]) -> None:
        """Put back what :meth:`stamp_plans` returned (a config apply undone)."""
        with self._tx() as db:
            set_limits(db, limits)

    def redeem_voucher(self, code: str, mac: str, now: int) -> Voucher:
        """Bind ``mac`` to the voucher (first use starts its clock) or raise VoucherError."""
        with self._tx() as db:
            return self._redeem(db, code, mac, now)

    @classmethod
    def _redeem(cls, db: sqlite3.Connection, code: str, mac: str, now: int) -> Voucher:
        voucher = cls._voucher(db, code)
        if voucher is None:
            raise VoucherError("unknown")
        state = voucher.state(now)
        if state in ("revoked", "expired"):
            raise VoucherError(state)
        if mac not in voucher.devices:
            if len(voucher.devices) >= voucher.max_devices:
                raise VoucherError("in_use", devices=voucher.max_devices)
            db.execute("INSERT INTO voucher_devices (code, mac) VALUES (?,?)", (code, mac))
        if voucher.first_used is None:
            db.execute("UPDATE vouchers SET first_used=? WHERE code=?", (now, code))
        redeemed = cls._voucher(db, code)
        assert redeemed is not None
        return redeemed

    @staticmethod
    def _voucher(db: sqlite3.Connection, code: str) -> Voucher | None:
        row = db.execute(f"SELECT {_VOUCHER_COLS} FROM vouchers WHERE code=?", (code,)).fetchone()
        if row is None:
            return None
        devices = tuple(
            m for (m,) in db.execute(
                "SELECT mac FROM voucher_devices WHERE code=? ORDER BY mac", (code,)
            )
        )
        return Voucher(
            code=row[0], duration=row[1], plan=row[2], created=row[3], batch=row[4],
            max_devices=row[5], first_used=row[6], revoked=bool(row[7]), devices=devices,
            batch_name=row[8], serial=row[9], used_seconds=row[10], bytes_down=row[11],
            bytes_up=row[12], quota_state=row[13], price=row[14], seller=row[15],
            imported=bool(row[16]),
        )
