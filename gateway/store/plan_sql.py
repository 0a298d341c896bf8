"""SQL of Step 11's plans on the state database (kept out of sqlite.py, which is long):
time of use added up, and a plan's limits stamped on its vouchers.

Each function runs inside the caller's transaction (``Store`` opens it)."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable, Mapping

from gateway.model import PlanStamp, VoucherLimits


def add_used_seconds(db: sqlite3.Connection, used: Mapping[str, int],
                     plans: Collection[str] | None = None) -> list[str]:
    """Add seconds of use to each voucher; return the codes that exist (sorted), only
    those of ``plans`` when given (the ones whose time of use the caller checks)."""
    if not used:
        return []
    rows = [(int(s), code) for code, s in sorted(used.items()) if s > 0]
    db.executemany("UPDATE vouchers SET used_seconds = used_seconds + ? WHERE code = ?", rows)
    if plans is not None and not plans:
        return []
    which = "" if plans is None else f" AND plan IN ({','.join('?' * len(plans))})"
    return sorted(code for (code,) in db.execute(
        f"SELECT code FROM vouchers WHERE code IN ({','.join('?' * len(used))}){which}",
        (*used, *(plans or ()))))




def stamp_plans(db: sqlite3.Connection, stamps: Iterable[PlanStamp]) -> list[VoucherLimits]:
    """Stamp each plan's validity (as ``duration``) and shared devices (as ``max_devices``)
    on its vouchers where they differ, and move the open sessions of the vouchers changed
    to their new end (first use + validity). Returns what the changed vouchers had, for
    :func:`restore_limits`."""
    before: list[VoucherLimits] = []
    for plan, validity, devices in stamps:
        if validity is None and devices is None:
            continue
        rows = db.execute(
            "SELECT code, duration, max_devices FROM vouchers WHERE plan=? AND "
            "((? IS NOT NULL AND duration!=?) OR (? IS NOT NULL AND max_devices!=?))",
            (plan, validity, validity, devices, devices)).fetchall()
        before += [(str(c), int(d), int(m)) for c, d, m in rows]
        set_limits(db, [(str(c), d if validity is None else validity,
                         m if devices is None else devices) for c, d, m in rows])
    return before


def set_limits(db: sqlite3.Connection, limits: Iterable[VoucherLimits]) -> None:
    """Give vouchers these durations and device limits; their open sessions end at first
    use + the new duration."""
    rows = list(limits)
    db.executemany("UPDATE vouchers SET duration=?, max_devices=? WHERE code=?",
                   [(d, m, c) for c, d, m in rows])
    db.executemany(
        "UPDATE sessions SET expires = (SELECT v.first_used + v.duration FROM vouchers v "
        "WHERE v.code = sessions.voucher) WHERE ended IS NULL AND voucher=? AND EXISTS "
        "(SELECT 1 FROM vouchers v WHERE v.code = sessions.voucher AND v.first_used IS NOT NULL)",
        [(c,) for c, _, _ in rows])
