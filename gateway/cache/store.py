"""Crash-safe disk store for cached responses, with a size limit and LRU eviction.

Theory of operation
-------------------
Layout under ``directory``::

    index.db      SQLite (WAL, synchronous=FULL): one row per stored response
    bodies/<id>   response bodies, immutable once published
    tmp/<id>      bodies being written
    lock          flock'ed while a CacheStore is open (one process per directory)

A body becomes visible in three steps: it is streamed into ``tmp/`` (never
held in memory), fsync'ed and renamed into ``bodies/`` (then the directory
is fsync'ed), and only then is its index row inserted, in the same
transaction that deletes the older copy of the same key and Vary values.
A crash at any point leaves either no row (the file is an orphan, removed
at the next open) or a row whose file is complete.  At open we also drop
rows whose file is missing or has the wrong size (an SD card losing data),
and ``open_body`` re-checks the size, so a truncated body is never served.

Blocking: ``commit``, ``update_meta``, ``delete``, ``flush`` and the
constructor fsync (SQLite commit or file fsync); call them from a thread
(``asyncio.to_thread``) on the event loop.  ``lookup``, ``touch``,
``stats``, ``open_body`` and ``BodyWriter.write`` do no fsync and are short.
``lookup`` and small-body reads are served from memory (gateway/cache/memindex.py):
the index mirrors every row, updated after each committed transaction, and
bodies up to 64 KiB (32 MiB in all) are kept after their first read.
``touch`` only records the time in memory; the times are flushed in one
transaction every ``TOUCH_FLUSH_SECONDS``, before eviction and at close, so
the hit path costs no disk write (a crash only loses LRU recency).
Partial entries (206 answers, gateway/cache/partial.py) are rows with a
``ranges`` column: their body file is as long as the whole representation
(sparse), ``size`` counts the bytes held, and ``lookup`` never returns them
(``lookup_partial`` does); recovery checks their file against the whole length.
Pinned keys (``set_pins``: the pages and forms a service lists) are never
evicted; they still count towards the size, and they are replaced by newer
copies and deleted on invalidation like any other entry.
All methods are thread-safe (one lock around the SQLite connection).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gateway.cache import partial as parts
from gateway.cache.memindex import BODY_CACHE_BYTES, BODY_CACHE_ITEM, BodyCache, MemIndex
from gateway.cache.partial import PartialWriter
from gateway.cache.ranges import PartialState
from gateway.cache.rules import StoredMeta
from gateway.cache.staged import StagedFile
from gateway.errors import StoreError
from gateway.sqlitedb import classify, open_readonly
from gateway.store.health import DEGRADED

MAX_OBJECT_FRACTION = 8  # a single body may use at most max_bytes / 8
TOUCH_FLUSH_SECONDS = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    vary TEXT NOT NULL,
    meta TEXT NOT NULL,
    size INTEGER NOT NULL,
    body TEXT NOT NULL UNIQUE,
    last_used REAL NOT NULL,
    ranges TEXT
);
CREATE INDEX IF NOT EXISTS entries_key ON entries(key);
CREATE INDEX IF NOT EXISTS entries_lru ON entries(last_used);
CREATE TABLE IF NOT EXISTS pins (key TEXT PRIMARY KEY);
"""


@dataclass(frozen=True)
class Entry:
    id: int
    key: str
    meta: StoredMeta
    size: int
    path: Path
    last_used: float
    partial: PartialState | None = None  # set for a partial entry (gateway/cache/partial.py)


def _meta_to_json(meta: StoredMeta) -> str:
    return json.dumps({"status": meta.status, "headers": meta.headers, "request_time": meta.request_time,
                       "response_time": meta.response_time, "vary": meta.vary,
                       **({"stale": True} if meta.stale else {})})


def _meta_from_json(text: str) -> StoredMeta:
    d = json.loads(text)
    return StoredMeta(int(d["status"]), dict(d["headers"]), float(d["request_time"]),
                      float(d["response_time"]), dict(d.get("vary", {})), bool(d.get("stale")))


def _partial_from_json(text: str | None) -> PartialState | None:
    if text is None:
        return None
    d = json.loads(text)
    return PartialState(int(d["length"]), tuple((int(a), int(b)) for a, b in d["held"]))


