"""A state database written by an older desanet keeps working after an update."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.model import Voucher
from gateway.store import Store
from gateway.store.sqlite import SCHEMA_VERSION

NOW = 1_700_000_000
MAC = "02:00:00:00:00:01"

# The vouchers tables exactly as schema version 1 created them (before batch names
# and serials), with the rows an office had made: two batches, one voucher in use.
_V1 = """
CREATE TABLE sessions (
    id INTEGER PRIMARY KEY, mac TEXT NOT NULL, ip TEXT NOT NULL, started INTEGER NOT NULL,
    expires INTEGER NOT NULL, idle_timeout INTEGER NOT NULL, source TEXT NOT NULL,
    voucher TEXT, plan TEXT, ended INTEGER, end_reason TEXT
);
CREATE TABLE vouchers (
    code TEXT PRIMARY KEY, duration INTEGER NOT NULL, plan TEXT, created INTEGER NOT NULL,
    batch TEXT NOT NULL, max_devices INTEGER NOT NULL DEFAULT 1, first_used INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE voucher_devices (
    code TEXT NOT NULL REFERENCES vouchers(code), mac TEXT NOT NULL, PRIMARY KEY (code, mac)
);
INSERT INTO vouchers (code, duration, plan, created, batch) VALUES
    ('ZZZZZ-ZZZZZ', 3600, NULL, 1700000000, 'old'),
    ('CCCCC-CCCCC', 3600, NULL, 1700000000, 'old'),
    ('MMMMM-MMMMM', 7200, 'school', 1700000100, 'other'),
    ('AAAAA-AAAAA', 3600, NULL, 1700000000, 'old');
UPDATE vouchers SET first_used = 1700000050 WHERE code = 'CCCCC-CCCCC';
INSERT INTO voucher_devices VALUES ('CCCCC-CCCCC', '02:00:00:00:00:01');
INSERT INTO sessions (mac, ip, started, expires, idle_timeout, source, voucher)
    VALUES ('02:00:00:00:00:01', '10.42.0.5', 1700000050, 1700003650, 60, 'voucher',
            'CCCCC-CCCCC');
PRAGMA user_version = 1;
"""


def _old_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(_V1)
    db.close()


def _user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def test_a_version_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _old_database(path)
    store = Store(path)
    old = store.vouchers("old")
    # numbered in the order the office made them; unnamed; nothing else changed
    assert [(v.code, v.serial, v.batch_name) for v in old] == [
        ("ZZZZZ-ZZZZZ", 1, ""), ("CCCCC-CCCCC", 2, ""), ("AAAAA-AAAAA", 3, "")]
    assert [(v.code, v.serial) for v in store.vouchers("other")] == [("MMMMM-MMMMM", 1)]
    used = old[1]
    assert (used.first_used, used.devices, used.state(NOW + 60)) == (NOW + 50, (MAC,), "active")
    session = store.active_session(MAC, NOW + 60)
    assert session is not None and session.voucher == "CCCCC-CCCCC"
    # it works as before: the device logs in again, a new voucher continues the batch
    assert store.redeem_voucher("CCCCC-CCCCC", MAC, NOW + 70).devices == (MAC,)
    made = store.add_vouchers([Voucher("DDDDD-DDDDD", 3600, None, NOW + 200, "old",
                                       batch_name="Posyandu Mei")])
    assert (made[0].serial, made[0].batch_name) == (4, "Posyandu Mei")
    assert {v.batch_name for v in store.vouchers("old")} == {"Posyandu Mei"}
    store.close()
    assert _user_version(path) == SCHEMA_VERSION


def test_reopening_and_a_rolled_back_version_number_are_harmless(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _old_database(path)
    Store(path).close()
    # An older desanet (an A/B update rolled back) opened it and wrote version 1 again:
    # the columns are there already and must not be added twice, nor serials renumbered.
    db = sqlite3.connect(path)
    db.execute("UPDATE vouchers SET serial = 9 WHERE code = 'AAAAA-AAAAA'")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = Store(path)
    assert [v.serial for v in store.vouchers("old")] == [1, 2, 9]
    store.close()
    assert _user_version(path) == SCHEMA_VERSION


def test_a_new_database_has_the_columns_without_migrating(tmp_path: Path) -> None:
    store = Store(tmp_path / "new.db")
    made = store.add_vouchers([Voucher("AAAAA-BBBBB", 60, None, NOW, "b", batch_name="X")])
    assert (made[0].serial, made[0].batch_name) == (1, "X")
    assert store.vouchers() == made
    store.close()


def test_old_vouchers_get_the_plan_columns_zero(tmp_path: Path) -> None:
    # version 1 (and 2) databases: usage and sale start at nothing, nothing else moves
    path = tmp_path / "state.db"
    _old_database(path)
    store = Store(path)
    used = store.voucher("CCCCC-CCCCC")
    assert used is not None
    assert (used.used_seconds, used.bytes_down, used.bytes_up, used.quota_state, used.price,
            used.seller, used.imported) == (0, 0, 0, "", 0, "", False)
    assert (used.first_used, used.devices) == (NOW + 50, (MAC,))
    store.close()


def test_the_sale_columns_are_stored_as_given(tmp_path: Path) -> None:
    store = Store(tmp_path / "new.db")
    made = store.add_vouchers([Voucher("AAAAA-BBBBB", 60, "harian", NOW, "b", price=5000,
                                       seller="Warung Bu Siti", imported=True)])
    assert store.vouchers() == made
    assert (made[0].price, made[0].seller, made[0].imported) == (5000, "Warung Bu Siti", True)
    store.close()
