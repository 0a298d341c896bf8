"""The durable outbox of events and telemetry, and the session counter (the adapter
behind gateway.telemetry.outbox.OutboxPort).

Theory of operation
-------------------
paho keeps nothing across a restart, so every event or telemetry message is
first committed here (SQLite through :class:`gateway.sqlitedb.Database`: WAL,
synchronous=FULL, healed like the other databases) and only then published.
Each row gets the next number of this gateway's sequence (``seq``: SQLite's
AUTOINCREMENT never hands a number out twice, even after the rows above it are
deleted), the session counter of its making and its creation time.

A row leaves the outbox only when the broker acknowledged it (QoS 1 PUBACK).
States follow ``TELEMETRY_OUTBOX`` in :mod:`gateway.core.lifecycle`: a row on
disk is ``queued``; ``in_flight`` (published, PUBACK awaited) is kept in
memory by :class:`InFlight`, because a restart puts every row back to queued
anyway and a write per publish would cost the SD card; an ``acked`` row is
deleted (several PUBACKs in one transaction). After a reconnect or a restart
the rows are sent again from the lowest ``seq``: in order, none lost, and
possibly twice on the wire (PUBACK lost, or a crash before the delete),
always with the same ``seq``, by which the consumer drops the copy.

The session counter (Sparkplug's bdSeq idea) is incremented at every start;
the status, the Last Will and every message carry it, so a consumer tells a
stale Will from the current session. It lives beside the outbox in a small
file of its own (:mod:`gateway.telemetry.counters`), with the sequence's
high-water mark, so that neither goes back when a damaged outbox is moved
aside and a fresh one started.

The backlog is bounded (:class:`Bound`: messages and bytes of their bodies,
``telemetry.backlog_max_messages`` / ``backlog_max_bytes``). An insert that
would pass the bound drops, in the same transaction, the oldest telemetry
message, again and again, and only when no telemetry is left the oldest event:
a crash never leaves the outbox over its bound nor a drop uncounted. Drops are
counted per kind in the ``counters`` table (``dropped_event``,
``dropped_telemetry``, never reset); ``totals`` (kept by triggers) holds the
backlog's size per kind, so checking the bound costs no scan.

Every method is one transaction and blocks (an fsync): the daemon runs them
on its database worker.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from gateway.kernel import Worker
from gateway.sqlitedb import Database
from gateway.store.heal import Heal
from gateway.telemetry.counters import CounterFile
from gateway.telemetry.outbox import (
    KINDS,
    Bound,
    Message,
    NewMessage,
    OutboxPort,
    Totals,
)

DEFAULT_BOUND = Bound()
SCHEMA_VERSION = 2  # 2: totals, the (kind, seq) index, drop counters
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('event', 'telemetry')),
    session INTEGER NOT NULL,
    created REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_kind ON messages (kind, seq);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS totals (
    kind TEXT PRIMARY KEY,
    messages INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS totals_add AFTER INSERT ON messages BEGIN
    UPDATE totals SET messages = messages + 1, bytes = bytes + length(CAST(NEW.body AS BLOB))
    WHERE kind = NEW.kind;
END;
CREATE TRIGGER IF NOT EXISTS totals_remove AFTER DELETE ON messages BEGIN
    UPDATE totals SET messages = messages - 1, bytes = bytes - length(CAST(OLD.body AS BLOB))
    WHERE kind = OLD.kind;
END;
"""
# Counted from the rows at every open (a file of schema 1 has no totals yet).
_RECOUNT = """
INSERT INTO totals (kind, messages, bytes)
SELECT k.kind, COUNT(m.seq), COALESCE(SUM(length(CAST(m.body AS BLOB))), 0)
FROM (SELECT 'event' AS kind UNION ALL SELECT 'telemetry') AS k
LEFT JOIN messages AS m ON m.kind = k.kind GROUP BY k.kind
ON CONFLICT(kind) DO UPDATE SET messages = excluded.messages, bytes = excluded.bytes
"""


