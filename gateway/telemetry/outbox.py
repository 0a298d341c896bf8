"""The durable outbox of events and telemetry, and the session counter.

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

The session counter (Sparkplug's bdSeq idea) lives in the same file and is
incremented in one transaction at every start; the status, the Last Will and
every message carry it, so a consumer tells a stale Will from the current
session.

Not yet here (later parts of Step 8): a bound on the backlog with a counted
drop policy (oldest telemetry first, events last) and the "historical" mark.

Every method is one transaction and blocks (an fsync): the daemon runs them
on its database worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from gateway.core.lifecycle import TELEMETRY_OUTBOX, TelemetryState
from gateway.kernel import Worker
from gateway.sqlitedb import Database
from gateway.store.heal import Heal

Kind = Literal["event", "telemetry"]
KINDS: tuple[Kind, ...] = ("event", "telemetry")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('event', 'telemetry')),
    session INTEGER NOT NULL,
    created REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Message:
    seq: int
    kind: Kind
    session: int
    created: float
    body: str  # JSON of the message's data (payloads.event_data); the envelope is added at send


@dataclass(frozen=True)
class NewMessage:
    kind: Kind
    created: float
    body: str


class TelemetryOutbox:
    """Thread-safe SQLite outbox; one transaction per method, each blocking on its fsync."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        # A damaged file is moved aside and a fresh one started (reported as degraded):
        # a broken outbox must not keep the daemon down.
        self._db = Database(self.path, _SCHEMA, SCHEMA_VERSION, "telemetry outbox", healing=Heal())

    def close(self) -> None:
        self._db.close()

    def next_session(self) -> int:
        """Increment the session counter and return it (1 at the first start). Blocks."""
        with self._db.tx() as db:
            db.execute("INSERT INTO counters (name, value) VALUES ('session', 1) "
                       "ON CONFLICT(name) DO UPDATE SET value = value + 1")
            (value,) = db.execute("SELECT value FROM counters WHERE name='session'").fetchone()
        return int(value)

    def add(self, session: int, items: Sequence[NewMessage]) -> list[int]:
        """Commit ``items`` (in order) and return their sequence numbers. Blocks."""
        for item in items:
            if item.kind not in KINDS:
                raise ValueError(f"message kind must be one of {', '.join(KINDS)}, not {item.kind!r}")
        seqs = []
        with self._db.tx() as db:
            for item in items:
                cur = db.execute("INSERT INTO messages (kind, session, created, body) VALUES (?,?,?,?)",
                                 (item.kind, session, item.created, item.body))
                assert cur.lastrowid is not None
                seqs.append(cur.lastrowid)
        return seqs

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
        return gone

    def count(self) -> int:
        with self._db.read() as db:
            (n,) = db.execute("SELECT COUNT(*) FROM messages").fetchone()
        return int(n)


class InFlight:
    """Published messages awaiting their PUBACK, by paho's message id (``mid``), in memory.

    Each move asks ``TELEMETRY_OUTBOX`` first; an illegal one (a PUBACK for a message
    already acknowledged, say) raises ``IllegalTransition``. Loop-thread only."""

    def __init__(self) -> None:
        self._by_mid: dict[int, int] = {}
        self._state: dict[int, TelemetryState] = {}

    def __len__(self) -> int:
        return len(self._by_mid)

    def published(self, seq: int, mid: int) -> None:
        self._state[seq] = TELEMETRY_OUTBOX.next(self._state.get(seq, "queued"), "publish")
        self._by_mid[mid] = seq

    def acked(self, mid: int) -> int | None:
        """The seq the PUBACK of ``mid`` acknowledges (None: not ours, e.g. the status)."""
        seq = self._by_mid.pop(mid, None)
        if seq is not None:
            TELEMETRY_OUTBOX.next(self._state.pop(seq), "puback")
        return seq

    def refused(self, mid: int) -> int | None:
        """The broker answered ``mid`` with an error: back to queued, sent again later."""
        seq = self._by_mid.pop(mid, None)
        if seq is not None:
            TELEMETRY_OUTBOX.next(self._state.pop(seq), "refused")
        return seq

    def lost(self) -> list[int]:
        """The connection is gone: every message in flight is queued again; their seqs."""
        seqs = sorted(self._by_mid.values())
        for seq in seqs:
            TELEMETRY_OUTBOX.next(self._state.pop(seq), "connection_lost")
        self._by_mid.clear()
        return seqs


class OutboxPort(Protocol):
    """What the telemetry service needs of the outbox; every method may await the disk."""

    async def next_session(self) -> int: ...
    async def add(self, session: int, items: Sequence[NewMessage]) -> list[int]: ...
    async def pending(self, after: int = 0, limit: int = 100) -> list[Message]: ...
    async def ack(self, seqs: Iterable[int]) -> int: ...
    async def count(self) -> int: ...
    async def close(self) -> None: ...


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


def _check(box: AsyncTelemetryOutbox) -> OutboxPort:
    return box  # mypy checks the adapter against its port
