"""A missing, corrupt or unwritable database: healed around, reported, restorable.

Also checks the durability settings each write relies on (WAL, synchronous=FULL,
fsync of file and directory around every atomic rename), since power-loss
safety is a property of these settings and cannot be seen in a unit test.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cache.outbox import Outbox
from gateway.cache.store import CacheStore
from gateway.cli_format import degraded_status_lines
from gateway.config.loader import write_file_atomic
from gateway.errors import FirewallError, StoreError
from gateway.firewall.fake import FakeFirewall
from gateway.kernel import DatabaseWorker
from gateway.model import Session, Voucher
from gateway.sqlitedb import SYNCHRONOUS_FULL, Unwritable
from gateway.store import Store
from gateway.store import backup as backup_mod
from gateway.store.backup import backup, latest_good, list_backups
from gateway.store.db import AsyncStore
from gateway.store.heal import adopt_kernel_sessions
from gateway.store.health import DEGRADED

NOW = 1_700_000_000
A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    DEGRADED.clear()
    yield
    DEGRADED.clear()


def sess(mac: str, ip: str, expires: int = NOW + 3600) -> Session:
    return Session(mac, ip, NOW, expires, 600, "terms")


def filled(path: Path) -> Store:
    store = Store(path)
    store.start_session(sess(A, "10.42.0.10"))
    store.add_vouchers([Voucher("ABCDE-FGHJK", 3600, None, NOW, "b1")])
    return store


def problems() -> list[str]:
    return [p.problem for p in DEGRADED.problems()]


# -- settings each write relies on --------------------------------------------------------


def test_every_database_is_wal_with_synchronous_full(tmp_path: Path) -> None:
    store = Store(tmp_path / "desanet.db")
    outbox = Outbox(tmp_path / "outbox.db")
    cache = CacheStore(tmp_path / "cache", 1 << 20)
    conns = [store._database.conn, outbox._database.conn, cache._db]
    for conn in conns:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # FULL, not NORMAL: NORMAL survives kill -9 but a power cut may lose the last
        # commits, and a lost login shuts a paying villager out.
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == SYNCHRONOUS_FULL
    for path in (tmp_path / "desanet.db", tmp_path / "outbox.db"):
        assert path.stat().st_mode & 0o777 == 0o600
    store.close()
    outbox.close()
    cache.close()


class SyscallLog:
    """Records fsync (of a file or a directory) and rename calls, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            self.calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
            self.calls.append(("rename", str(dst)))
            real_replace(src, dst)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def check_atomic(self, target: Path) -> None:
        """The new file is fsynced before the rename, the directory after it."""
        i = self.calls.index(("rename", str(target)))
        assert self.calls[i - 1][0] == "fsync" and self.calls[i - 1][1] != str(target.parent)
        assert ("fsync", str(target.parent)) in self.calls[i + 1:]


def test_config_writes_are_atomic_with_fsync_of_file_and_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = SyscallLog(monkeypatch)
    target = tmp_path / "gateway.toml"
    write_file_atomic(target, "a = 1\n")
    log.check_atomic(target)
    assert target.read_text() == "a = 1\n"


def test_backups_and_restores_are_atomic_with_fsync(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store = filled(tmp_path / "desanet.db")
    log = SyscallLog(monkeypatch)
    made = store.backup()
    assert made is not None
    log.check_atomic(made)
    store.close()
    log.calls.clear()
    backup_mod.copy_in(made, tmp_path / "copy.db")
    log.check_atomic(tmp_path / "copy.db")


# -- backups ------------------------------------------------------------------------------


def test_backup_restore_round_trip_keeps_the_newest_two(tmp_path: Path) -> None:
    store = filled(tmp_path / "desanet.db")
    made = [backup(store._database, tmp_path / "backups", now=NOW + i) for i in range(3)]
    assert list_backups(tmp_path / "backups", "desanet") == made[1:]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in made[1:])
    store.start_session(sess(B, "10.42.0.11"))  # after the last backup: lost with the file
    store.close()
    os.unlink(tmp_path / "desanet.db")

    again = Store(tmp_path / "desanet.db")
    assert again.heal.problem is not None and again.heal.problem.problem == "missing"
    assert again.heal.problem.restored_from == str(made[2])
    assert [s.mac for s in again.active_sessions(NOW)] == [A]
    assert [v.code for v in again.vouchers()] == ["ABCDE-FGHJK"]
    assert problems() == ["missing"]


