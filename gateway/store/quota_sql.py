"""Bytes per voucher: the SQL of the kernel's meters (docs/quota.md).

Kept apart from sqlite.py: each function runs inside a transaction the Store opens.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping

QUOTA_STATES = ("", "slow", "cut")


def add_voucher_bytes(db: sqlite3.Connection, deltas: Mapping[str, tuple[int, int]],
                      states: Mapping[str, str]) -> None:
    """Add (down, up) byte deltas to vouchers and set their quota states. A voucher that
    is gone (deleted meanwhile) is skipped; a negative delta or unknown state raises
    ValueError before anything is written."""
    for code, (down, up) in deltas.items():
        if down < 0 or up < 0:
            raise ValueError(f"negative byte delta for voucher {code}: {down}, {up}")
    for code, state in states.items():
        if state not in QUOTA_STATES:
            raise ValueError(f"unknown quota state {state!r} for voucher {code}")
    db.executemany("UPDATE vouchers SET bytes_down = bytes_down + ?, bytes_up = bytes_up + ? "
                   "WHERE code = ?",
                   [(d, u, code) for code, (d, u) in deltas.items() if d or u])
    db.executemany("UPDATE vouchers SET quota_state = ? WHERE code = ?",
                   [(state, code) for code, state in states.items()])


def voucher_usage(db: sqlite3.Connection, codes: Iterable[str]) -> dict[str, tuple[int, int]]:
    """code -> (bytes down, bytes up) of the vouchers that exist."""
    out: dict[str, tuple[int, int]] = {}
    for code in set(codes):
        row = db.execute("SELECT bytes_down, bytes_up FROM vouchers WHERE code = ?",
                         (code,)).fetchone()
        if row is not None:
            out[code] = (int(row[0]), int(row[1]))
    return out
