"""Where `desanet fleet serve` keeps the fleet: SQLite or PostgreSQL, one schema.

Tables (docs/fleet.md describes every column):

- ``gateways``: the latest state per site (:class:`~gateway.fleet.state.SiteState`).
- ``messages``: the ledger, one row per numbered message ever stored, primary
  key ``(site, session, seq)``. Inserting a key that is there already is how a
  duplicate is recognised (QoS 1 redelivery, a gateway resending after a
  crash, the same message given to two instances), so exactly once holds
  across instances and restarts, whatever the order of arrival.
- ``events``: every event with its fields (JSON) for dashboards and audits.

One batch of messages is one transaction; the consumer acknowledges them to
the broker only after the commit. SQLite runs in WAL mode with
``synchronous=FULL`` (a commit survives a power cut: the broker forgets an
acknowledged message) and ``BEGIN IMMEDIATE`` so instances on one machine take
turns. PostgreSQL locks each site's row (``FOR UPDATE``) in site order, so two
instances never deadlock over the same gateways; a failed batch is retried
whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Protocol
from urllib.parse import urlsplit

from gateway.errors import DesanetError
from gateway.fleet import state as st
from gateway.fleet.table import LEAVES, Rejected, unpack

SCHEMA_VERSION = 1
_BOOL = {"online", "uplink"}
_JSON = {"telemetry", "stamps"}
COLUMNS = [f.name for f in fields(st.SiteState)]
_TYPES = {"site": "TEXT PRIMARY KEY", "version": "TEXT", "config_version": "TEXT",
          "last_event": "TEXT", "problem": "TEXT", "telemetry": "TEXT", "stamps": "TEXT",
          "status_at": "DOUBLE PRECISION", "last_seen": "DOUBLE PRECISION",
          "last_report": "DOUBLE PRECISION"}
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM gateways"
_UPDATE = f"UPDATE gateways SET {', '.join(f'{c} = ?' for c in COLUMNS[1:])} WHERE site = ?"
# One DDL for both: SQLite gives BIGINT integer affinity and DOUBLE PRECISION real affinity.
DDL = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS gateways ("
    + ", ".join(f"{c} {_TYPES.get(c, 'BIGINT')}" for c in COLUMNS) + ")",
    "CREATE TABLE IF NOT EXISTS messages (site TEXT NOT NULL, session BIGINT NOT NULL, "
    "seq BIGINT NOT NULL, leaf TEXT NOT NULL, time DOUBLE PRECISION NOT NULL, "
    "hist SMALLINT NOT NULL, received DOUBLE PRECISION NOT NULL, consumer TEXT NOT NULL, "
    "PRIMARY KEY (site, session, seq))",
    "CREATE TABLE IF NOT EXISTS events (site TEXT NOT NULL, session BIGINT NOT NULL, "
    "seq BIGINT NOT NULL, time DOUBLE PRECISION NOT NULL, type TEXT NOT NULL, "
    "hist SMALLINT NOT NULL, body TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_site_time ON events (site, time)",
]


class StoreError(DesanetError):
    """The database cannot be opened or written; the message names --db."""


@dataclass(frozen=True)
class Incoming:
    """One PUBLISH as paho handed it over."""

    topic: str
    payload: bytes
    retained: bool
    received: float


@dataclass
class Outcome:
    """What one batch did (the consumer's counters)."""

    stored: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LEAVES, 0))
    duplicates: int = 0
    rejected: int = 0
    stale: int = 0
    ignored: int = 0
    lag: float | None = None  # the oldest live message of the batch: commit - made (gateway clock)