def test_a_damaged_backup_is_skipped_and_never_replaces_a_good_one(tmp_path: Path) -> None:
    store = filled(tmp_path / "desanet.db")
    good = backup(store._database, tmp_path / "backups", now=NOW)
    bad = backup(store._database, tmp_path / "backups", now=NOW + 1)
    bad.write_bytes(b"garbage" * 100)
    assert latest_good(tmp_path / "backups", "desanet") == good
    store.close()


def test_first_start_is_not_degraded(tmp_path: Path) -> None:
    store = Store(tmp_path / "desanet.db")
    assert store.heal.created and store.heal.problem is None and not store.heal.lost
    store.close()
    again = Store(tmp_path / "desanet.db")
    assert not again.heal.created and again.heal.problem is None
    assert problems() == []


# -- corruption ---------------------------------------------------------------------------


def test_garbage_over_the_database_is_moved_aside_and_the_backup_restored(tmp_path: Path) -> None:
    path = tmp_path / "desanet.db"
    store = filled(path)
    made = store.backup()
    store.close()
    garbage = os.urandom(8192)
    path.write_bytes(garbage)

    healed = Store(path)
    p = healed.heal.problem
    assert p is not None and p.problem == "corrupt" and p.restored_from == str(made)
    assert p.moved_to is not None and Path(p.moved_to).read_bytes() == garbage  # never deleted
    assert Path(p.moved_to).name.startswith("desanet.db.corrupt-")
    assert [s.mac for s in healed.active_sessions(NOW)] == [A]
    healed.start_session(sess(C, "10.42.0.12"))  # and it works
    assert problems() == ["corrupt"]


def test_a_damaged_page_inside_a_valid_file_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "desanet.db"
    store = Store(path)
    store.add_vouchers([Voucher(f"V{i:04d}-XXXXX", 3600, None, NOW, "b") for i in range(2000)])
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    assert data.startswith(b"SQLite format 3\x00")
    page = int.from_bytes(data[16:18], "big")
    for off in range(page * 3, page * 6):  # pages 4-6: b-tree pages, header intact
        data[off] = 0x5A
    path.write_bytes(bytes(data))

    healed = Store(path)  # no backup: a fresh, empty store, the damaged one kept
    assert healed.heal.problem is not None and healed.heal.problem.problem == "corrupt"
    assert healed.heal.problem.restored_from is None
    assert healed.vouchers() == []
    assert Path(healed.heal.problem.moved_to or "").exists()


def test_positive_control_a_healthy_database_is_opened_as_is(tmp_path: Path) -> None:
    path = tmp_path / "desanet.db"
    filled(path).close()
    store = Store(path)
    assert store.heal.problem is None
    assert [s.mac for s in store.active_sessions(NOW)] == [A]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["desanet.db", "desanet.db-shm",
                                                          "desanet.db-wal"]


def test_a_corrupt_outbox_alone_is_moved_aside_and_started_fresh(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"\x00not a database" * 500)
    outbox = Outbox(path)
    sub = outbox.enqueue("svc", "POST", "/f", [], b"x=1", NOW)
    assert outbox.get(sub.ref) is not None
    assert problems() == ["corrupt"]
    assert [q.what for q in DEGRADED.problems()] == ["submission outbox"]
    assert any(p.name.startswith("outbox.db.corrupt-") for p in tmp_path.iterdir())
    outbox.close()


