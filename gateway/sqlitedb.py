"""One durable SQLite connection, shared by the state store and the outbox.

WAL with synchronous=FULL: a committed transaction survives kill -9 and
power loss (NORMAL would be safe against kill -9 but may lose the last
commits at a power cut, and a lost login is a villager shut out, so every
commit pays its fsync). Files are owner-only (they hold voucher codes and
villagers' forms). Calls are serialised by a lock so worker threads may use it,
and sqlite3 errors become StoreError naming the file and what to check.

Opening classifies failures so the caller can heal instead of refusing to
start: :class:`Corrupt` (the file is damaged: move it aside) and
:class:`Unwritable` (disk full, read-only, I/O error: run on a copy in memory).
The healing policy (backups, moving aside, reporting) lives in
:mod:`gateway.store.heal`; this module only opens, checks and classifies.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from gateway.errors import StoreError

DB_MODE = 0o600
JOURNAL_MODE = "wal"
SYNCHRONOUS_FULL = 2  # PRAGMA synchronous value for FULL

_CORRUPT = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
_UNWRITABLE = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_READONLY",
               "SQLITE_PERM")


class Corrupt(StoreError):
    """The database file is damaged (not a database, or fails its integrity check)."""


class Unwritable(StoreError):
    """The database file cannot be created or written (disk full, read-only, I/O error)."""


def classify(exc: sqlite3.Error) -> str:
    """"corrupt", "unwritable" or "other", from SQLite's own error code."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(_CORRUPT):
        return "corrupt"
    if name.startswith(_UNWRITABLE):
        return "unwritable"
    return "other"


def restrict(path: str) -> None:
    """Create ``path`` (and tighten it and its WAL files) as owner-only.

    A new file's directory entry is fsynced: SQLite syncs the file's data, and on
    file systems other than ext4 that does not make its name survive a power cut."""
    created = not os.path.exists(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, DB_MODE)
    try:
        os.fchmod(fd, DB_MODE)
    finally:
        os.close(fd)
    if created:
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    for extra in (path + "-wal", path + "-shm"):
        with suppress(FileNotFoundError):
            os.chmod(extra, DB_MODE)


def quick_check(conn: sqlite3.Connection) -> str:
    """"ok" or SQLite's first complaint. Reads every page: O(size), once at open."""
    row = conn.execute("PRAGMA quick_check(1)").fetchone()
    return str(row[0]) if row else "no answer"


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """Open ``path`` for reading only, without writing anything next to it.

    A WAL database normally needs its -shm file (created on open); on a full or
    read-only disk that fails, so fall back to ``immutable=1``, which reads the
    main file alone (complete after a clean stop; a crash's last commits in the
    -wal are then missed). Raises sqlite3.Error."""
    uri = f"file:{quote(str(path))}"
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False)
    try:
        conn.execute("PRAGMA schema_version").fetchone()
        return conn
    except sqlite3.Error:
        conn.close()
    conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False)
    conn.execute("PRAGMA schema_version").fetchone()
    return conn


class Healing(Protocol):
    """Opens a :class:`Database` whatever state its file is in (gateway.store.heal)."""

    def open(self, db: Database) -> sqlite3.Connection: ...


class Database:
    def __init__(self, path: str | Path, schema: str, version: int, what: str,
                 foreign_keys: bool = False, *, healing: Healing | None = None) -> None:
        self.path = str(path)
        self.what = what  # e.g. "state database", for messages
        self.schema = schema
        self.version = version
        self.foreign_keys = foreign_keys
        self.memory = False  # True: running on an in-memory copy (see open_memory)
        # Called with ("corrupt" | "unwritable", error) when a read or write fails that
        # way after the open (a disk that filled, an SD card going bad), and with
        # ("writable", None) at the first commit after an "unwritable"; set by the healing.
        self.on_failure: Callable[[str, sqlite3.Error | None], None] | None = None
        self._unwritable = False
        self.lock = threading.RLock()
        self.conn = healing.open(self) if healing is not None else self.open_file()

    # -- opening -----------------------------------------------------------------

    def open_file(self) -> sqlite3.Connection:
        """Open (creating) the file, WAL + synchronous=FULL, schema, integrity checked.

        Raises Corrupt, Unwritable, or StoreError for anything else."""
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            restrict(self.path)
        except OSError as exc:
            raise Unwritable(
                f"cannot create {self.what} {self.path}: {exc.strerror or exc}; "
                "check that its directory is writable by root and the disk is not full"
            ) from exc
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            mode = conn.execute(f"PRAGMA journal_mode={JOURNAL_MODE}").fetchone()[0]
            if str(mode).lower() != JOURNAL_MODE:
                raise Unwritable(f"cannot switch {self.what} {self.path} to WAL (got {mode})")
            self._prepare(conn)
            problem = quick_check(conn)
            if problem != "ok":
                raise Corrupt(f"{self.what} {self.path} fails its integrity check: {problem}")
            return conn
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            kind = classify(exc)
            cls = Corrupt if kind == "corrupt" else Unwritable if kind == "unwritable" \
                else StoreError
            raise cls(f"cannot open {self.what} {self.path}: {exc}") from exc
        except StoreError:
            if conn is not None:
                conn.close()
            raise

    def open_memory(self, source: str | None) -> sqlite3.Connection:
        """An in-memory database, loaded from ``source`` (a readable copy) when given.

        The last resort when the file cannot be written: the hotspot keeps working,
        and what changes is lost at restart (the caller reports it)."""
        conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        if source is not None:
            src = open_readonly(source)
            try:
                src.backup(conn)
            finally:
                src.close()
        self._prepare(conn)
        self.memory = True
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA synchronous=FULL")
        if self.foreign_keys:
            conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(self.schema)
        # Written only when it changes: a start on a full disk should not need a write.
        if conn.execute("PRAGMA user_version").fetchone()[0] != self.version:
            conn.execute(f"PRAGMA user_version={self.version}")

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def _failed(self, exc: sqlite3.Error) -> None:
        kind = classify(exc)
        self._unwritable = self._unwritable or kind == "unwritable"
        if kind != "other" and self.on_failure is not None:
            self.on_failure(kind, exc)

    # -- use -----------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """Reads outside a transaction; errors become StoreError like writes."""
        with self.lock:
            try:
                yield self.conn
            except sqlite3.Error as exc:
                self._failed(exc)
                raise StoreError(
                    f"{self.what} error in {self.path}: {exc}; "
                    "check the disk (SD card) and the file's permissions"
                ) from exc

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: all of it is committed, or none."""
        with self.lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                yield self.conn
                self.conn.execute("COMMIT")
                if self._unwritable:
                    self._unwritable = False
                    if self.on_failure is not None:
                        self.on_failure("writable", None)
            except sqlite3.Error as exc:
                with suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
                self._failed(exc)
                hint = " (the disk is full: free space on the SD card)" \
                    if getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" else ""
                raise StoreError(f"{self.what} error in {self.path}: {exc}{hint}") from exc
            except BaseException:
                with suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
                raise