class _Conn(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...


def _row(values: Sequence[Any]) -> st.SiteState:
    raw = dict(zip(COLUMNS, values, strict=True))
    for c in _BOOL:
        raw[c] = None if raw[c] is None else bool(raw[c])
    for c in _JSON:
        raw[c] = json.loads(raw[c]) if raw[c] else {}
    return st.SiteState(**raw)


def _values(s: st.SiteState) -> list[Any]:
    raw = {c: getattr(s, c) for c in COLUMNS}  # not asdict(): its deep copy was most of a batch
    for c in _BOOL:
        raw[c] = None if raw[c] is None else int(raw[c])
    for c in _JSON:
        raw[c] = json.dumps(raw[c], separators=(",", ":"), sort_keys=True)
    return [raw[c] for c in COLUMNS]


class Store:
    """One database connection; ``apply`` is the only writer (see the module docstring)."""

    dialect = "sqlite"

    def __init__(self, url: str, consumer: str) -> None:
        self.url, self.consumer = url, consumer

    # -- subclass hooks -----------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[_Conn]:
        raise NotImplementedError
        yield  # pragma: no cover

    def sql(self, text: str) -> str:
        return text

    def close(self) -> None:
        raise NotImplementedError

    def reconnect(self) -> None:
        """After a failed batch: a new connection if the old one broke."""

    # -- shared -------------------------------------------------------------------------

    def create(self) -> None:
        with self.transaction() as db:
            for stmt in DDL:
                db.execute(stmt)
            db.execute(self.sql("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING"),
                       ("schema", str(SCHEMA_VERSION)))
            found = db.execute(self.sql("SELECT value FROM meta WHERE key = ?"), ("schema",)).fetchone()
        if found and found[0] != str(SCHEMA_VERSION):
            raise StoreError(f"--db: {redact(self.url)} holds schema version {found[0]}; this "
                             f"desanet writes version {SCHEMA_VERSION}")

    def sites(self) -> list[st.SiteState]:
        with self.transaction() as db:
            rows = db.execute(f"{_SELECT} ORDER BY site").fetchall()
        return [_row(r) for r in rows]

    def count(self, table: str) -> int:
        assert table in ("messages", "events", "gateways")
        with self.transaction() as db:
            return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def apply(self, prefix: str, batch: Iterable[Incoming], now: float) -> Outcome:
        """Store a batch in one transaction; the outcome once it is committed."""
        out = Outcome()
        splitter = _Splitter(prefix)
        per_site: dict[str, list[tuple[str, Incoming]]] = {}
        for msg in batch:
            where = splitter.split(msg.topic)
            if where is None:
                out.ignored += 1
                continue
            per_site.setdefault(where[0], []).append((where[1], msg))
        with self.transaction() as db:
            for site in sorted(per_site):  # one lock order for every instance (PostgreSQL)
                self._site(db, site, per_site[site], out, now)
        return out

    def _site(self, db: _Conn, site: str, msgs: list[tuple[str, Incoming]], out: Outcome,
              now: float) -> None:
        db.execute(self.sql("INSERT INTO gateways (site, events, messages, duplicates, stale, "
                            "rejected, last_session, last_seq) VALUES (?, 0, 0, 0, 0, 0, 0, 0) "
                            "ON CONFLICT DO NOTHING"), (site,))
        lock = " FOR UPDATE" if self.dialect == "postgresql" else ""
        found = db.execute(self.sql(f"{_SELECT} WHERE site = ?{lock}"), (site,)).fetchone()
        s = _row(found)
        for leaf, msg in msgs:
            if leaf == "status" and msg.retained and not msg.payload:
                # An empty retained status deletes the broker's copy: the gateway was retired.
                s = st.SiteState(site)
                continue
            try:
                for body in unpack(msg.payload, site, leaf):
                    self._one(db, s, leaf, body, msg, out, now)
            except Rejected as exc:
                s.rejected += 1
                s.problem = f"{leaf}: {exc}"
                out.rejected += 1
            if not msg.retained:  # readable or not, only this gateway may publish here (ACL)
                s.last_seen = msg.received if s.last_seen is None else max(s.last_seen, msg.received)
        db.execute(self.sql(_UPDATE), [*_values(s)[1:], site])

    def _one(self, db: _Conn, s: st.SiteState, leaf: str, body: dict[str, Any], msg: Incoming,
             out: Outcome, now: float) -> None:
        if leaf == "status":
            result = st.apply_status(s, body, msg.received)
            if result == "stale":
                out.stale += 1
            elif result == "reset":
                db.execute(self.sql("DELETE FROM messages WHERE site = ?"), (s.site,))
            out.stored["status"] += result != "stale"
            return
        session, seq = st.key_of(body)  # checked before the ledger row is written
        hist = 1 if body.get("hist") is True else 0
        new = db.execute(self.sql(
            "INSERT INTO messages (site, session, seq, leaf, time, hist, received, consumer) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"),
            (s.site, session, seq, leaf, float(body["time"]), hist, msg.received, self.consumer))
        if new.rowcount == 0:
            s.duplicates += 1
            out.duplicates += 1
            return
        try:
            st.apply_numbered(s, leaf, body)
        except Rejected:
            db.execute(self.sql("DELETE FROM messages WHERE site = ? AND session = ? AND seq = ?"),
                       (s.site, session, seq))
            raise
        if leaf == "event":
            data = {k: v for k, v in body.items() if k not in st.ENVELOPE}
            db.execute(self.sql("INSERT INTO events (site, session, seq, time, type, hist, body) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?)"),
                       (s.site, session, seq, float(body["time"]), body["type"], hist,
                        json.dumps(data, separators=(",", ":"))))
        out.stored[leaf] += 1
        if not hist:
            lag = max(0.0, now - float(body["time"]))
            out.lag = lag if out.lag is None else max(out.lag, lag)


class _Splitter:
    def __init__(self, prefix: str) -> None:
        self.head = prefix + "/"

    def split(self, topic: str) -> tuple[str, str] | None:
        if not topic.startswith(self.head):
            return None
        site, _, leaf = topic[len(self.head):].partition("/")
        return (site, leaf) if site and leaf in LEAVES else None


# -- SQLite -----------------------------------------------------------------------------


class SqliteStore(Store):
    dialect = "sqlite"

    def __init__(self, url: str, path: str, consumer: str) -> None:
        super().__init__(url, consumer)
        self.path = path
        try:
            self.db = sqlite3.connect(path, isolation_level=None, timeout=30.0,
                                      check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise StoreError(f"--db: cannot open the SQLite database {path}: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[_Conn]:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"--db: {self.path}: {exc}") from exc
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()


# -- PostgreSQL (psycopg 3) -------------------------------------------------------------


class PostgresStore(Store):
    dialect = "postgresql"

    def __init__(self, url: str, consumer: str) -> None:
        super().__init__(url, consumer)
        try:
            import psycopg
        except ImportError:
            raise StoreError("--db: a postgresql:// URL needs psycopg 3 "
                             "(pip install 'psycopg[binary]')") from None
        self._errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        try:
            self.db = psycopg.connect(url, connect_timeout=10)
        except psycopg.Error as exc:
            raise StoreError(f"--db: cannot connect to {redact(url)}: {str(exc).strip()}") from exc

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def reconnect(self) -> None:
        if not self.db.closed and not self.db.broken:
            return
        import psycopg

        with contextlib.suppress(psycopg.Error):  # else the next batch fails and comes back here
            self.db = psycopg.connect(self.url, connect_timeout=10)

    @contextmanager
    def transaction(self) -> Iterator[_Conn]:
        try:
            yield self.db
            self.db.commit()
        except BaseException:
            if not self.db.closed:
                self.db.rollback()
            raise

    def close(self) -> None:
        self.db.close()


def redact(url: str) -> str:
    """``url`` without its password (error messages, logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def check_url(url: str) -> str:
    """The problem with a --db URL, or "" (no I/O beyond looking at the directory)."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        path = sqlite_path(url)
        if not path:
            return f"--db: {url!r} names no file; write e.g. sqlite:///var/lib/desanet/fleet.db"
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            return f"--db: the directory {parent} of {url!r} does not exist"
        return ""
    if scheme in ("postgresql", "postgres"):
        return "" if urlsplit(url).path not in ("", "/") or "dbname=" in url else \
            f"--db: {redact(url)!r} names no database; write e.g. postgresql://fleet@db.example/fleet"
    return (f"--db: {redact(url)!r} is not a database URL; write sqlite:///var/lib/desanet/fleet.db "
            "or postgresql://USER@HOST/DBNAME")


def sqlite_path(url: str) -> str:
    """``sqlite:///abs/path.db`` -> ``/abs/path.db``; ``sqlite://rel.db`` -> ``rel.db``."""
    return url.split(":", 1)[1][2:] if url.split(":", 1)[1].startswith("//") else ""


def connect_store(url: str, consumer: str) -> Store:
    """A connection to the database at ``url``; raises StoreError."""
    problem = check_url(url)
    if problem:
        raise StoreError(problem)
    if url.lower().startswith("sqlite:"):
        return SqliteStore(url, sqlite_path(url), consumer)
    return PostgresStore(url, consumer)


def open_store(url: str, consumer: str) -> Store:
    """Connect and create the tables if missing; raises StoreError."""
    store = connect_store(url, consumer)
    try:
        store.create()
    except (sqlite3.Error, *getattr(store, "_errors", ())) as exc:
        store.close()
        raise StoreError(f"--db: cannot create the tables in {redact(url)}: {exc}") from exc
    return store
