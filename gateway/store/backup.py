"""Consistent copies of a live SQLite database, and putting one back.

A backup is taken with SQLite's online backup API from the daemon's own
connection (under its lock, so no transaction is half in it), written to a
temporary file in the backup directory, integrity-checked, fsynced, renamed
into place and the directory fsynced: a power cut leaves the previous backups
or the new one, never a torn file. Only the newest ``keep`` are kept, and a copy
that fails its check never replaces a good one.

Names sort by time: ``<stem>-YYYYmmddTHHMMSSZ.db`` (plus ``-N`` when two land in
one second). Everything here blocks: the daemon runs it on the database worker.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from pathlib import Path

from gateway.errors import StoreError
from gateway.sqlitedb import DB_MODE, Database, open_readonly, quick_check

BACKUP_INTERVAL = 600.0  # seconds between periodic backups
KEEP = 2
_STAMP = "%Y%m%dT%H%M%SZ"


def stamp(now: float | None = None) -> str:
    return time.strftime(_STAMP, time.gmtime(time.time() if now is None else now))


def fsync_dir(directory: str | Path) -> None:
    fd = os.open(directory, os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pattern(stem: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(stem)}-(\d{{8}}T\d{{6}}Z)(?:-(\d+))?\.db$")


def list_backups(directory: str | Path, stem: str) -> list[Path]:
    """The backups of ``stem`` in ``directory``, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    pat = _pattern(stem)
    found = []
    for p in d.iterdir():
        m = pat.match(p.name)
        if m:
            found.append(((m.group(1), int(m.group(2) or 0)), p))
    return [p for _, p in sorted(found)]


def check_file(path: str | Path) -> str:
    """"ok", or why ``path`` is not a usable database (read-only open, quick_check)."""
    try:
        conn = open_readonly(path)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        return quick_check(conn)
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        conn.close()


def latest_good(directory: str | Path, stem: str) -> Path | None:
    """The newest backup that passes its integrity check (a damaged one is skipped)."""
    for path in reversed(list_backups(directory, stem)):
        if check_file(path) == "ok":
            return path
    return None


def _unique(directory: Path, stem: str, now: float | None) -> Path:
    base = f"{stem}-{stamp(now)}"
    path = directory / f"{base}.db"
    n = 1
    while path.exists():
        path = directory / f"{base}-{n}.db"
        n += 1
    return path


def backup(db: Database, directory: str | Path, keep: int = KEEP,
           now: float | None = None) -> Path:
    """Write a consistent, checked copy of ``db`` into ``directory``; keep the newest ``keep``.

    Raises StoreError (disk full, a damaged source); the older backups stay."""
    d = Path(directory)
    stem = Path(db.path).stem
    tmp = d / f".{stem}.backup.tmp"
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, DB_MODE)
        os.close(fd)
        target = sqlite3.connect(tmp)
        try:
            with db.lock:
                db.conn.backup(target)
            problem = quick_check(target)
        finally:
            target.close()
        if problem != "ok":
            raise StoreError(f"backup of {db.what} {db.path} fails its check ({problem}); "
                             "the older backups are kept")
        fsync_file(tmp)
        final = _unique(d, stem, now)
        os.replace(tmp, final)
        fsync_dir(d)
    except (OSError, sqlite3.Error) as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot back up {db.what} {db.path} into {d}: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for old in list_backups(d, stem)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def copy_in(source: str | Path, path: str | Path) -> None:
    """Make ``path`` a copy of the backup ``source`` (temp file, fsync, rename, fsync dir)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.restore.tmp")
    tmp.unlink(missing_ok=True)
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, DB_MODE)
        os.close(fd)
        src = open_readonly(source)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        fsync_file(tmp)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def move_aside(path: str | Path, label: str, now: float | None = None) -> str | None:
    """Rename ``path`` and its -wal/-shm to ``<path>.<label>-<time>``; never delete.

    Returns the new name of the main file (None if only companions existed)."""
    p = Path(path)
    base = f"{p.name}.{label}-{stamp(now)}"
    n = 0
    while any((p.parent / f"{base}{'-' + str(n) if n else ''}{s}").exists()
              for s in ("", "-wal", "-shm")):
        n += 1
    if n:
        base = f"{base}-{n}"
    moved: str | None = None
    for suffix in ("", "-wal", "-shm"):
        src = p.parent / f"{p.name}{suffix}"
        if src.exists():
            dst = p.parent / f"{base}{suffix}"
            os.replace(src, dst)
            if not suffix:
                moved = str(dst)
    fsync_dir(p.parent)
    return moved