class TelemetryOutbox:
    """Thread-safe SQLite outbox; one transaction per method, each blocking on its fsync."""

    def __init__(self, path: str | Path, bound: Bound | Callable[[], Bound] = DEFAULT_BOUND,
                 counters: str | Path | None = None) -> None:
        """``bound`` may be a callable, read at every insert (the running config's);
        ``counters`` is the counter file (default: beside ``path``, ``.counters``)."""
        self.path = str(path)
        self._bound = bound if callable(bound) else (lambda: bound)
        self.counters = CounterFile(counters if counters is not None
                                    else Path(self.path).with_suffix(".counters"))
        # A damaged file is moved aside and a fresh one started (reported as degraded):
        # a broken outbox must not keep the daemon down.
        self._db = Database(self.path, _SCHEMA, SCHEMA_VERSION, "telemetry outbox", healing=Heal())
        try:
            marks = self.counters.read()
            with self._db.tx() as db:
                db.execute(_RECOUNT)
                if self._last_seq(db) < marks.seq_floor:
                    # Not the outbox that handed those numbers out: continue above them all.
                    db.execute("DELETE FROM sqlite_sequence WHERE name = 'messages'")
                    db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('messages', ?)",
                               (marks.seq_reserved,))
                self._totals = self._read_totals(db)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    @property
    def totals(self) -> Totals:
        """The backlog and drop counts as of the last transaction (no disk access)."""
        return self._totals

    def next_session(self) -> int:
        """Increment the session counter and return it (1 at the first start). Blocks.

        Kept in the counter file and mirrored here: the next one is above both, so
        losing either file alone never sends it back."""
        with self._db.read() as db:
            row = db.execute("SELECT value FROM counters WHERE name='session'").fetchone()
        session = self.counters.next_session(at_least=int(row[0]) if row else 0)
        with self._db.tx() as db:
            db.execute("INSERT INTO counters (name, value) VALUES ('session', ?) "
                       "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (session,))
        return session

    def add(self, session: int, items: Sequence[NewMessage]) -> list[int]:
        """Commit ``items`` (in order) and return their sequence numbers; drop what
        passes the bound in the same transaction. Blocks."""
        for item in items:
            if item.kind not in KINDS:
                raise ValueError(f"message kind must be one of {', '.join(KINDS)}, not {item.kind!r}")
        bound = self._bound()
        seqs = []
        with self._db.tx() as db:
            self.counters.reserve(self._last_seq(db) + len(items))
            for item in items:
                cur = db.execute("INSERT INTO messages (kind, session, created, body) VALUES (?,?,?,?)",
                                 (item.kind, session, item.created, item.body))
                assert cur.lastrowid is not None
                seqs.append(cur.lastrowid)
            self._enforce(db, bound)
            totals = self._read_totals(db)
        self._totals = totals
        return seqs

    def _enforce(self, db: sqlite3.Connection, bound: Bound) -> None:
        """Drop the oldest telemetry, then the oldest events, until within ``bound``."""
        dropped = dict.fromkeys(KINDS, 0)
        while True:
            count, size = db.execute("SELECT SUM(messages), SUM(bytes) FROM totals").fetchone()
            if count <= bound.max_messages and size <= bound.max_bytes:
                break
            for kind in ("telemetry", "event"):  # the order of the drop policy
                row = db.execute("SELECT seq FROM messages WHERE kind = ? ORDER BY seq LIMIT 1",
                                 (kind,)).fetchone()
                if row is not None:
                    self._drop(db, row[0])
                    dropped[kind] += 1
                    break
            else:
                break  # nothing left to drop (a single body above max_bytes was dropped too)
        for kind, n in dropped.items():
            if n:
                db.execute("INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) "
                           "DO UPDATE SET value = value + excluded.value", (f"dropped_{kind}", n))

    def _drop(self, db: sqlite3.Connection, seq: int) -> None:
        db.execute("DELETE FROM messages WHERE seq = ?", (seq,))

    @staticmethod
    def _last_seq(db: sqlite3.Connection) -> int:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'messages'").fetchone()
        return int(row[0]) if row else 0

    @classmethod
    def _read_totals(cls, db: sqlite3.Connection) -> Totals:
        totals = Totals(last_seq=cls._last_seq(db))
        for kind, n, size in db.execute("SELECT kind, messages, bytes FROM totals"):
            totals.messages[kind], totals.bytes[kind] = n, size
        for name, value in db.execute("SELECT name, value FROM counters WHERE name LIKE 'dropped_%'"):
            totals.dropped[name.removeprefix("dropped_")] = value
        return totals

    def pending(self, after: int = 0, limit: int = 100) -> list[Message]:
        """Queued messages with ``seq`` above ``after``, lowest first."""
        with self._db.read() as db:
            rows = db.execute("SELECT seq, kind, session, created, body FROM messages "
                              "WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)).fetchall()
        return [Message(*row) for row in rows]

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged messages in one transaction; how many were still there. Blocks."""
        done = sorted(set(seqs))
        if not done:
            return 0
        gone = 0
        with self._db.tx() as db:
            for start in range(0, len(done), 500):  # SQLite's bound on parameters
                part = done[start:start + 500]
                gone += db.execute(f"DELETE FROM messages WHERE seq IN ({','.join('?' * len(part))})",
                                   part).rowcount
            totals = self._read_totals(db)
        self._totals = totals
        return gone

    def count(self) -> int:
        with self._db.read() as db:
            (n,) = db.execute("SELECT COUNT(*) FROM messages").fetchone()
        return int(n)


class AsyncTelemetryOutbox:
    """The outbox on the database worker: no method blocks the loop (each awaits the worker)."""

    def __init__(self, box: TelemetryOutbox, worker: Worker) -> None:
        self.box = box
        self.worker = worker

    async def next_session(self) -> int:
        return await self.worker.call(self.box.next_session)

    async def add(self, session: int, items: Sequence[NewMessage]) -> list[int]:
        return await self.worker.call(self.box.add, session, items)

    async def pending(self, after: int = 0, limit: int = 100) -> list[Message]:
        return await self.worker.call(self.box.pending, after, limit)

    async def ack(self, seqs: Iterable[int]) -> int:
        return await self.worker.call(self.box.ack, list(seqs))

    async def count(self) -> int:
        return await self.worker.call(self.box.count)

    async def close(self) -> None:
        await self.worker.call(self.box.close)

    def totals(self) -> Totals:
        return self.box.totals


def _check(box: AsyncTelemetryOutbox) -> OutboxPort:
    return box  # mypy checks the adapter against its port
