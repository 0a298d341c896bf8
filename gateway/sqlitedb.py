"""One durable SQLite connection, shared by the state store and the outbox.

WAL with synchronous=FULL: a committed transaction survives kill -9 and
power loss. Files are owner-only (they hold voucher codes and villagers'
forms). Calls are serialised by a lock so worker threads may use it, and
sqlite3 errors become StoreError naming the file and what to check.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from gateway.errors import StoreError

DB_MODE = 0o600


def restrict(path: str) -> None:
    """Create ``path`` (and tighten it and its WAL files) as owner-only."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, DB_MODE)
    try:
        os.fchmod(fd, DB_MODE)
    finally:
        os.close(fd)
    for extra in (path + "-wal", path + "-shm"):
        with suppress(FileNotFoundError):
            os.chmod(extra, DB_MODE)


class Database:
    def __init__(self, path: str | Path, schema: str, version: int, what: str,
                 foreign_keys: bool = False) -> None:
        self.path = str(path)
        self.what = what  # e.g. "state database", for messages
        self.lock = threading.RLock()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            restrict(self.path)
        except OSError as exc:
            raise StoreError(
                f"cannot create {what} {self.path}: {exc.strerror or exc}; "
                "check that its directory is writable by root"
            ) from exc
        try:
            self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            if foreign_keys:
                self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.execute("PRAGMA busy_timeout=5000")
            self.conn.executescript(schema)
            self.conn.execute(f"PRAGMA user_version={version}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {what} {self.path}: {exc}") from exc

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """Reads outside a transaction; errors become StoreError like writes."""
        with self.lock:
            try:
                yield self.conn
            except sqlite3.Error as exc:
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
            except sqlite3.Error as exc:
                with suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
                raise StoreError(f"{self.what} error in {self.path}: {exc}") from exc
            except BaseException:
                with suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
                raise