def test_a_corrupt_cache_index_is_reported(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "index.db").write_bytes(b"garbage" * 1000)
    cache = CacheStore(tmp_path / "cache", 1 << 20)
    assert [(q.what, q.problem) for q in DEGRADED.problems()] == [("cache index", "corrupt")]
    cache.close()


# -- a disk that cannot be written ----------------------------------------------------------


def test_an_unwritable_database_runs_in_memory_from_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "desanet.db"
    filled(path).close()

    def full(self: object) -> sqlite3.Connection:
        raise Unwritable("database or disk is full")

    monkeypatch.setattr("gateway.sqlitedb.Database.open_file", full)
    store = Store(path)
    assert store.memory_only and store.heal.problem is not None
    assert store.heal.problem.problem == "unwritable" and store.heal.problem.memory_only
    assert [s.mac for s in store.active_sessions(NOW)] == [A]  # loaded from the file
    store.start_session(sess(B, "10.42.0.11"))  # logins still work (in memory)
    assert store.backup() is None  # never overwrites a good backup with a memory copy
    store.close()


def test_a_full_disk_at_write_is_a_clear_store_error(tmp_path: Path) -> None:
    store = Store(tmp_path / "desanet.db")
    db = store._database

    class Full:
        def execute(self, sql: str, *args: object) -> object:
            if sql.startswith(("BEGIN", "ROLLBACK")):
                return None
            err = sqlite3.OperationalError("database or disk is full")
            err.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
            raise err

    real = db.conn
    db.conn = Full()  # type: ignore[assignment]
    with pytest.raises(StoreError, match="disk is full"):
        store.start_session(sess(A, "10.42.0.10"))
    assert problems() == ["unwritable at runtime"]  # shown in `desanet status`
    db.conn = real
    store.start_session(sess(A, "10.42.0.10"))  # room again: the problem goes away
    assert problems() == []
    store.close()


def test_corruption_found_at_runtime_is_reported(tmp_path: Path) -> None:
    store = Store(tmp_path / "desanet.db")
    db = store._database

    class Damaged:
        def execute(self, sql: str, *args: object) -> object:
            err = sqlite3.DatabaseError("database disk image is malformed")
            err.sqlite_errorname = "SQLITE_CORRUPT"  # type: ignore[attr-defined]
            raise err

    real = db.conn
    db.conn = Damaged()  # type: ignore[assignment]
    with pytest.raises(StoreError):
        store.active_sessions(NOW)
    assert problems() == ["corrupt at runtime"]
    db.conn = real
    store.close()


# -- the kernel's logins are kept -----------------------------------------------------------


async def test_a_lost_store_adopts_the_kernels_logins(tmp_path: Path) -> None:
    path = tmp_path / "desanet.db"
    store = filled(path)
    store.backup()
    store.close()
    os.unlink(path)
    fw = FakeFirewall()
    # The kernel: A logged out since the backup; B logged in since; C still on.
    fw.authorized = {(B, "10.42.0.11"): 1200, (C, "10.42.0.12"): 300}
    worker = DatabaseWorker()
    healed = Store(path)
    astore = AsyncStore(healed, worker)
    assert await adopt_kernel_sessions(astore, fw, healed.heal, 900, NOW) == (2, 1)
    active = {s.mac: s for s in healed.active_sessions(NOW)}
    assert sorted(active) == [B, C]
    assert active[B].expires == NOW + 1200 and active[B].idle_timeout == 900
    assert active[B].ip == "10.42.0.11"
    await astore.close()
    worker.shutdown()


async def test_a_lost_store_without_a_firewall_table_keeps_the_backup(tmp_path: Path) -> None:
    path = tmp_path / "desanet.db"
    store = filled(path)
    store.backup()
    store.close()
    os.unlink(path)
    fw = FakeFirewall()
    fw.fail_on["authorized_clients"] = FirewallError("no table")  # after a reboot
    worker = DatabaseWorker()
    healed = Store(path)
    astore = AsyncStore(healed, worker)
    assert await adopt_kernel_sessions(astore, fw, healed.heal, 900, NOW) == (0, 0)
    assert [s.mac for s in healed.active_sessions(NOW)] == [A]
    await astore.close()
    worker.shutdown()


