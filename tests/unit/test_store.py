"""SQLite store: sessions and vouchers, durable and transactional."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.errors import VoucherError
from gateway.model import Session, Voucher
from gateway.store import Store

NOW = 1_700_000_000


def sess(mac: str = "02:00:00:00:00:01", ip: str = "10.42.0.5", expires: int = NOW + 100) -> Session:
    return Session(mac, ip, NOW, expires, 60, "terms")


def test_one_active_session_per_mac(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.start_session(sess(ip="10.42.0.5"))
    store.start_session(sess(ip="10.42.0.6"))
    assert [s.ip for s in store.active_sessions(NOW)] == ["10.42.0.6"]
    ended = store.end_session("02:00:00:00:00:01", NOW, "logout")
    assert ended is not None and ended.ip == "10.42.0.6"
    assert store.active_sessions(NOW) == []
    assert store.end_session("02:00:00:00:00:01", NOW, "logout") is None


def test_expiry(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.start_session(sess("02:00:00:00:00:01", expires=NOW + 10))
    store.start_session(sess("02:00:00:00:00:02", "10.42.0.7", expires=NOW + 100))
    assert [s.mac for s in store.expire_sessions(NOW + 50)] == ["02:00:00:00:00:01"]
    assert [s.mac for s in store.active_sessions(NOW + 50)] == ["02:00:00:00:00:02"]


def test_voucher_redeem_rules(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.add_vouchers([Voucher("AAAAA-BBBBB", 3600, None, NOW, "b"),
                        Voucher("CCCCC-DDDDD", 3600, None, NOW, "b", max_devices=2)])
    v = store.redeem_voucher("AAAAA-BBBBB", "02:00:00:00:00:01", NOW)
    assert v.first_used == NOW and v.devices == ("02:00:00:00:00:01",)
    # the same device may log in again; another device may not
    assert store.redeem_voucher("AAAAA-BBBBB", "02:00:00:00:00:01", NOW + 5).first_used == NOW
    with pytest.raises(VoucherError) as info:
        store.redeem_voucher("AAAAA-BBBBB", "02:00:00:00:00:02", NOW)
    assert info.value.reason == "in_use"
    store.redeem_voucher("CCCCC-DDDDD", "02:00:00:00:00:01", NOW)
    store.redeem_voucher("CCCCC-DDDDD", "02:00:00:00:00:02", NOW)
    with pytest.raises(VoucherError):
        store.redeem_voucher("CCCCC-DDDDD", "02:00:00:00:00:03", NOW)
    with pytest.raises(VoucherError) as info:
        store.redeem_voucher("AAAAA-BBBBB", "02:00:00:00:00:01", NOW + 3600)
    assert info.value.reason == "expired"
    with pytest.raises(VoucherError) as info:
        store.redeem_voucher("ZZZZZ-ZZZZZ", "02:00:00:00:00:01", NOW)
    assert info.value.reason == "unknown"


def test_revoke_ends_sessions(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.add_vouchers([Voucher("AAAAA-BBBBB", 3600, None, NOW, "b")])
    store.redeem_voucher("AAAAA-BBBBB", "02:00:00:00:00:01", NOW)
    store.start_session(Session("02:00:00:00:00:01", "10.42.0.5", NOW, NOW + 3600, 60, "voucher",
                                "AAAAA-BBBBB"))
    voucher, ended = store.revoke_voucher("AAAAA-BBBBB", NOW)
    assert voucher.state(NOW) == "revoked"
    assert [(s.mac, s.voucher) for s in ended] == [("02:00:00:00:00:01", "AAAAA-BBBBB")]
    assert store.active_sessions(NOW) == []
    assert store.revoke_voucher("AAAAA-BBBBB", NOW)[1] == []  # twice: nothing more to end
    with pytest.raises(VoucherError) as info:
        store.redeem_voucher("AAAAA-BBBBB", "02:00:00:00:00:01", NOW)
    assert info.value.reason == "revoked"


def test_committed_sessions_survive_kill_9(tmp_path: Path) -> None:
    """A writer killed with SIGKILL mid-stream loses nothing it had committed."""
    db = tmp_path / "s.db"
    progress = tmp_path / "progress"
    code = f"""
import os, sys
from gateway.store import Store
from gateway.model import Session
store = Store({str(db)!r})
i = 0
while True:
    store.start_session(Session(f"02:00:00:00:{{i // 256:02x}}:{{i % 256:02x}}", "10.42.0.5",
                                {NOW}, {NOW} + 3600, 60, "terms"))
    i += 1
    with open({str(progress)!r} + ".tmp", "w") as fh:
        fh.write(str(i))
    os.replace({str(progress)!r} + ".tmp", {str(progress)!r})
"""
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(200):
            if progress.exists() and int(progress.read_text()) > 50:
                break
            subprocess.run(["sleep", "0.05"], check=True)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    committed = int(progress.read_text())
    assert len(Store(db).active_sessions(NOW)) >= committed


def test_database_files_are_owner_only(tmp_path: Path) -> None:
    # Unused voucher codes are in there: no other local user may read them.
    old = os.umask(0o022)
    try:
        store = Store(tmp_path / "s.db")
        store.add_vouchers([Voucher("ABCDE-FGHJK", 3600, None, NOW, "b")])
    finally:
        os.umask(old)
    for name in ("s.db", "s.db-wal", "s.db-shm"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    store.close()


def test_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    Store(tmp_path / "s.db").close()
    (tmp_path / "s.db").chmod(0o644)
    Store(tmp_path / "s.db").close()
    assert (tmp_path / "s.db").stat().st_mode & 0o777 == 0o600


def test_read_errors_become_store_errors(tmp_path: Path) -> None:
    from gateway.errors import StoreError

    store = Store(tmp_path / "s.db")
    store.close()
    with pytest.raises(StoreError, match="state database"):
        store.active_sessions(NOW)
    with pytest.raises(StoreError, match="state database"):
        store.vouchers()


def test_ip_taken_by_another_mac(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.start_session(sess("02:00:00:00:00:01", "10.42.0.5"))
    assert not store.ip_taken("10.42.0.5", "02:00:00:00:00:01", NOW)
    assert store.ip_taken("10.42.0.5", "02:00:00:00:00:02", NOW)
    assert not store.ip_taken("10.42.0.5", "02:00:00:00:00:02", NOW + 100)  # expired
    store.end_session("02:00:00:00:00:01", NOW, "logout")
    assert not store.ip_taken("10.42.0.5", "02:00:00:00:00:02", NOW)


def test_prune_forgets_only_old_ended_sessions(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.start_session(sess("02:00:00:00:00:01", expires=NOW + 10))
    store.start_session(sess("02:00:00:00:00:02", "10.42.0.7", expires=NOW + 1000))
    store.end_session("02:00:00:00:00:01", NOW + 5, "logout")
    assert store.prune_ended(NOW + 5) == 0  # ended exactly then: kept
    assert store.prune_ended(NOW + 6) == 1
    assert [s.mac for s in store.active_sessions(NOW)] == ["02:00:00:00:00:02"]
