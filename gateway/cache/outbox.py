"""Durable queue of form submissions made while a service's upstream is down.

Theory of operation
-------------------
When a villager submits a form (POST) to a service that allows queueing and
the upstream cannot be reached, the proxy calls :meth:`Outbox.enqueue`. The
submission is committed to SQLite (WAL, synchronous=FULL, so the commit is
fsynced) *before* ``enqueue`` returns; only then does the villager see a
receipt with the reference number (``DN-7K3Q-P9XW``). The
:class:`~gateway.cache.delivery.Deliverer` later sends it upstream with the
same ``Idempotency-Key`` on every attempt.

States (the legal moves are the table ``FORMS_OUTBOX`` in
:mod:`gateway.core.lifecycle`; every state change below asks it first and an
illegal one raises :class:`~gateway.errors.OutboxStateError`)::

    queued ──mark_sending──▶ sending ──mark_result──▶ delivered   2xx/3xx
       ▲                        │                 ├─▶ rejected    4xx: the upstream refused it
       │   not_sent / retry     │                 ├─▶ queued      not sent, or the upstream said
       └────────────────────────┘                 │               "try again" (503, 408, 425, 429)
                                                  └─▶ unknown     it may have arrived: timeout or
    unknown ──mark_sending──▶ sending ...                         reset after sending, 500/502/504
    sending ──recover (after a crash)──▶ unknown
    queued, unknown ──kick──▶ unchanged, due now

``unknown`` is sticky: once an attempt may have reached the upstream, a later
attempt that fails without reaching it (connection refused) leaves the
submission ``unknown``, not ``queued``, because the earlier attempt's outcome
is still not known. Both ``queued`` and ``unknown`` are retried with backoff,
and always with the same key, so a retry cannot create a duplicate at an
upstream that honours ``Idempotency-Key``. ``delivered`` and ``rejected`` are
final.

Headers: only ``content-type``, ``accept``, ``accept-language`` and
``user-agent`` are kept. Cookies and ``Authorization`` are dropped on purpose:
they are credentials of one villager that would otherwise sit on the SD card
for hours, a session cookie is usually expired by the time the uplink
returns, and the queue is for public forms that need no login.

Each public method is one transaction. The class is thread-safe, so async
callers may run its methods in ``asyncio.to_thread`` to keep fsyncs off the
event loop.
"""

from __future__ import annotations

import builtins
import json
import os
import random
import re
import secrets
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from gateway.core.lifecycle import (
    FORMS_OUTBOX,
    IllegalTransition,
    OutboxEvent,
    outbox_result_event,
)
from gateway.core.lifecycle import OutboxOutcome as Outcome
from gateway.core.lifecycle import OutboxState as State
from gateway.errors import OutboxStateError, Refused, StoreError, SubmissionTooLarge
from gateway.sqlitedb import Database
from gateway.store.heal import Heal

STATES: tuple[State, ...] = FORMS_OUTBOX.states
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
PENDING: tuple[State, ...] = FORMS_OUTBOX.sources("mark_sending")  # waiting for an attempt
WAITING: tuple[State, ...] = tuple(s for s in STATES if not FORMS_OUTBOX.is_final(s))  # not done

SAFE_HEADERS = frozenset({"content-type", "accept", "accept-language", "user-agent"})
QUEUE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_BODY = 1024 * 1024
FIRST_DELAY = 5.0
MAX_DELAY = 600.0
JITTER = 0.25  # a delay is shortened by up to this fraction, so villages do not retry in lockstep

# Crockford-like alphabet: no 0/O or 1/I, so a reference read over the phone is unambiguous.
REF_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
_REF_RE = re.compile(r"^DN-[2-9A-HJ-NP-Z]{4}-[2-9A-HJ-NP-Z]{4}$")
_PATH_RE = re.compile(r"^/[!-~]*$")  # printable ASCII, no spaces or control characters
_KEY_RE = re.compile(r"^[!-~]{1,255}$")

