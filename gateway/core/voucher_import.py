"""Reading a CSV of voucher codes an office already sold (pure: no I/O, no store).

The file usually comes from an old MikroTik hotspot: RouterOS's `/ip hotspot user`
list or Mikhmon's export of it, whose columns are ``name``, ``password``, ``profile``,
``limit-uptime``, ``comment`` (and more that desanet has no use for). The accepted
header set is in docs/vouchers-office.md; headers are matched without regard to case,
spaces, ``-`` or ``_``. Columns not in the set are reported as ignored, never guessed.

Every row is checked before anything is stored, and every problem is reported at once
with its row (as a spreadsheet numbers it: the header is row 1), its column, what was
found and what was expected, so the office fixes the file in one pass. Duplicates inside
the file are found here; duplicates with codes already stored by the store's import.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.core.voucher_codes import normalize_code
from gateway.errors import Invalid, VoucherError

MAX_ROWS = 20_000  # a village office's whole history fits; the control API caps the body too
MAX_PROBLEMS = 200  # reported at most (a file that is wrong throughout says so early)
MAX_SELLER = 64

# Our column -> the spellings accepted (after _key()).
COLUMNS: dict[str, tuple[str, ...]] = {
    "code": ("code", "name", "username", "user", "voucher", "kode"),
    "password": ("password", "pass"),
    "plan": ("profile", "plan", "paket"),
    "duration": ("limituptime", "duration", "durasi", "validity"),
    "max_devices": ("maxdevices", "sharedusers", "devices"),
    "price": ("price", "harga"),
    "seller": ("seller", "penjual", "reseller"),
}
_KNOWN = {alias: ours for ours, aliases in COLUMNS.items() for alias in aliases}

# RouterOS time: "1w2d3h4m5s" in any subset, "01:00:00", "1d 02:00:00" or "1d02:00:00".
_ROS_UNITS = re.compile(r"^(?:(\d{1,4})w)?(?:(\d{1,5})d)?(?:(\d{1,6})h)?(?:(\d{1,7})m)?"
                        r"(?:(\d{1,9})s)?$")
_ROS_CLOCK = re.compile(r"^(?:(\d{1,5})d\s*)?(\d{1,6}):(\d{2}):(\d{2})$")
_PRICE = re.compile(r"^(?:rp\.?\s*)?(\d{1,3}(?:[.,]\d{3})+|\d{1,12})(?:,-|,00)?$")


@dataclass(frozen=True, slots=True)
class RowProblem:
    row: int  # as a spreadsheet shows it: the header is row 1
    column: str  # the header as written in the file ("" for the whole row)
    found: str
    expected: str

    def __str__(self) -> str:
        where = f"row {self.row}" + (f", column {self.column}" if self.column else "")
        return f"{where}: found {self.found!r}; expected {self.expected}"


@dataclass(frozen=True, slots=True)
class ImportRow:
    row: int
    code: str  # canonical "XXXXX-XXXXX"
    plan: str | None
    duration: int | None  # None: the caller's default for the plan
    max_devices: int | None
    price: int
    seller: str


@dataclass(slots=True)
class ParsedImport:
    rows: list[ImportRow] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)


class ImportRejected(Invalid):
    """The file has problems; nothing was imported. ``problems`` lists them all (strings,
    as the control API carries them); ``rows`` the structured ones."""

    def __init__(self, problems: list[RowProblem], total: int | None = None) -> None:
        self.rows = problems
        self.problems = [str(p) for p in problems]
        count = total if total is not None else len(problems)
        more = f" (the first {len(problems)} shown)" if count > len(problems) else ""
        text = f"{count} problem(s) in the file, nothing imported{more}:\n  " + \
            "\n  ".join(self.problems)
        Invalid.__init__(self, "file", f"{count} problem(s)", "a CSV with every row valid")
        self.args = (text,)

    def __str__(self) -> str:
        return str(self.args[0])


def _key(header: str) -> str:
    return "".join(ch for ch in header.strip().lower() if ch.isalnum())


def parse_ros_duration(text: str) -> int | None:
    """Seconds of a RouterOS time ("1d", "3h30m", "01:00:00", "1d 02:00:00"); None for
    empty or "0" (no limit in RouterOS: the plan's own duration applies)."""
    value = text.strip().lower()
    if value in ("", "0", "0s", "00:00:00"):
        return None
    clock = _ROS_CLOCK.match(value)
    if clock:
        days, h, m, s = (int(x or 0) for x in clock.groups())
        if m >= 60 or s >= 60:
            raise ValueError(text)
        return days * 86400 + h * 3600 + m * 60 + s
    units = _ROS_UNITS.match(value.replace(" ", ""))
    if not units or not any(units.groups()):
        raise ValueError(text)
    w, d, h, m, s = (int(x or 0) for x in units.groups())
    return w * 604800 + d * 86400 + h * 3600 + m * 60 + s


def parse_price(text: str) -> int:
    """Rupiah as offices write them: "5000", "5.000", "Rp 5.000", "Rp5,000", "5.000,-"."""
    match = _PRICE.match(text.strip().lower())
    if not match:
        raise ValueError(text)
    return int(re.sub(r"[.,]", "", match.group(1)))


def parse_import(
    text: str,
    plan_of: Callable[[str], str | None],
    plans: Mapping[str, object],
    seller: str = "",
) -> ParsedImport:
    """The rows of a voucher CSV, all checked; raises ImportRejected listing every problem.

    ``plan_of(profile)`` maps a MikroTik profile to a plan name (None: the default plan)
    or raises KeyError; ``plans`` names the known plans for the message. ``seller`` is
    used for rows without a seller column.
    """
    if text.startswith("\ufeff"):
        text = text[1:]  # Excel's UTF-8 byte order mark
    sample = text[:4096]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    try:
        return _parse_rows(reader, plan_of, plans, seller)
    except csv.Error as exc:  # a cell over csv's field limit (128 KiB), a broken quote
        raise ImportRejected([RowProblem(reader.line_num, "", f"an unreadable cell ({exc})",
                                         "cells of ordinary CSV text")]) from None


def _parse_rows(reader: Any, plan_of: Callable[[str], str | None],
                plans: Mapping[str, object], seller: str) -> ParsedImport:
    problems: list[RowProblem] = []
    total = 0

    def problem(row: int, column: str, found: str, expected: str) -> None:
        nonlocal total
        total += 1
        if len(problems) < MAX_PROBLEMS:
            problems.append(RowProblem(row, column, found, expected))

    header = next(reader, None)
    expected_header = ("a header naming a code column (name, username or code) and a "
                       "plan column (profile or plan), as docs/vouchers-office.md lists")
    if not header or not any(h.strip() for h in header):
        raise ImportRejected([RowProblem(1, "", "an empty file", expected_header)])
    where: dict[str, int] = {}
    out = ParsedImport()
    for i, name in enumerate(header):
        ours = _KNOWN.get(_key(name))
        if ours is None:
            if name.strip():
                out.ignored_columns.append(name.strip())
        elif ours in where:
            problem(1, name, name, f"one column for {ours} (also column "
                    f"{header[where[ours]]!r})")
        else:
            where[ours] = i
    for needed in ("code", "plan"):
        if needed not in where:
            problem(1, "", ",".join(header), f"{expected_header}; no {needed} column")
    if problems:
        raise ImportRejected(problems, total)

    def cell(row: list[str], ours: str) -> str | None:
        i = where.get(ours)
        return None if i is None or i >= len(row) else row[i].strip()

    known = ", ".join(plans) or "none"
    first_row: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not any(c.strip() for c in row):
            continue  # blank lines at the end of a spreadsheet export
        if len(out.rows) + total >= MAX_ROWS:
            problem(line, "", "more rows", f"at most {MAX_ROWS} rows per file; split it")
            break
        if len(row) > len(header):
            problem(line, "", f"{len(row)} cells", f"at most {len(header)} (the header's)")
            continue
        ok = True
        raw_code = cell(row, "code") or ""
        code = ""
        try:
            code = normalize_code(raw_code)
        except VoucherError:
            ok = False
            problem(line, header[where["code"]], raw_code,
                    "a desanet code: 10 symbols of digits 2-9 and letters other than I and O "
                    '(case, spaces and dashes ignored), e.g. "K7MQX-3PAR9"')
        if code and code in first_row:
            ok = False
            problem(line, header[where["code"]], raw_code,
                    f"a code not already in the file (row {first_row[code]})")
        elif code:
            first_row[code] = line
        password = cell(row, "password")
        if password and _key(password) != _key(raw_code):
            ok = False
            problem(line, header[where["password"]], "(hidden)",
                    "an empty password or the code again (a desanet voucher is one code)")
        profile = cell(row, "plan") or ""
        plan: str | None = None
        try:
            plan = plan_of(profile)
        except KeyError:
            ok = False
            problem(line, header[where["plan"]], profile,
                    f"a plan in shaping.plans (known: {known}), \"default\", or a profile "
                    "mapped with --map PROFILE=PLAN")
        duration: int | None = None
        raw = cell(row, "duration")
        if raw:
            try:
                duration = parse_ros_duration(raw)
            except ValueError:
                ok = False
                problem(line, header[where["duration"]], raw,
                        'a duration such as "1h", "1d", "3h30m", "01:00:00" or "1d 02:00:00"')
        devices: int | None = None
        raw = cell(row, "max_devices")
        if raw:
            if raw.isdigit() and 1 <= int(raw) <= 64:
                devices = int(raw)
            else:
                ok = False
                problem(line, header[where["max_devices"]], raw, "a whole number from 1 to 64")
        price = 0
        raw = cell(row, "price")
        if raw:
            try:
                price = parse_price(raw)
            except ValueError:
                ok = False
                problem(line, header[where["price"]], raw,
                        'a price in rupiah, e.g. "5000", "5.000" or "Rp 5.000"')
        who = cell(row, "seller")
        who = seller if who is None or who == "" else who
        if len(who) > MAX_SELLER or not who.isprintable():
            ok = False
            problem(line, header[where["seller"]] if "seller" in where else "--seller", who,
                    f"a seller name of at most {MAX_SELLER} printable characters")
        if ok:
            out.rows.append(ImportRow(line, code, plan, duration, devices, price, who))
    if problems:
        raise ImportRejected(problems, total)
    if not out.rows:
        raise ImportRejected([RowProblem(2, "", "no rows", "at least one voucher row")])
    return out


def profile_mapper(plans: Mapping[str, object], mapping: Mapping[str, str]
                   ) -> Callable[[str], str | None]:
    """``plan_of`` for :func:`parse_import`: ``mapping`` (--map PROFILE=PLAN) first, then a
    plan of the same name (case, spaces and "_" ignored), then "default"/"" for the default
    plan. Raises KeyError for anything else (never guesses)."""
    by_key = {_key(name): name for name in plans}
    mapped = {_key(k): v for k, v in mapping.items()}

    def plan_of(profile: str) -> str | None:
        k = _key(profile)
        if k in mapped:
            target = mapped[k]
            return None if target == "default" else target
        if k in by_key:
            return by_key[k]
        if k in ("", "default"):
            return None
        raise KeyError(profile)

    return plan_of
