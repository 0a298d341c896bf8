"""Open a database whatever state its file is in, and say what was done.

The hotspot must start even when its database is damaged: DHCP, DNS and the
portal matter more than the history. At open:

- **missing** (there are backups of it, so it existed): any orphaned -wal/-shm
  are moved aside and the newest good backup is copied in;
- **corrupt** (not a database, or fails ``PRAGMA quick_check``): the file and its
  -wal/-shm are renamed ``<name>.corrupt-<UTC time>`` (never deleted: someone may
  recover from it) and the newest good backup is copied in, else a fresh one;
- **unwritable** (disk full, read-only file system, I/O error): the daemon runs
  on an in-memory copy of the file (or of the newest backup): logins work, and
  what changes is lost at restart.

Each case is reported to :data:`gateway.store.health.DEGRADED` (the log and
``desanet status``). Then :func:`adopt_kernel_sessions` keeps the villagers the
kernel still lets through (see its docstring for the rule).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import DesanetError, StoreError
from gateway.model import Session
from gateway.sqlitedb import Corrupt, Database, Unwritable
from gateway.store.backup import check_file, copy_in, latest_good, list_backups, move_aside
from gateway.store.health import DEGRADED, Health, Problem

if TYPE_CHECKING:
    from gateway.ports import FirewallPort
    from gateway.store.db import AsyncStore

log = logging.getLogger("desanet.store")

RESTORED_REASON = "restored"  # a backup's session the kernel no longer lets through


class Heal:
    """The :class:`gateway.sqlitedb.Healing` policy: backups in ``backups`` (or none)."""

    def __init__(self, backups: str | Path | None = None, health: Health = DEGRADED) -> None:
        self.backups = Path(backups) if backups is not None else None
        self.health = health
        self.problem: Problem | None = None  # what was healed at open, if anything
        self.created = False  # the file did not exist (first start, or lost without backups)

    @property
    def lost(self) -> bool:
        """The sessions on file at the last run may be gone or older than the kernel's."""
        return self.problem is not None and self.problem.problem in ("missing", "corrupt",
                                                                    "unwritable")

    def _good_backup(self, stem: str) -> Path | None:
        return latest_good(self.backups, stem) if self.backups is not None else None

    def open(self, db: Database) -> sqlite3.Connection:
        db.on_failure = lambda kind, exc: self._failed_at_runtime(db, kind, exc)
        path = Path(db.path)
        stem = path.stem
        if not path.exists():
            self.created = True
            if self.backups is not None and list_backups(self.backups, stem):
                return self._missing(db, path, stem)
        try:
            return db.open_file()
        except Corrupt as exc:
            return self._corrupt(db, path, stem, exc)
        except Unwritable as exc:
            return self._unwritable(db, path, stem, exc)

    def _failed_at_runtime(self, db: Database, kind: str, exc: sqlite3.Error | None) -> None:
        if kind == "writable":
            if self.health.resolve(db.path, "unwritable at runtime"):
                log.warning("%s %s can be written again", db.what, db.path)
            return
        what = ("is damaged: restart desanet to move it aside and restore the last backup"
                if kind == "corrupt" else
                "cannot be written (disk full?): logins and vouchers cannot be saved until "
                "there is room on the disk (SD card)")
        self.health.report(db.what, db.path, f"{kind} at runtime", f"{exc}; the file {what}")

    def _missing(self, db: Database, path: Path, stem: str) -> sqlite3.Connection:
        orphans = None
        if _companions(path):
            try:
                orphans = move_aside(path, "orphan")
            except OSError as err:  # SQLite would replay them into the restored copy
                log.error("cannot move the orphaned -wal/-shm of %s aside: %s", path, err)
                return self._unwritable(db, path, stem, Unwritable(str(err)))
        good = self._good_backup(stem)
        conn, memory = self._restore(db, path, good)
        what = f"restored from the backup {good}" if good else "no usable backup: started empty"
        self.problem = self.health.report(
            db.what, str(path), "missing",
            f"the file was gone at start; {what}. Changes since that backup (logins, "
            "vouchers used) are lost; the kernel's current logins are kept."
            + (" The disk cannot be written: running in memory." if memory else ""),
            moved_to=orphans, restored_from=str(good) if good else None, memory_only=memory)
        return conn

    def _corrupt(self, db: Database, path: Path, stem: str, exc: StoreError
                 ) -> sqlite3.Connection:
        try:
            moved = move_aside(path, "corrupt")
        except OSError as err:
            # Cannot even rename it: run on memory, leave the file for an operator.
            log.error("cannot move the damaged %s %s aside: %s", db.what, path, err)
            good = self._good_backup(stem)
            conn = db.open_memory(str(good) if good else None)
            self.problem = self.health.report(
                db.what, str(path), "corrupt",
                f"{exc}; it could not be moved aside ({err.strerror or err}): running on "
                + (f"a copy of the backup {good}" if good else "an empty database")
                + " in memory, changes are lost at restart",
                restored_from=str(good) if good else None, memory_only=True)
            return conn
        good = self._good_backup(stem)
        conn, memory = self._restore(db, path, good)
        what = f"restored from the backup {good}" if good else "no usable backup: started empty"
        self.problem = self.health.report(
            db.what, str(path), "corrupt",
            f"{exc}; the damaged file is kept as {moved}; {what}."
            + (" The disk cannot be written: running in memory." if memory else ""),
            moved_to=moved, restored_from=str(good) if good else None, memory_only=memory)
        return conn

    def _unwritable(self, db: Database, path: Path, stem: str, exc: StoreError
                    ) -> sqlite3.Connection:
        source: str | None = None
        try:
            readable = path.stat().st_size > 0 and check_file(path) == "ok"
        except OSError:
            readable = False
        if readable:
            source = str(path)
        else:
            good = self._good_backup(stem)
            source = str(good) if good else None
        try:
            conn = db.open_memory(source)
        except sqlite3.Error as err:
            log.error("cannot load %s into memory (%s); starting empty", source, err)
            source = None
            conn = db.open_memory(None)
        self.problem = self.health.report(
            db.what, str(path), "unwritable",
            f"{exc}; running on an in-memory copy"
            + (f" of {source}" if source else " (empty)")
            + ": the hotspot works, but what changes is lost at restart. "
            "Free space on the disk (SD card) and restart desanet.",
            restored_from=source if source != str(path) else None, memory_only=True)
        return conn

    @staticmethod
    def _restore(db: Database, path: Path, good: Path | None) -> tuple[sqlite3.Connection, bool]:
        """Copy ``good`` in and open it (or a fresh file); in memory if the disk refuses."""
        try:
            if good is not None:
                copy_in(good, path)
            return db.open_file(), False
        except (OSError, sqlite3.Error, Unwritable, Corrupt) as exc:
            log.error("cannot write %s %s (%s); running it in memory", db.what, path, exc)
            return db.open_memory(str(good) if good else None), True