async def test_a_store_lost_without_backup_is_detected_by_the_kernels_logins(
        tmp_path: Path) -> None:
    fw = FakeFirewall()
    fw.authorized = {(B, "10.42.0.11"): 1200}
    worker = DatabaseWorker()
    fresh = Store(tmp_path / "desanet.db")
    astore = AsyncStore(fresh, worker)
    assert await adopt_kernel_sessions(astore, fw, fresh.heal, 900, NOW) == (1, 0)
    assert problems() == ["missing"]
    await astore.close()
    worker.shutdown()


async def test_positive_control_a_healthy_store_adopts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "desanet.db"
    filled(path).close()
    fw = FakeFirewall()
    fw.authorized = {(B, "10.42.0.11"): 1200}  # e.g. a login the other rebuild handles
    worker = DatabaseWorker()
    store = Store(path)
    astore = AsyncStore(store, worker)
    assert await adopt_kernel_sessions(astore, fw, store.heal, 900, NOW) == (0, 0)
    assert [s.mac for s in store.active_sessions(NOW)] == [A]
    await astore.close()
    worker.shutdown()


# -- reporting ------------------------------------------------------------------------------


def test_status_lines_name_each_problem() -> None:
    assert degraded_status_lines([]) == []
    DEGRADED.report("state database", "/var/lib/desanet/desanet.db", "corrupt",
                    "moved aside; restored from the backup")
    lines = degraded_status_lines(DEGRADED.json(), "Asia/Jakarta")
    assert lines[0].startswith("  DEGRADED:        1 problem(s)")
    assert "state database corrupt since" in lines[1] and "restored from the backup" in lines[1]


def test_a_problem_is_reported_once_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    for _ in range(3):
        DEGRADED.report("state database", "/x.db", "backup failing", "disk full")
    assert len(DEGRADED.problems()) == 1
    assert "DEGRADED" in caplog.text


# -- every file write is accounted for --------------------------------------------------------

# Each place in gateway/ that writes a file, and why it is power-cut safe. A new write
# anywhere else fails this test: route it through write_file_atomic (config/loader.py)
# or add it here with its reason after review.
ALLOWED_WRITES = {
    "config/loader.py": "write_file_atomic itself: temp file, fsync, rename, fsync dir",
    "cache/partial.py": "206 parts: a new part is a tmp/ file, fsync, rename, fsync dir; a "
                        "combined part is written in place only into holes no index row "
                        "claims, fsync'ed before its row grows",
    "cache/store.py": "bodies: tmp/ file, fsync, rename into bodies/, fsync dir; the lock "
                      "file is only flock'ed",
    "services/dnsmasq.py": "files under run_dir (tmpfs /run), rewritten at every start: "
                           "temp file + rename so dnsmasq never reads half a file",
    "daemon/servers.py": "/proc/sys (a sysctl, not a file on disk)",
    "firewall/adapter.py": "/proc/sys rp_filter (a sysctl, not a file on disk)",
    "services/prelogin_dns.py": "the garden hosts file under run_dir (tmpfs /run), rewritten "
                                "by the daemon: temp file + rename",
    "store/backup.py": "backups and restores: temp file, fsync, rename, fsync dir",
    "system/cli.py": "hostapd/networkd/pppd files under /run, rendered at every boot: temp "
                     "file + rename so a reader never sees half a file",
    "system/growdata.py": "the MBR of a Pi's card: one 512-byte sector rewritten in place "
                          "(a single-sector write), fsync, before /data is mounted",
    "update/bundle.py": "builds an update bundle on the operator's machine: .tmp, then rename",
    "update/ubootstate.py": "the Pi's boot state files on FAT: temp file, fsync, rename, fsync "
                            "of the file again and of the directory",
    "update/install.py": "a loader entry: temp file, fsync, rename, fsync of the ESP directory",
    "sqlitedb.py": "creates the database file owner-only, fsyncs its directory, before "
                   "SQLite opens it",
}
_WRITE_MODES = ("w", "a", "x", "+")


