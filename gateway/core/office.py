"""The village office: the sales report and the import of codes sold elsewhere.

Dates are local days of the site (``site.timezone``): ``--from 2026-12-01 --to
2026-12-01`` is that whole day in WIB, from its midnight to the next. The report's
JSON shape is documented (and kept stable) in docs/vouchers-office.md; ``format``
changes only when a key changes meaning or goes away.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gateway.clock import Clock
from gateway.config.schema import Config
from gateway.config.units import format_duration
from gateway.core.events import EventBus, VoucherBatchCreated
from gateway.core.voucher_import import (
    ImportRejected,
    RowProblem,
    parse_import,
    profile_mapper,
)
from gateway.core.vouchers import batch_id, check_batch_name
from gateway.errors import Invalid
from gateway.model import Voucher
from gateway.model_office import ReportQuery
from gateway.timefmt import iso, zone

log = logging.getLogger("desanet.office")

REPORT_FORMAT = 1
MAX_REPORT_DAYS = 366  # by_day lists at most this many days (the latest of the range)
FIRST_DAY, LAST_DAY = dt.date(1970, 1, 2), dt.date(2999, 12, 31)  # a report's --from/--to


class OfficeStorePort(Protocol):
    async def report(self, query: ReportQuery) -> dict[str, Any]: ...

    async def span(self, batch: str | None, seller: str | None) -> tuple[int, int] | None: ...

    async def import_vouchers(self, vouchers: list[Voucher]
                              ) -> tuple[list[Voucher], set[str]]: ...


def parse_day(value: str | None, option: str) -> dt.date | None:
    """A date as YYYY-MM-DD; raises Invalid naming ``option`` ("--from", "from")."""
    if value is None or value == "":
        return None
    try:
        if not isinstance(value, str) or len(value) != 10:
            raise ValueError
        day = dt.date.fromisoformat(value)
        # The calendar's edges overflow the day bounds (9999-12-31 has no next day).
        if not FIRST_DAY <= day <= LAST_DAY:
            raise ValueError
        return day
    except ValueError:
        raise Invalid(option, value, "a date as YYYY-MM-DD (the site's local day, "
                      f"{FIRST_DAY} to {LAST_DAY})", '"2026-12-01"') from None


def day_bounds(day: dt.date, tz: str) -> tuple[int, int]:
    """Epoch seconds of the local midnight starting ``day`` and of the next one."""
    z = zone(tz)
    start = dt.datetime.combine(day, dt.time(), z)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), z)
    return int(start.timestamp()), int(end.timestamp())


def local_day(ts: int, tz: str) -> dt.date:
    return dt.datetime.fromtimestamp(ts, zone(tz)).date()


def days_between(first: dt.date, last: dt.date, tz: str) -> tuple[tuple[str, int, int], ...]:
    """(label, start, end) for each local day from ``first`` to ``last``, at most
    MAX_REPORT_DAYS (the latest)."""
    if (last - first).days >= MAX_REPORT_DAYS:
        first = last - dt.timedelta(days=MAX_REPORT_DAYS - 1)
    out = []
    day = first
    while day <= last:
        out.append((day.isoformat(), *day_bounds(day, tz)))
        day += dt.timedelta(days=1)
    return tuple(out)


def _tou_by_plan(cfg: Config) -> tuple[tuple[str, int], ...]:
    return tuple((name, p.time_of_use) for name, p in sorted(cfg.shaping.plans.items())
                 if p.time_of_use)


def _hours(row: dict[str, Any]) -> dict[str, Any]:
    row["used_hours"] = round(row["used_seconds"] / 3600, 2)
    return row


class OfficeService:
    def __init__(self, config: Callable[[], Config], store: OfficeStorePort, clock: Clock,
                 bus: EventBus) -> None:
        self._config = config
        self.store = store
        self.clock = clock
        self.bus = bus

    async def report(self, start: str | None = None, end: str | None = None,
                     batch: str | None = None, seller: str | None = None) -> dict[str, Any]:
        """The sales and usage report (docs/vouchers-office.md). ``start``/``end``: local
        days YYYY-MM-DD, both included; raises Invalid("from"/"to")."""
        tz = self._config().site.timezone
        first, last = parse_day(start, "from"), parse_day(end, "to")
        if first and last and last < first:
            raise Invalid("to", end, f"a day on or after from ({start})", f'"{start}"')
        now = self.clock.now()
        lo = day_bounds(first, tz)[0] if first else None
        hi = day_bounds(last, tz)[1] if last else None
        days: tuple[tuple[str, int, int], ...] = ()
        span = await self.store.span(batch, seller)
        if span is not None:
            d0 = first or local_day(span[0], tz)
            d1 = last or local_day(span[1], tz)
            if d0 <= d1:
                days = days_between(d0, d1, tz)
        data = await self.store.report(ReportQuery(
            now=now, start=lo, end=hi, batch=batch, seller=seller, days=days,
            time_of_use=_tou_by_plan(self._config())))
        for key in ("by_plan", "by_batch", "by_seller"):
            data[key] = [_hours(r) for r in data[key]]
        _hours(data["totals"])
        return {
            "format": REPORT_FORMAT,
            "timezone": tz,
            "generated": now,
            "generated_iso": iso(now, tz),
            "from": first.isoformat() if first else None,
            "to": last.isoformat() if last else None,
            "from_ts": lo,
            "to_ts": hi,
            "batch": batch,
            "seller": seller,
            **data,
        }

    async def import_csv(self, text: str, mapping: Mapping[str, str], duration: int | None,
                         seller: str = "", name: str | None = None) -> tuple[str, list[Voucher],
                                                                            list[str]]:
        """Import a CSV of codes sold elsewhere (gateway/core/voucher_import.py): every row
        checked first, then all of them in one transaction, or none. Returns (batch id,
        the vouchers, the columns ignored). Raises ImportRejected, Invalid."""
        cfg = self._config()
        plans = cfg.shaping.plans
        label = check_batch_name(name)
        seller = check_batch_name(seller) if seller else ""
        for profile, plan in mapping.items():
            if plan != "default" and plan not in plans:
                raise Invalid("map", f"{profile}={plan}", "PROFILE=PLAN with a plan in "
                              f"shaping.plans (known: {', '.join(plans) or 'none'}) or "
                              '"default"', '"1jam=hour"')
        parsed = parse_import(text, profile_mapper(plans, mapping), plans, seller)
        problems: list[RowProblem] = []
        now = self.clock.now()
        ident = batch_id(label or "import", now, secrets.token_hex(2))
        made: list[Voucher] = []
        rows: dict[str, int] = {}
        for r in parsed.rows:
            spec = plans.get(r.plan) if r.plan else None
            tou = spec.time_of_use if spec else None
            if r.duration and tou and r.duration != tou:
                # limit-uptime is MikroTik's time of use: it must be the plan's
                problems.append(RowProblem(r.row, "limit-uptime", format_duration(r.duration),
                                           f"the time of use of plan {r.plan} "
                                           f"({format_duration(tou)}) or empty"))
                continue
            # a plan's validity rules its vouchers (as `vouchers create`); else the row's
            # limit-uptime, --duration, or the plan's time of use caps the wall clock
            length = (spec.validity if spec else None) or r.duration or duration or tou
            if not length:
                problems.append(RowProblem(r.row, "limit-uptime", "",
                                           "a duration (the plan has no validity or time_of_use,"
                                           " and no --duration was given)"))
                continue
            devices = r.max_devices or (spec.shared_devices if spec else 1)
            rows[r.code] = r.row
            made.append(Voucher(code=r.code, duration=int(length), plan=r.plan, created=now,
                                batch=ident, max_devices=devices, batch_name=label,
                                price=r.price, seller=r.seller, imported=True))
        if problems:
            raise ImportRejected(problems)
        stored, taken = await self.store.import_vouchers(made)
        if taken:
            raise ImportRejected([
                RowProblem(rows[c], "code", c, "a code not already in desanet (it is stored "
                           "already: imported before, or made here)")
                for c in sorted(taken, key=rows.__getitem__)])
        log.info("imported %d voucher(s) into batch %s", len(stored), ident)
        plan_names = {v.plan for v in stored}
        self.bus.publish(VoucherBatchCreated(ident, len(stored),
                                             next(iter(plan_names)) if len(plan_names) == 1
                                             else None, stored[0].duration if stored else 0))
        return ident, stored, parsed.ignored_columns