def _migrate(db: sqlite3.Connection) -> None:
    """Indexes written before partial entries existed get the ``ranges`` column (NULL:
    every old row is a complete entry)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(entries)")}
    if "ranges" not in columns:
        db.execute("ALTER TABLE entries ADD COLUMN ranges TEXT")


def _vary_key(meta: StoredMeta) -> str:
    return json.dumps(meta.vary, sort_keys=True, separators=(",", ":"))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BodyWriter(StagedFile):
    """Streams one body to ``tmp/``; ``commit`` publishes it, ``abort`` drops it.

    Use as a context manager to abort automatically when an exception escapes.
    """

    def __init__(self, store: CacheStore, key: str, meta: StoredMeta, limit: int) -> None:
        self._store, self.key, self.meta, self._limit = store, key, meta, limit
        self.name = secrets.token_hex(16)
        self.tmp_path = store.directory / "tmp" / self.name
        self._file: BinaryIO | None = open(self.tmp_path, "xb")  # noqa: SIM115 - closed in commit/abort
        self.size = 0
        self.too_large = False
        self.failed: OSError | None = None  # the disk refused a write: not stored
        self._done = False

    @property
    def storing(self) -> bool:
        """False once the body can no longer be stored (too large, disk refused, done)."""
        return not (self.too_large or self.failed is not None or self._done)

    def write(self, chunk: bytes) -> None:
        """Append a chunk (buffered, no fsync).  Past the size limit the body is
        dropped at once (temp file deleted) and ``commit`` will return None."""
        if self._done:
            raise StoreError("cache body writer used after commit/abort; start a new one with begin()")
        self.size += len(chunk)
        if self.too_large:
            return
        if self.size > self._limit:
            self.too_large = True
            self._discard()
            return
        if self.failed is not None:
            return
        assert self._file is not None
        try:
            self._file.write(chunk)
        except OSError as exc:
            # Disk full or a failing SD card: this body is not stored, but the villager
            # still gets the whole answer (the caller streams it on).
            self.failed = exc
            self._discard()

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp_path)

    def _worth_keeping(self) -> bool:
        return not self.too_large

    def _publish(self) -> Entry | None:
        return self._store._publish(self)


class CacheStore:
    """Disk store of cached responses keyed by ``key`` (e.g. "GET https://host/path?q"),
    several variants per key (one per distinct set of Vary request values)."""

    def __init__(self, directory: str | Path, max_bytes: int, *,
                 body_cache_bytes: int = BODY_CACHE_BYTES, body_cache_item: int = BODY_CACHE_ITEM) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_object_bytes = max_bytes // MAX_OBJECT_FRACTION
        self._lock = threading.RLock()
        self._touches: dict[int, float] = {}
        self._last_flush = time.monotonic()
        self._index = MemIndex()
        self._bodies = BodyCache(body_cache_bytes, body_cache_item)
        # Change notifications for views built on top of the index (gateway/cache/hitpath.py).
        self.changes = 0  # bumped after every change to the index, before the listeners run
        self._listeners: list[Callable[[str | None], None]] = []
        try:
            for sub in ("bodies", "tmp"):
                (self.directory / sub).mkdir(parents=True, exist_ok=True)
            self._lockfile = open(self.directory / "lock", "a+b")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise StoreError(f"cache directory {self.directory} is not writable ({exc}); "
                             "check local_services storage path and permissions") from exc
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lockfile.close()
            raise StoreError(f"cache directory {self.directory} is in use by another process; "
                             "stop it or use another directory") from exc
        self._db = self._open_db()
        self._recover()
        self._total = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])
        for row in self._db.execute(
                "SELECT id, key, meta, size, body, last_used, ranges FROM entries ORDER BY id"):
            self._index.add(self._entry(row))
        with self._lock:
            self._evict()

    # ------------------------------------------------------------------ setup

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.directory / "index.db", check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        _migrate(db)
        return db

    def _open_db(self) -> sqlite3.Connection:
        """Open the index; a corrupt index is moved aside (the cache is rebuildable), and
        one that cannot be written (disk full) runs in memory; both reported as degraded."""
        path = self.directory / "index.db"
        try:
            db = self._connect()
            problem = db.execute("PRAGMA quick_check").fetchone()[0]
            if problem == "ok":
                return db
            db.close()
        except sqlite3.DatabaseError as exc:
            if classify(exc) == "unwritable":
                return self._memory_db(path, exc)
            problem = str(exc)
        stamp = int(time.time())
        for suffix in ("", "-wal", "-shm"):
            src = self.directory / f"index.db{suffix}"
            if src.exists():
                os.replace(src, self.directory / f"index.db.corrupt-{stamp}{suffix}")
        DEGRADED.report("cache index", str(path), "corrupt",
                        f"{problem}; moved aside as index.db.corrupt-{stamp}, the cache "
                        "starts empty and fills again", moved_to=f"{path}.corrupt-{stamp}")
        try:
            return self._connect()
        except sqlite3.Error as exc:
            if classify(exc) == "unwritable":
                return self._memory_db(path, exc)
            raise StoreError(f"cannot create cache index in {self.directory}: {exc}") from exc

    @staticmethod
    def _memory_db(path: Path, exc: sqlite3.Error) -> sqlite3.Connection:
        """The index in memory, loaded from the file when it reads (so the cached bodies
        stay referenced and are not removed as orphans)."""
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        loaded = "a copy of it"
        try:
            src = open_readonly(path)
            try:
                src.backup(db)
            finally:
                src.close()
        except sqlite3.Error:
            loaded = "an empty one (the file does not read)"
        db.executescript(_SCHEMA)
        _migrate(db)
        DEGRADED.report("cache index", str(path), "unwritable",
                        f"{exc}; the cache index runs in memory ({loaded}) until restart",
                        memory_only=True)
        return db

    def _recover(self) -> None:
        """Delete temp files, rows without a complete body, and unreferenced bodies."""
        for tmp in (self.directory / "tmp").iterdir():
            with contextlib.suppress(OSError):
                tmp.unlink()
        bodies = self.directory / "bodies"
        referenced: set[str] = set()
        bad: list[int] = []
        for entry_id, body, size, ranges in self._db.execute(
                "SELECT id, body, size, ranges FROM entries").fetchall():
            partial = _partial_from_json(ranges)  # a partial body is as long as the whole
            try:
                ok = (bodies / body).stat().st_size == (size if partial is None else partial.length)
            except OSError:
                ok = False
            if ok:
                referenced.add(body)
            else:
                bad.append(entry_id)
        if bad:
            with self._tx():
                self._db.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in bad])
        for path in bodies.iterdir():
            if path.name not in referenced:
                with contextlib.suppress(OSError):
                    path.unlink()

    # ------------------------------------------------------------------ helpers

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"cache index update failed: {exc}; the cache keeps its previous state") from exc

    def _entry(self, row: tuple[int, str, str, int, str, float, str | None]) -> Entry:
        entry_id, key, meta, size, body, last_used, ranges = row
        last_used = max(last_used, self._touches.get(entry_id, last_used))
        return Entry(entry_id, key, _meta_from_json(meta), size, self.directory / "bodies" / body,
                     last_used, _partial_from_json(ranges))

    def _unlink_bodies(self, names: list[str]) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / "bodies" / name)

    # ------------------------------------------------------------------ reading

    def lookup(self, key: str) -> list[Entry]:
        """All stored variants for ``key`` (pick one with rules.pick_variant); from memory."""
        with self._lock:
            touches = self._touches
            out = []
            for e in self._index.get(key):
                t = touches.get(e.id)
                out.append(e if t is None or t <= e.last_used
                           else Entry(e.id, e.key, e.meta, e.size, e.path, t))
            return out

    def lookup_partial(self, key: str) -> list[Entry]:
        """The partial entries stored for ``key`` (one per Vary values); from memory."""
        with self._lock:
            return list(self._index.get_partials(key))

    def newest_response(self, key_prefix: str) -> float | None:
        """When the newest stored response under ``key_prefix`` arrived (None: nothing stored)."""
        pattern = key_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._lock:
            row = self._db.execute(
                "SELECT max(json_extract(meta, '$.response_time')) FROM entries "
                "WHERE key LIKE ? ESCAPE '\\'",
                (pattern,)).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def open_body(self, entry: Entry) -> BinaryIO | None:
        """The body opened for reading, or None if it is missing or not exactly
        ``entry.size`` bytes (then the entry is dropped: never serve a truncated body)."""
        try:
            f = open(entry.path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError:
            self._drop_broken(entry.id)
            return None
        if os.fstat(f.fileno()).st_size != entry.size:
            f.close()
            self._drop_broken(entry.id)
            return None
        return f

    @property
    def small_body_limit(self) -> int:
        """Bodies up to this size are read with ``read_small`` (and kept in memory)."""
        return self._bodies.max_item

    def read_small(self, entry: Entry) -> bytes | None:
        """The whole body of a small entry (``entry.size <= small_body_limit``), from memory
        after the first read.  None, and the entry is dropped, if the file is missing or
        not exactly ``entry.size`` bytes, as in ``open_body``."""
        name = entry.path.name
        with self._lock:
            data = self._bodies.get(entry.id, name)
        if data is not None:
            return data
        try:
            with open(entry.path, "rb") as f:
                data = f.read(entry.size + 1)
        except OSError:
            data = None
        if data is None or len(data) != entry.size:
            self._drop_broken(entry.id)
            return None
        with self._lock:
            current = self._index.by_id(entry.id)
            if current is not None and current.path.name == name:  # not deleted meanwhile
                self._bodies.put(entry.id, name, data)
        return data

    def _drop_broken(self, entry_id: int) -> None:
        with contextlib.suppress(StoreError):
            self.delete(entry_id)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._index), "bytes": self._total, "max_bytes": self.max_bytes}

    # ------------------------------------------------------------------ writing

    def begin(self, key: str, meta: StoredMeta) -> BodyWriter:
        """Start writing a body for ``key``/``meta``.  Bodies over ``max_object_bytes``
        (max_bytes / 8) are not cached: ``commit`` returns None."""
        try:
            return BodyWriter(self, key, meta, self.max_object_bytes)
        except OSError as exc:
            raise StoreError(f"cannot create a temp file in {self.directory / 'tmp'}: {exc}") from exc

    def _publish(self, writer: BodyWriter) -> Entry:
        final = self.directory / "bodies" / writer.name
        os.replace(writer.tmp_path, final)
        _fsync_dir(self.directory / "bodies")
        now = time.time()
        vary = _vary_key(writer.meta)
        with self._lock:
            try:
                with self._tx():
                    old = self._db.execute("SELECT id, size, body FROM entries WHERE key = ? AND vary = ?",
                                           (writer.key, vary)).fetchall()
                    self._db.executemany("DELETE FROM entries WHERE id = ?", [(r[0],) for r in old])
                    cur = self._db.execute(
                        "INSERT INTO entries (key, vary, meta, size, body, last_used) VALUES (?,?,?,?,?,?)",
                        (writer.key, vary, _meta_to_json(writer.meta), writer.size, writer.name, now))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(final)
                raise
            for r in old:
                self._forget(r[0])
            self._unlink_bodies([r[2] for r in old])
            self._total += writer.size - sum(r[1] for r in old)
            entry = Entry(int(cur.lastrowid or 0), writer.key, writer.meta, writer.size, final, now)
            self._index.add(entry)
            self._changed(writer.key)
            self._evict()
        return entry

    def begin_partial(self, key: str, meta: StoredMeta, first: int, last: int,
                      length: int) -> PartialWriter | None:
        """Start storing bytes ``first``..``last`` of a ``length``-byte representation (a
        206 answer; ``meta`` its metadata).  Combined into the partial entry of the same
        key, Vary values and strong validator; any other partial entry of that key and
        Vary values is replaced at commit.  None when the bytes held would pass
        ``max_object_bytes`` (nothing is stored).  See gateway/cache/partial.py."""
        return parts.begin(self, key, meta, first, last, length)

    def _publish_partial(self, writer: PartialWriter) -> Entry | None:
        return parts.publish(self, writer)

    def open_partial(self, entry: Entry) -> BinaryIO | None:
        """A partial entry's body opened for reading (held ranges only!), or None when it
        is missing or not as long as the representation (then the entry is dropped)."""
        assert entry.partial is not None
        try:
            f = open(entry.path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError:
            self._drop_broken(entry.id)
            return None
        if os.fstat(f.fileno()).st_size != entry.partial.length:
            f.close()
            self._drop_broken(entry.id)
            return None
        return f

    def _forget(self, entry_id: int) -> None:
        """Drop a deleted row from the memory views (lock held, after the commit)."""
        self._touches.pop(entry_id, None)
        old = self._index.remove(entry_id)
        self._bodies.discard(entry_id)
        if old is not None:
            self._changed(old.key)

    def on_change(self, listener: Callable[[str | None], None]) -> None:
        """Call ``listener(key)`` after every change to the entries of ``key`` (insert,
        replacement, 304 update, delete, eviction), ``listener(None)`` when everything goes
        (close).  It runs with the store's lock held, possibly on a worker thread: it must
        be quick and must not call the store."""
        self._listeners.append(listener)

    def _changed(self, key: str | None) -> None:
        self.changes += 1
        for listener in self._listeners:
            listener(key)

    def _evict(self) -> None:
        """Delete least recently used entries until the total fits (lock held)."""
        if self._total <= self.max_bytes:
            return
        self._flush_touches()
        victims: list[tuple[int, int, str]] = []
        excess = self._total - self.max_bytes
        for entry_id, size, body in self._db.execute(
                "SELECT id, size, body FROM entries WHERE key NOT IN (SELECT key FROM pins) "
                "ORDER BY last_used, id"):
            if excess <= 0:
                break
            victims.append((entry_id, size, body))
            excess -= size
        with self._tx():
            self._db.executemany("DELETE FROM entries WHERE id = ?", [(v[0],) for v in victims])
        for v in victims:
            self._forget(v[0])
        self._unlink_bodies([v[2] for v in victims])
        self._total -= sum(v[1] for v in victims)

    def set_pins(self, keys: set[str]) -> None:
        """Keep exactly ``keys`` from eviction from now on (durable).  Blocking (fsync)."""
        with self._lock:
            with self._tx():
                self._db.execute("DELETE FROM pins")
                self._db.executemany("INSERT INTO pins (key) VALUES (?)", [(k,) for k in sorted(keys)])
            self._evict()

    def pins(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT key FROM pins")}

    def update_meta(self, entry_id: int, meta: StoredMeta) -> None:
        """Replace the stored metadata (after a 304), atomically.  Blocking (fsync)."""
        with self._lock:
            with self._tx():
                self._db.execute("UPDATE entries SET meta = ?, vary = ? WHERE id = ?",
                                 (_meta_to_json(meta), _vary_key(meta), entry_id))
            old = self._index.by_id(entry_id)
            if old is not None:  # same body: the cached bytes stay valid
                self._index.replace(Entry(old.id, old.key, meta, old.size, old.path, old.last_used,
                                          old.partial))
                self._changed(old.key)

    def touch(self, entry_id: int, now: float) -> None:
        """Record a hit for LRU; in memory, flushed in batches (see module docstring)."""
        with self._lock:
            self._touches[entry_id] = now
            if time.monotonic() - self._last_flush >= TOUCH_FLUSH_SECONDS:
                with contextlib.suppress(StoreError):
                    self._flush_touches()

    def _flush_touches(self) -> None:
        self._last_flush = time.monotonic()
        if not self._touches:
            return
        pending, self._touches = self._touches, {}
        with self._tx():
            self._db.executemany("UPDATE entries SET last_used = MAX(last_used, ?) WHERE id = ?",
                                 [(t, i) for i, t in pending.items()])

    def flush(self) -> None:
        """Write pending LRU times now.  Blocking (fsync)."""
        with self._lock:
            self._flush_touches()

    def delete(self, entry_id: int) -> None:
        """Remove one entry and its body.  Blocking (fsync)."""
        with self._lock:
            row = self._db.execute("SELECT size, body FROM entries WHERE id = ?", (entry_id,)).fetchone()
            if row is None:
                return
            with self._tx():
                self._db.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
            self._forget(entry_id)
            self._total -= row[0]
            self._unlink_bodies([row[1]])

    def delete_key(self, key: str) -> None:
        """Remove every variant of ``key``, partial ones too (invalidation after an unsafe
        request)."""
        for entry in [*self.lookup(key), *self.lookup_partial(key)]:
            self.delete(entry.id)

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(StoreError):
                self._flush_touches()
            self._index.clear()
            self._bodies.clear()
            self._changed(None)
            self._db.close()
            self._lockfile.close()

    def __enter__(self) -> CacheStore:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()