def _file_writes(tree: object) -> list[int]:
    import ast
    assert isinstance(tree, ast.AST)
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if name in ("write_text", "write_bytes", "mkstemp", "NamedTemporaryFile"):
            lines.append(node.lineno)
        elif name in ("open", "fdopen") and not (isinstance(f, ast.Attribute)
                                                   and getattr(f.value, "id", "") == "os"):
            mode = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "mode"), None)
            if isinstance(mode, ast.Constant) and any(c in str(mode.value) for c in _WRITE_MODES):
                lines.append(node.lineno)
        elif name == "open" and isinstance(f, ast.Attribute) and getattr(f.value, "id", "") == "os":
            flags = ast.unparse(node.args[1]) if len(node.args) > 1 else ""
            if any(w in flags for w in ("O_WRONLY", "O_RDWR", "O_CREAT")):
                lines.append(node.lineno)
    return lines


def test_every_file_write_in_the_daemon_is_accounted_for() -> None:
    import ast
    root = Path(__file__).resolve().parents[2] / "gateway"
    found: dict[str, list[int]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.endswith("fake.py") or rel == "cli.py":  # fakes; the CLI writes user files
            continue
        lines = _file_writes(ast.parse(path.read_text(encoding="utf-8")))
        if lines:
            found[rel] = lines
    unexplained = {k: v for k, v in found.items() if k not in ALLOWED_WRITES}
    assert not unexplained, f"file writes without a power-cut reason: {unexplained}"
    assert "config/loader.py" in found and "store/backup.py" in found  # the scan sees writes


# -- WAL companions -----------------------------------------------------------------------------


def _crash_copy(src: Path, dst: Path) -> None:
    """The files as a power cut leaves them: main file, -wal and -shm, not checkpointed."""
    for suffix in ("", "-wal", "-shm"):
        s = Path(f"{src}{suffix}")
        if s.exists():
            Path(f"{dst}{suffix}").write_bytes(s.read_bytes())


def test_a_damaged_shm_loses_nothing(tmp_path: Path) -> None:
    live = filled(tmp_path / "live.db")  # still open: its commits are in the -wal
    _crash_copy(tmp_path / "live.db", tmp_path / "desanet.db")
    Path(f"{tmp_path / 'desanet.db'}-shm").write_bytes(os.urandom(32768))
    store = Store(tmp_path / "desanet.db")
    assert store.heal.problem is None
    assert [s.mac for s in store.active_sessions(NOW)] == [A]
    live.close()


def test_a_damaged_wal_opens_without_its_frames(tmp_path: Path) -> None:
    live = filled(tmp_path / "live.db")
    _crash_copy(tmp_path / "live.db", tmp_path / "desanet.db")
    wal = Path(f"{tmp_path / 'desanet.db'}-wal")
    data = bytearray(wal.read_bytes())
    data[40:] = os.urandom(len(data) - 40)  # frame checksums fail: SQLite ignores them
    wal.write_bytes(bytes(data))
    store = Store(tmp_path / "desanet.db")  # starts; the commits in those frames are gone
    assert store.active_sessions(NOW) == []
    store.start_session(sess(B, "10.42.0.11"))
    live.close()


def test_a_backup_cut_midway_leaves_the_old_ones(tmp_path: Path) -> None:
    store = filled(tmp_path / "desanet.db")
    good = store.backup()
    (tmp_path / "backups" / ".desanet.backup.tmp").write_bytes(b"half a copy")
    assert list_backups(tmp_path / "backups", "desanet") == [good]
    again = store.backup()  # the leftover is replaced, never listed
    assert list_backups(tmp_path / "backups", "desanet") == [good, again]
    assert not (tmp_path / "backups" / ".desanet.backup.tmp").exists()
    store.close()
