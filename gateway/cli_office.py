"""`desanet vouchers report` and `desanet vouchers import`: the village office's commands.

Both call the control API (GET /v1/vouchers/report, POST /v1/vouchers/import), so the
daemon's config (plans, time zone) decides, and the TUI can show the same. The report's
JSON is printed as the daemon sends it (its shape: docs/vouchers-office.md); its CSV is
one table with a header, one row per total, plan, batch, seller and day.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from gateway.cli_format import format_bytes
from gateway.core.office import parse_day
from gateway.errors import Invalid

Add = Callable[..., argparse.ArgumentParser]
Client = Callable[[argparse.Namespace], Any]

MAX_FILE = 900 * 1024  # under the control API's 1 MiB body, JSON escaping included

CSV_COLUMNS = ("group", "key", "name", "created", "sold", "active", "expired", "revoked",
               "unused", "imported", "revenue", "bytes_down", "bytes_up", "used_seconds",
               "used_hours")
_COUNTS = ("created", "sold", "active", "expired", "revoked", "unused", "imported")


def _rupiah(n: int) -> str:
    from gateway.portal.printable import format_rupiah

    return format_rupiah(n)


def report_csv_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"group": "total", "key": "", "name": "", **data["totals"]}]
    rows += [{"group": "plan", "key": r["plan"] or "default", "name": "", **r}
             for r in data["by_plan"]]
    rows += [{"group": "batch", "key": r["batch"], "name": r.get("batch_name") or "", **r}
             for r in data["by_batch"]]
    rows += [{"group": "seller", "key": r["seller"], "name": "", **r} for r in data["by_seller"]]
    rows += [{"group": "day", "key": r["day"], "name": "", **r} for r in data["by_day"]]
    return rows


# A cell starting with one of these is run as a formula by Excel/LibreOffice: a seller
# or batch name such as '=HYPERLINK(...)' (printable text, accepted on import) would
# run in the office's spreadsheet. Such text cells get a leading apostrophe (OWASP's
# advice for CSV injection); numbers are written as they are.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def write_report_csv(data: dict[str, Any], out: Any) -> None:
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in report_csv_rows(data):
        writer.writerow({k: _cell(v) for k, v in row.items()})


def _table(title: str, key: str, rows: list[dict[str, Any]], label: Callable[[Any], str]
           ) -> list[str]:
    if not rows:
        return []
    out = [title, f"  {key:24} {'CREATED':>7} {'SOLD':>5} {'ACTIVE':>6} {'EXPIRED':>7} "
                  f"{'REVENUE':>14} {'DOWN':>9} {'UP':>9} {'HOURS':>7}"]
    for r in rows:
        out.append(f"  {label(r)[:24]:24} {r['created']:>7} {r['sold']:>5} {r['active']:>6} "
                   f"{r['expired']:>7} {_rupiah(r['revenue']):>14} "
                   f"{format_bytes(r['bytes_down']):>9} {format_bytes(r['bytes_up']):>9} "
                   f"{r['used_hours']:>7}")
    return out


def report_lines(data: dict[str, Any]) -> list[str]:
    span = f"{data['from'] or 'the start'} .. {data['to'] or 'today'}"
    only = "".join(f", {k} {data[k]}" for k in ("batch", "seller") if data[k])
    t = data["totals"]
    lines = [f"vouchers report {span} ({data['timezone']}{only})",
             "  " + "  ".join(f"{k} {t[k]}" for k in _COUNTS),
             f"  revenue {_rupiah(t['revenue'])} (imported codes were paid before: not "
             "counted)",
             f"  usage {format_bytes(t['bytes_down'])} down, {format_bytes(t['bytes_up'])} up, "
             f"{t['used_hours']} h online"]
    lines += _table("by plan:", "PLAN", data["by_plan"], lambda r: r["plan"] or "default")
    lines += _table("by batch:", "BATCH", data["by_batch"],
                    lambda r: r["batch"] + (f" ({r['batch_name']})" if r.get("batch_name")
                                            else ""))
    lines += _table("by seller:", "SELLER", data["by_seller"], lambda r: r["seller"] or "-")
    days = [d for d in data["by_day"] if d["created"] or d["sold"]]
    if days:
        lines.append("by day (days with sales):")
        lines.append(f"  {'DAY':10} {'CREATED':>7} {'SOLD':>5} {'REVENUE':>14}")
        lines += [f"  {d['day']:10} {d['created']:>7} {d['sold']:>5} "
                  f"{_rupiah(d['revenue']):>14}" for d in days]
    return lines


def cmd_report(args: argparse.Namespace, client: Client) -> int:
    # Checked here too, naming the option the user typed, before anything is sent.
    first, last = parse_day(args.from_, "--from"), parse_day(args.to, "--to")
    if first and last and last < first:
        raise Invalid("--to", args.to, f"a day on or after --from ({args.from_})")
    if args.json and args.csv:
        raise Invalid("--csv", "--csv with --json", "one of --json and --csv")
    query = {k: v for k, v in (("from", args.from_), ("to", args.to), ("batch", args.batch),
                               ("seller", args.seller)) if v}
    path = "/v1/vouchers/report" + (f"?{urlencode(query)}" if query else "")
    data = client(args).request("GET", path)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
    elif args.csv:
        write_report_csv(data, sys.stdout)
    else:
        print("\n".join(report_lines(data)))
    return 0


def _read_csv(path: str) -> str:
    # Never more than the limit in memory: /dev/zero or a mistaken disk image is refused
    # after MAX_FILE bytes, not read to the end.
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(MAX_FILE + 1)
        else:
            with Path(path).open("rb") as fh:
                raw = fh.read(MAX_FILE + 1)
    except OSError as exc:
        raise Invalid("FILE", path, f"a readable CSV file ({exc.strerror or exc})") from None
    if len(raw) > MAX_FILE:
        raise Invalid("FILE", f"over {MAX_FILE // 1024} KiB", f"at most {MAX_FILE // 1024} "
                      "KiB; split the file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")  # a spreadsheet saved on Windows


def _mapping(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        profile, sep, plan = pair.partition("=")
        if not sep or not profile.strip() or not plan.strip():
            raise Invalid("--map", pair, "PROFILE=PLAN", '"1jam=hour"')
        out[profile.strip()] = plan.strip()
    return out


def cmd_import(args: argparse.Namespace, client: Client) -> int:
    body: dict[str, Any] = {"text": _read_csv(args.file), "map": _mapping(args.map)}
    for key in ("duration", "seller", "name"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    from gateway.errors import ControlError

    try:
        data = client(args).request("POST", "/v1/vouchers/import", body)
    except ControlError as exc:
        if exc.kind != "invalid":
            raise
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
        return 0
    print(f"imported {data['imported']} voucher(s) from {args.file} into batch {data['batch']}")
    if data["ignored_columns"]:
        print(f"ignored columns: {', '.join(data['ignored_columns'])}")
    return 0


def register(vsub: Any, add: Add, client: Client) -> None:
    """`vouchers report` and `vouchers import` under `desanet vouchers`."""
    rp = add(vsub, "report", lambda a: cmd_report(a, client),
             "sales and usage: vouchers created, sold (first used), active, expired, revenue "
             "by plan, batch, seller and day, bytes and hours", json_flag=True)
    rp.add_argument("--from", dest="from_", metavar="DATE",
                    help="first local day, YYYY-MM-DD (default: the first voucher)")
    rp.add_argument("--to", metavar="DATE", help="last local day, included (default: today)")
    rp.add_argument("--batch", help="only this batch (its id)")
    rp.add_argument("--seller", help="only this seller")
    rp.add_argument("--csv", action="store_true", help="one CSV table with a header")
    im = add(vsub, "import", lambda a: cmd_import(a, client),
             "import codes an office already sold (MikroTik / Mikhmon CSV: name, profile, "
             "limit-uptime, ...); every row checked, all or nothing", json_flag=True)
    im.add_argument("file", metavar="FILE.csv", help='the CSV file ("-" for stdin)')
    im.add_argument("--map", action="append", metavar="PROFILE=PLAN",
                    help='a MikroTik profile -> a desanet plan, e.g. "1jam=hour" (repeat it; '
                         'profiles named like a plan, and "default", need none)')
    im.add_argument("--duration", help='for rows without limit-uptime whose plan has no '
                    'validity or time_of_use, e.g. "1d"')
    im.add_argument("--seller", help="who sold these codes (rows without a seller column)")
    im.add_argument("--name", help='a name for the imported batch, e.g. "Mikhmon lama"')
