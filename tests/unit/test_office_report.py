"""The village office's sales report over a real SQLite store: totals, the breakdowns,
local-day boundaries, imported codes, usage, and dates that are wrong."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import FakeClock
from gateway.core.events import EventBus
from gateway.core.office import OfficeService, day_bounds, parse_day
from gateway.errors import Invalid
from gateway.kernel import DatabaseWorker
from gateway.model import Voucher
from gateway.portal.printable import format_rupiah
from gateway.store.office import AsyncOfficeStore, OfficeStore
from gateway.store.sqlite import Store
from tests.unit.conftest import make_config

TZ = "Asia/Jakarta"
DEC1, DEC2 = day_bounds(dt.date(2026, 12, 1), TZ)[0], day_bounds(dt.date(2026, 12, 2), TZ)[0]
H = 3600


def _cfg() -> Any:
    return make_config(shaping={"enabled": True, "plans": {
        "jam": {"down": "2mbit", "up": "1mbit", "price": 5000, "validity": "1d",
                "time_of_use": "1h"},
        "hari": {"down": "2mbit", "up": "1mbit", "price": 10000}}})


class Office:
    def __init__(self, tmp: Path) -> None:
        self.store = Store(tmp / "state.db")
        self.sync = OfficeStore(self.store)
        self.worker = DatabaseWorker()
        self.clock = FakeClock(DEC2 + 12 * H)
        self.cfg = _cfg()
        self.service = OfficeService(lambda: self.cfg, AsyncOfficeStore(self.sync, self.worker),
                                     self.clock, EventBus(self.clock))

    def add(self, code: str, created: int, plan: str | None = "jam", batch: str = "b1",
            seller: str = "", price: int | None = None, duration: int = 86400,
            imported: bool = False) -> None:
        spec = self.cfg.shaping.plans.get(plan) if plan else None
        self.store.add_vouchers([Voucher(
            code=code, duration=duration, plan=plan, created=created, batch=batch,
            seller=seller, imported=imported,
            price=price if price is not None else (spec.price if spec else 0))])

    def use(self, code: str, at: int, mac: str = "02:00:00:00:00:01", *, down: int = 0,
            up: int = 0, seconds: int = 0, cut: bool = False) -> None:
        self.store.redeem_voucher(code, mac, at)
        with self.store.database.tx() as db:  # the counters the kernel's reconcile adds
            db.execute("UPDATE vouchers SET bytes_down=?, bytes_up=?, used_seconds=?, "
                       "quota_state=? WHERE code=?", (down, up, seconds, "cut" if cut else "",
                                                      code))


@pytest.fixture
def office(tmp_path: Path) -> Any:
    o = Office(tmp_path)
    yield o
    o.worker.shutdown()
    o.store.close()


A, B, C, D, E, F = ("AAAAA-22222", "BBBBB-22222", "CCCCC-22222", "DDDDD-22222",
                    "EEEEE-22222", "FFFFF-22222")


async def test_an_empty_store_reports_zeros_not_nulls(office: Office) -> None:
    r = await office.service.report()
    assert r["totals"]["sold"] == 0 and r["totals"]["revenue"] == 0
    assert r["totals"]["used_hours"] == 0
    assert r["by_plan"] == [] and r["by_day"] == [] and r["format"] == 1


async def test_totals_and_breakdowns(office: Office) -> None:
    o = office
    o.add(A, DEC1 + H, seller="Bu Sari")                      # sold, active
    o.add(B, DEC1 + H, seller="Bu Sari")                      # unused
    o.add(C, DEC1 + H, plan="hari", batch="b2", seller="Pak Budi")  # sold, over (wall clock)
    o.add(D, DEC1 + H, batch="b2", seller="Pak Budi")         # sold, time of use used up
    o.add(E, DEC1 + H, batch="b2")                            # sold, revoked (still paid)
    o.add(F, DEC1 + H, plan="hari", imported=True, price=10000)  # imported: no revenue here
    o.use(A, DEC2 + H, down=3_000_000, up=1_000_000, seconds=1800)
    o.use(C, DEC1 + 2 * H, down=500, up=100, seconds=7200)
    o.use(D, DEC2 + 2 * H, seconds=3600)
    o.use(E, DEC2 + 3 * H)
    o.store.revoke_voucher(E, DEC2 + 4 * H)
    o.use(F, DEC2 + 5 * H)
    r = await o.service.report()
    t = r["totals"]
    assert (t["created"], t["sold"], t["active"], t["expired"], t["revoked"], t["unused"],
            t["imported"]) == (6, 5, 2, 2, 1, 1, 1)  # active: A, F; over: C, D
    assert t["revenue"] == 5000 + 10000 + 5000 + 5000  # A, C, D, E; not F (paid before)
    assert (t["bytes_down"], t["bytes_up"], t["used_seconds"]) == (3_000_500, 1_000_100,
                                                                   12600)
    assert t["used_hours"] == 3.5
    plans = {p["plan"]: (p["sold"], p["revenue"]) for p in r["by_plan"]}
    assert plans == {"jam": (3, 15000), "hari": (2, 10000)}
    sellers = {s["seller"]: (s["created"], s["sold"], s["revenue"]) for s in r["by_seller"]}
    assert sellers == {"Bu Sari": (2, 1, 5000), "Pak Budi": (2, 2, 15000), "": (2, 2, 5000)}
    batches = {b["batch"]: (b["created"], b["revenue"]) for b in r["by_batch"]}
    assert batches == {"b1": (3, 5000), "b2": (3, 20000)}
    # the parts add up to the totals
    for key in ("by_plan", "by_batch", "by_seller"):
        assert sum(row["revenue"] for row in r[key]) == t["revenue"], key
        assert sum(row["sold"] for row in r[key]) == t["sold"], key
    days = {d["day"]: (d["created"], d["sold"], d["revenue"]) for d in r["by_day"]}
    assert days == {"2026-12-01": (6, 1, 10000), "2026-12-02": (0, 4, 15000)}


async def test_a_day_is_the_sites_local_day(office: Office) -> None:
    o = office
    o.add(A, DEC1 + H)
    o.add(B, DEC1 + H)
    o.use(A, DEC2 - 1)          # 23:59:59 WIB on 1 Dec
    o.use(B, DEC2, mac="02:00:00:00:00:02")  # 00:00:00 WIB on 2 Dec
    one = await o.service.report("2026-12-01", "2026-12-01")
    two = await o.service.report("2026-12-02", "2026-12-02")
    assert (one["totals"]["sold"], two["totals"]["sold"]) == (1, 1)
    assert one["from_ts"] == DEC1 and one["to_ts"] == DEC2
    assert two["totals"]["created"] == 0  # created on the 1st: not in the 2nd's report
    assert [d["day"] for d in two["by_day"]] == ["2026-12-02"]
    both = await o.service.report("2026-12-01", "2026-12-02")
    assert both["totals"]["sold"] == 2 and both["totals"]["created"] == 2


async def test_filters_by_batch_and_seller(office: Office) -> None:
    o = office
    o.add(A, DEC1, batch="b1", seller="Bu Sari")
    o.add(B, DEC1, batch="b2", seller="Pak Budi")
    o.use(A, DEC1 + H)
    o.use(B, DEC1 + H, mac="02:00:00:00:00:02")
    assert (await o.service.report(batch="b2"))["totals"]["sold"] == 1
    r = await o.service.report(seller="Bu Sari")
    assert r["totals"]["sold"] == 1 and [s["seller"] for s in r["by_seller"]] == ["Bu Sari"]
    assert (await o.service.report(seller="nobody"))["totals"]["created"] == 0


@pytest.mark.parametrize(("start", "end", "field"), [
    ("2026-13-01", None, "from"), ("1/12/2026", None, "from"), (None, "yesterday", "to"),
    ("2026-12-02", "2026-12-01", "to"), ("2026-12-1", None, "from"),
])
async def test_bad_dates_name_the_option(office: Office, start: str | None, end: str | None,
                                         field: str) -> None:
    with pytest.raises(Invalid) as err:
        await office.service.report(start, end)
    assert err.value.field == field


def test_parse_day_names_the_cli_option() -> None:
    with pytest.raises(Invalid, match="--from"):
        parse_day("2026-02-30", "--from")
    assert parse_day("2026-02-28", "--from") == dt.date(2026, 2, 28)


def test_rupiah_formatting() -> None:
    assert format_rupiah(5000) == "Rp 5.000"
    assert format_rupiah(1_250_000) == "Rp 1.250.000"
    assert format_rupiah(500) == "Rp 500"
    assert format_rupiah(0) == "Rp 0"


def test_by_day_keeps_the_latest_366_days() -> None:
    from gateway.core.office import days_between

    days = days_between(dt.date(2024, 1, 1), dt.date(2026, 12, 2), TZ)
    assert len(days) == 366 and days[-1][0] == "2026-12-02" and days[0][0] == "2025-12-02"
    # each day is 24 h in WIB (no daylight saving), and they join end to start
    assert all(e - s == 86400 for _, s, e in days)
    assert all(a[2] == b[1] for a, b in itertools.pairwise(days))