def _companions(path: Path) -> bool:
    return any(Path(f"{path}{s}").exists() for s in ("-wal", "-shm"))


async def adopt_kernel_sessions(store: AsyncStore, firewall: FirewallPort, heal: Heal,
                                idle_timeout: int, now: int) -> tuple[int, int]:
    """After the store was lost or restored, keep the kernel's current logins.

    The rule: the kernel's authorized set is the truth for who is online *now*
    (a backup is up to 10 minutes old; a fresh store knows nobody). Each
    (MAC, address) the kernel lets through without a session in the store is
    adopted as a session (source "manual") ending when the kernel's entry would,
    with the current idle timeout and the default plan (the voucher and plan are
    not known). After a restore from a backup, a backup's session the kernel no
    longer lets through is ended ("restored"): it ended since the backup.
    When the firewall table does not exist (after a reboot) the store stays as
    it is. Runs only when :attr:`Heal.lost`, or on a new store while the kernel
    still authorizes clients (then the file was lost without a backup).
    Returns (adopted, ended).
    """
    if not (heal.lost or heal.created):
        return 0, 0
    try:
        kernel = await firewall.authorized_clients()
    except DesanetError:
        return 0, 0  # no table yet: nothing to keep
    if heal.created and not heal.lost:
        if not kernel:
            return 0, 0  # a first start
        heal.problem = heal.health.report(
            "state database", store.path, "missing",
            "the file was gone at start and there was no backup: every voucher and "
            "session history is lost; the kernel's current logins are kept")
    active = await store.active_sessions(now)
    known_macs = {s.mac for s in active}
    adopted = ended = 0
    for (mac, ip), left in sorted(kernel.items()):
        if mac in known_macs:
            continue
        try:
            await store.start_session(Session(mac, ip, now, now + max(1, left), idle_timeout,
                                              "manual"))
        except StoreError as exc:
            log.error("cannot adopt the kernel's login of %s (%s): %s", mac, ip, exc)
            continue
        known_macs.add(mac)
        adopted += 1
    restored = heal.problem is not None and heal.problem.restored_from is not None
    if restored:
        for s in active:
            if (s.mac, s.ip) not in kernel:
                await store.end_session(s.mac, now, RESTORED_REASON)
                ended += 1
    if adopted or ended:
        log.error("DEGRADED: kept %d logins the kernel still allows as sessions; ended %d "
                  "sessions of the backup that had ended since", adopted, ended)
    return adopted, ended