SCHEMA_VERSION = 2  # 2: the client column (per-client limit)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ref TEXT NOT NULL UNIQUE,
    idempotency_key TEXT NOT NULL UNIQUE,
    service TEXT NOT NULL,
    method TEXT NOT NULL,
    path_qs TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    state TEXT NOT NULL,
    uncertain INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_attempt REAL,
    next_attempt REAL,
    last_error TEXT,
    response_status INTEGER,
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS submissions_pending ON submissions(state, next_attempt);
CREATE INDEX IF NOT EXISTS submissions_service ON submissions(service, id);
"""
_MIGRATE_2 = "ALTER TABLE submissions ADD COLUMN client TEXT"
_INDEX_2 = "CREATE INDEX IF NOT EXISTS submissions_client ON submissions(client, created)"
_COLS = (
    "ref, idempotency_key, service, method, path_qs, headers, body, created, state, uncertain, "
    "attempts, last_attempt, next_attempt, last_error, response_status, delivered_at, client"
)

_TEXT: dict[State, tuple[str, str]] = {
    "queued": ("menunggu dikirim; layanan belum dapat dihubungi, akan dikirim otomatis",
               "waiting to be sent; the service is unreachable, it will be sent automatically"),
    "sending": ("sedang dikirim", "being sent now"),
    "delivered": ("sudah terkirim ke layanan", "delivered to the service"),
    "rejected": ("terkirim, tetapi ditolak oleh layanan (HTTP {status})",
                 "delivered, but the service refused it (HTTP {status})"),
    "unknown": ("hasil belum pasti, dikirim ulang dengan kunci yang sama (tidak akan tercatat ganda)",
                "outcome unknown, retrying with the same key (it cannot be recorded twice)"),
}


@dataclass(frozen=True)
class QueueLimits:
    """What the queue takes; ``enqueue`` refuses a submission past any of them, storing nothing.

    Counts and bytes are of the submissions still waiting (queued, sending, unknown);
    the per-client count is of every submission the client made in the last hour."""

    max_body: int = MAX_BODY
    max_forms: int = 1000
    max_bytes: int = 64 * 1024 * 1024
    per_client_hour: int = 30
    min_free_disk: int = 100 * 1024 * 1024


class QueueFull(Refused):
    """A queue limit refused a submission; ``reason`` says which (the villager's page uses it):
    ``queue_forms``, ``queue_bytes``, ``client_hour`` or ``disk_space``."""


def free_disk(path: str) -> int:
    """Bytes an unprivileged writer may still use on the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@dataclass(frozen=True)
class Submission:
    ref: str
    idempotency_key: str
    service: str
    method: str
    path_qs: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    created: float
    state: State
    uncertain: bool  # some earlier attempt may have reached the upstream
    attempts: int
    last_attempt: float | None
    next_attempt: float | None
    last_error: str | None
    response_status: int | None
    delivered_at: float | None
    client: str | None = field(default=None)

    @property
    def final(self) -> bool:
        return FORMS_OUTBOX.is_final(self.state)

    def describe(self, lang: str = "en") -> str:
        """One line for the villager's status page or the operator's list."""
        text = _TEXT[self.state][0 if lang == "id" else 1]
        return text.format(status=self.response_status)


def new_ref() -> str:
    chars = "".join(secrets.choice(REF_ALPHABET) for _ in range(8))
    return f"DN-{chars[:4]}-{chars[4:]}"


def normalize_ref(text: str) -> str | None:
    """Turn what a villager typed ("dn 7k3q p9xw", "7K3QP9XW") into a reference, or None."""
    compact = re.sub(r"[\s\-_.]", "", text.upper())
    compact = compact.removeprefix("DN")
    ref = f"DN-{compact[:4]}-{compact[4:]}"
    return ref if len(compact) == 8 and _REF_RE.match(ref) else None


def backoff_delay(attempts: int, rng: random.Random | None = None) -> float:
    """Delay after the ``attempts``-th failed attempt: 5 s doubling to 10 min, with jitter."""
    base = min(MAX_DELAY, FIRST_DELAY * 2 ** max(0, min(attempts - 1, 30)))
    return base * (1.0 - JITTER * (rng or random).random())


def filter_headers(headers: builtins.list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    kept = []
    for name, value in headers:
        if name.lower() in SAFE_HEADERS and "\r" not in value and "\n" not in value:
            kept.append((name.lower(), value))
    return tuple(kept)


class Outbox:
    """Thread-safe SQLite queue of submissions, one transaction per method."""

    def __init__(self, path: str | Path, rng: random.Random | None = None) -> None:
        self.path = str(path)
        self._rng = rng or random.Random()
        # A damaged outbox is moved aside and a fresh one started (reported as degraded):
        # queued forms must not keep the portal down.
        self._database = Database(self.path, _SCHEMA, SCHEMA_VERSION, "submission outbox",
                                  healing=Heal())
        self._lock = self._database.lock
        self._db = self._database.conn
        self._tx = self._database.tx
        with self._tx() as db:  # version 1 files get the client column
            if "client" not in {row[1] for row in db.execute("PRAGMA table_info(submissions)")}:
                db.execute(_MIGRATE_2)
            db.execute(_INDEX_2)
        self.free_disk: Callable[[str], int] = free_disk  # tests replace it

    def close(self) -> None:
        self._database.close()

    # -- writing ------------------------------------------------------------

    def enqueue(self, service: str, method: str, path_qs: str, headers: builtins.list[tuple[str, str]],
                body: bytes, now: float, idempotency_key: str | None = None, *,
                uncertain: bool = False, client: str | None = None,
                limits: QueueLimits | None = None) -> Submission:
        """Store a submission durably and return it; the commit is fsynced before this returns.

        ``path_qs`` is relative to the service's upstream base URL. Pass ``idempotency_key``
        when a direct attempt with that key was already made, so deliveries reuse it; enqueueing
        a key that is already stored returns the stored submission (nothing is added). Pass
        ``uncertain=True`` if that direct attempt may have reached the upstream: the submission
        then starts as ``unknown``.

        ``limits`` (default ``QueueLimits()``) are checked in the same transaction as the
        insert, after the key: a repeated key returns its submission even when the queue is
        full. Raises SubmissionTooLarge (body over ``max_body``) or QueueFull; either way
        nothing is stored. ``client`` (the villager's address) is what ``per_client_hour``
        counts.
        """
        limits = limits or QueueLimits()
        method = method.upper()
        if method not in QUEUE_METHODS:
            raise ValueError(f"only {', '.join(sorted(QUEUE_METHODS))} can be queued, not {method}")
        if not _PATH_RE.match(path_qs) or path_qs.startswith("//"):
            raise ValueError(f"path_qs must be an absolute path like \"/form?x=1\", not {path_qs!r}")
        if not service:
            raise ValueError("service slug is empty")
        if idempotency_key is not None and not _KEY_RE.match(idempotency_key):
            raise ValueError(f"idempotency_key must be 1-255 printable ASCII characters, "
                             f"e.g. a UUID, not {idempotency_key!r}")
        if len(body) > limits.max_body:
            raise SubmissionTooLarge(
                f"the form is {len(body) / 1048576:.1f} MB but the offline queue keeps at most "
                f"{limits.max_body / 1048576:g} MB per submission; send it again when the service "
                "is online"
            )
        kept = json.dumps(filter_headers(headers))
        state: State = "unknown" if uncertain else "queued"
        for _ in range(20):
            ref, key = new_ref(), idempotency_key or str(uuid.uuid4())
            try:
                with self._tx() as db:
                    found = db.execute(
                        "SELECT ref FROM submissions WHERE idempotency_key=?", (key,)
                    ).fetchone()
                    if found is not None:
                        ref = found[0]
                    else:
                        self._check_limits(db, limits, len(body), client, now)
                        db.execute(
                            "INSERT INTO submissions (ref, idempotency_key, service, method, path_qs, "
                            "headers, body, created, state, uncertain, next_attempt, client) "
                            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                            (ref, key, service, method, path_qs, kept, body, now, state,
                             int(uncertain), now, client),
                        )
            except StoreError as exc:
                if isinstance(exc.__cause__, sqlite3.IntegrityError):
                    continue  # reference already taken (1 in 2**40 per stored item): draw again
                raise
            sub = self.get(ref)
            assert sub is not None
            return sub
        raise StoreError(f"could not draw an unused reference number in {self.path}")

    def _check_limits(self, db: sqlite3.Connection, limits: QueueLimits, size: int,
                      client: str | None, now: float) -> None:
        waiting = ",".join("?" * len(WAITING))
        count, total = db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(length(body)), 0) FROM submissions "
            f"WHERE state IN ({waiting})", WAITING).fetchone()
        if count + 1 > limits.max_forms:
            raise QueueFull("queue_forms", f"the offline queue already holds {count} forms "
                            f"(limit {limits.max_forms})")
        if total + size > limits.max_bytes:
            raise QueueFull("queue_bytes", f"the offline queue holds {total} bytes; {size} more "
                            f"would pass its limit of {limits.max_bytes}")
        if client is not None:
            (recent,) = db.execute("SELECT COUNT(*) FROM submissions WHERE client=? AND created>?",
                                   (client, now - 3600)).fetchone()
            if recent + 1 > limits.per_client_hour:
                raise QueueFull("client_hour", f"{client} queued {recent} forms in the last hour "
                                f"(limit {limits.per_client_hour})")
        try:
            free = self.free_disk(self.path)
        except OSError as exc:
            raise QueueFull("disk_space", f"cannot tell the free disk space: {exc}") from exc
        if free - size < limits.min_free_disk:
            raise QueueFull("disk_space", f"{free} bytes free; the queue keeps "
                            f"{limits.min_free_disk} free")

    def find_key(self, idempotency_key: str) -> Submission | None:
        """The submission stored with this key, if any."""
        with self._lock:
            row = self._db.execute(f"SELECT {_COLS} FROM submissions WHERE idempotency_key=?",
                                   (idempotency_key,)).fetchone()
        return self._row(row) if row else None

    def mark_sending(self, ref: str, now: float) -> Submission:
        """Claim a due submission for one delivery attempt (atomic: two claims cannot both win).

        Raises OutboxStateError if there is no such submission, its state does not allow
        ``mark_sending`` (see FORMS_OUTBOX) or it is not due yet.
        """
        with self._tx() as db:
            found = self._get(db, ref)
            action, wanted = "claimed for sending", f"{' or '.join(PENDING)} and due"
            if found is None:
                raise self._state_error(db, ref, action, wanted)
            state = self._next(db, found, "mark_sending", action, wanted)
            if found.next_attempt is None or found.next_attempt > now:
                raise self._state_error(db, ref, action, wanted)
            self._move(db, found, state, "attempts=attempts+1, last_attempt=?", (now,))
            sub = self._get(db, ref)
        assert sub is not None
        return sub

    def mark_result(self, ref: str, outcome: Outcome, status: int | None, error: str | None,
                    now: float, retry_after: float | None = None) -> Submission:
        """Record how an attempt ended; see the module docstring for the transitions.

        ``status`` is the upstream's HTTP status if it answered; ``retry_after`` (seconds, from
        a Retry-After header) lengthens the backoff, up to the 10 minute cap. Raises ValueError
        for an unknown outcome, OutboxStateError if the submission's state does not allow it.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        with self._tx() as db:
            sub = self._get(db, ref)
            action, wanted = f"given the result {outcome!r}", " or ".join(FORMS_OUTBOX.sources(outcome))
            if sub is None:
                raise self._state_error(db, ref, action, wanted)
            event = outbox_result_event(outcome, sub.uncertain)
            state = self._next(db, sub, event, action, wanted)
            if FORMS_OUTBOX.is_final(state):
                self._move(db, sub, state, "response_status=?, last_error=?, delivered_at=?, "
                           "next_attempt=NULL", (status, error, now))
            else:
                delay = backoff_delay(sub.attempts, self._rng)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, MAX_DELAY))
                self._move(db, sub, state, "uncertain=?, response_status=?, last_error=?, next_attempt=?",
                           (int(sub.uncertain or state == "unknown"), status, error, now + delay))
            done = self._get(db, ref)
        assert done is not None
        return done

    def recover(self, now: float) -> int:
        """After a restart: attempts cut short by a crash may have arrived, so sending -> unknown.

        Returns how many submissions moved.
        """
        return self._move_all("recover", "uncertain=1, next_attempt=?, "
                              "last_error='interrupted while sending (gateway restarted)'", (now,))

    def kick(self, service: str | None, now: float) -> int:
        """Make the pending submissions of ``service`` (or of all services) due now; returns how many."""
        return self._move_all("kick", "next_attempt=?", (now,), service)

    # -- reading ------------------------------------------------------------

    def get(self, ref: str) -> Submission | None:
        """Look a submission up by its reference, as typed by a villager or not."""
        norm = normalize_ref(ref)
        if norm is None:
            return None
        with self._lock:
            return self._get(self._db, norm)

    def due(self, now: float, limit: int = 100) -> builtins.list[Submission]:
        """Pending submissions whose time has come, oldest first.

        A submission is held back while an older pending one of the same service
        waits for its retry or is being sent, so each service sees them in order.
        """
        pending = ",".join("?" * len(PENDING))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLS} FROM submissions o WHERE state IN ({pending}) "
                "AND next_attempt<=? AND NOT EXISTS (SELECT 1 FROM submissions p "
                "WHERE p.service=o.service AND p.id<o.id AND (p.state='sending' OR "
                f"(p.state IN ({pending}) AND p.next_attempt>?))) ORDER BY id LIMIT ?",
                (*PENDING, now, *PENDING, now, limit),
            ).fetchall()
        return [self._row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = dict.fromkeys(STATES, 0)
        with self._lock:
            for state, n in self._db.execute("SELECT state, COUNT(*) FROM submissions GROUP BY state"):
                found[state] = n
        return found

    def list(self, service: str | None = None, limit: int = 100) -> builtins.list[Submission]:
        """Newest first, for the operator's view."""
        with self._lock:
            if service is None:
                rows = self._db.execute(
                    f"SELECT {_COLS} FROM submissions ORDER BY id DESC LIMIT ?", (limit,)
                ).fetchall()
            else:
                rows = self._db.execute(
                    f"SELECT {_COLS} FROM submissions WHERE service=? ORDER BY id DESC LIMIT ?",
                    (service, limit),
                ).fetchall()
        return [self._row(r) for r in rows]

    # -- helpers ------------------------------------------------------------

    def _get(self, db: sqlite3.Connection, ref: str) -> Submission | None:
        row = db.execute(f"SELECT {_COLS} FROM submissions WHERE ref=?", (ref,)).fetchone()
        return self._row(row) if row else None

    def _next(self, db: sqlite3.Connection, sub: Submission, event: OutboxEvent, action: str,
              wanted: str) -> State:
        """The state FORMS_OUTBOX gives for ``event``; an illegal move raises OutboxStateError."""
        try:
            return FORMS_OUTBOX.next(sub.state, event)
        except IllegalTransition as exc:
            raise self._state_error(db, sub.ref, action, wanted) from exc

    @staticmethod
    def _move(db: sqlite3.Connection, sub: Submission, state: State, sets: str,
              args: tuple[object, ...]) -> None:
        """Store ``state`` (and the other columns in ``sets``) if ``sub`` is still in its state."""
        cur = db.execute(f"UPDATE submissions SET state=?, {sets} WHERE ref=? AND state=?",
                         (state, *args, sub.ref, sub.state))
        if cur.rowcount != 1:  # cannot happen inside one transaction; never write a stale move
            raise OutboxStateError(f"submission {sub.ref} changed state while it was being updated")

    def _move_all(self, event: OutboxEvent, sets: str, args: tuple[object, ...],
                  service: str | None = None) -> int:
        """Fire ``event`` at every submission (of ``service``) whose state allows it, in one transaction."""
        moved = 0
        with self._tx() as db:
            for source in FORMS_OUTBOX.sources(event):
                sql = f"UPDATE submissions SET state=?, {sets} WHERE state=?"
                params: tuple[object, ...] = (FORMS_OUTBOX.next(source, event), *args, source)
                if service is not None:
                    sql += " AND service=?"
                    params += (service,)
                moved += db.execute(sql, params).rowcount
        return moved

    def _state_error(self, db: sqlite3.Connection, ref: str, action: str, wanted: str) -> OutboxStateError:
        sub = self._get(db, ref)
        found = "no such submission" if sub is None else f"it is {sub.state}"
        if sub is not None and sub.state in PENDING:
            found += f" until {sub.next_attempt}"
        return OutboxStateError(f"submission {ref} cannot be {action}: it must be {wanted}, but {found}")

    @staticmethod
    def _row(row: Any) -> Submission:
        (ref, key, service, method, path_qs, headers, body, created, state, uncertain,
         attempts, last_attempt, next_attempt, last_error, status, delivered_at, client) = row
        return Submission(
            ref=ref, idempotency_key=key, service=service, method=method, path_qs=path_qs,
            headers=tuple((n, v) for n, v in json.loads(headers)), body=bytes(body),
            created=created, state=state, uncertain=bool(uncertain), attempts=attempts,
            last_attempt=last_attempt, next_attempt=next_attempt, last_error=last_error,
            response_status=status, delivered_at=delivered_at, client=client,
        )
