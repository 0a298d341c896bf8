"""`desanet diag [CHECK ...] [--json]`: run the diagnostics and print a table or JSON.

Exit status: 0 when no check failed, 1 when any failed, 2 on bad arguments (an unknown
check name is told with the list of names). The table is in Bahasa Indonesia unless
``--lang en`` or the environment's language is English; ``--json`` prints the results'
stable form (:meth:`CheckResult.to_json`), in both languages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.config.units import parse_rate, parse_size
from gateway.diag.context import DEFAULT_SPEED_BYTES, DEFAULT_SPEED_TARGET, DEFAULT_TIMEOUT, DiagOptions
from gateway.diag.oui import RANDOM
from gateway.diag.registry import CHECKS, run_checks, unknown_names
from gateway.diag.result import CheckResult

WIDTH = 80  # a serial console
NAME_WIDTH = 12
STATUS_WORDS = {"id": {"ok": "baik", "warn": "awas", "fail": "GAGAL", "skip": "lewat"},
                "en": {"ok": "ok", "warn": "warn", "fail": "FAIL", "skip": "skip"}}


def language_from_env(env: Mapping[str, str]) -> str:
    """English when the environment's language is English, else Bahasa Indonesia."""
    for key in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(key, "")
        if value:
            return "en" if value.lower().startswith("en") else "id"
    return "id"


MAX_LISTED = 20  # devices listed under the ARP scan's row; --json has them all


def detail_lines(r: CheckResult, lang: str) -> list[str]:
    """What a technician reads off a row besides its words: the devices an ARP scan found,
    the servers that answered a DHCP discover."""
    if r.name == "arp-scan":
        devices = r.details.get("devices") or []
        random = "MAC acak" if lang == "id" else "random MAC"  # a phone's private address
        lines = [f"{d['ip']:<15} {d['mac']}  {random if d['vendor'] == RANDOM else d['vendor']}"
                 .rstrip() for d in devices[:MAX_LISTED]]
        if len(devices) > MAX_LISTED:
            more = len(devices) - MAX_LISTED
            lines.append(f"(+{more} lagi; --json untuk semuanya)" if lang == "id"
                         else f"(+{more} more; --json lists them all)")
        return lines
    if r.name == "rogue-dhcp":
        mark = {"id": ("LIAR", "gateway"), "en": ("ROGUE", "gateway")}[lang]
        servers = r.details.get("servers") or []
        lines = [f"{s['server']:<15} {s['mac']}  {mark[0] if s['rogue'] else mark[1]}"
                 for s in servers[:MAX_LISTED]]
        if len(servers) > MAX_LISTED:
            more = len(servers) - MAX_LISTED
            lines.append(f"(+{more} lagi; --json untuk semuanya)" if lang == "id"
                         else f"(+{more} more; --json lists them all)")
        return lines
    return []


def _wrap(text: str, width: int, **kw: Any) -> list[str]:
    # Paths and addresses stay whole: never broken at a hyphen or inside a long word.
    return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False, **kw)


def render_table(results: Sequence[CheckResult], lang: str, width: int = WIDTH) -> str:
    words = STATUS_WORDS[lang]
    head = ("PEMERIKSAAN", "STATUS", "HASIL") if lang == "id" else ("CHECK", "STATUS", "RESULT")
    indent = NAME_WIDTH + 1 + 6 + 1
    text_width = max(20, width - indent)
    out = [f"{head[0]:<{NAME_WIDTH}} {head[1]:<6} {head[2]}"]
    for r in results:
        lines = _wrap(r.summary(lang), text_width) or [""]
        out.append(f"{r.name:<{NAME_WIDTH}} {words[r.status]:<6} {lines[0]}")
        out += [" " * indent + x for x in lines[1:]]
        out += [" " * (indent + 2) + x for x in detail_lines(r, lang)]
        if r.status != "ok":
            out += [" " * indent + x for x in _wrap(
                "-> " + r.advice(lang), text_width, subsequent_indent="   ")]
    counts = {s: sum(1 for r in results if r.status == s) for s in words}
    tally = ", ".join(f"{n} {words[s]}" for s, n in counts.items() if n)
    out.append(("Ringkasan: " if lang == "id" else "Summary: ") + tally)
    return "\n".join(out)


def exit_status(results: Sequence[CheckResult]) -> int:
    return 1 if any(r.status == "fail" for r in results) else 0


def _arg(parse: Any) -> Any:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def _seconds(text: str) -> float:
    value = float(text)
    if not 0.1 <= value <= 120:
        raise ValueError(f"{text} is outside 0.1 to 120 seconds; write e.g. 4")
    return value


def register(sub: Any) -> None:
    """Add `diag` to the `desanet` parser's subcommands."""
    names = ", ".join(CHECKS)
    p = sub.add_parser("diag", help="on-site diagnostics (work without the daemon)",
                       description="on-site diagnostics; they work when the daemon is down. "
                                   f"Checks: {names}. Exit 0 no failure, 1 a failure, 2 bad "
                                   "arguments.")
    p.set_defaults(func=cmd_diag)
    p.add_argument("checks", nargs="*", metavar="CHECK", help=f"checks to run (default all): {names}")
    p.add_argument("--config", default=argparse.SUPPRESS, help="gateway config file")
    p.add_argument("--socket", default=argparse.SUPPRESS, help="control socket path")
    p.add_argument("--json", action="store_true", help="machine-readable output (both languages)")
    p.add_argument("--lang", choices=["id", "en"],
                   help="language of the table (default: English when $LANG is English, else id)")
    p.add_argument("--timeout", type=_arg(_seconds), default=DEFAULT_TIMEOUT,
                   help=f"seconds for one network exchange (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--speed-url", help="file to download for the speed check (default: the "
                                       "first local service's upstream)")
    p.add_argument("--speed-target", type=_arg(parse_rate),
                   default=DEFAULT_SPEED_TARGET,
                   help='uplink speed expected, e.g. "5mbit" (default 1mbit)')
    p.add_argument("--speed-bytes", type=_arg(parse_size),
                   default=DEFAULT_SPEED_BYTES,
                   help='at most this much is downloaded, e.g. "1mb" (default 1mb; metered '
                        "uplinks pay for it)")
    p.add_argument("--dns-name", help="name to resolve in the dns check (default: a service's)")
    p.add_argument("--log-file", help="the daemon's log file (default: the journal, else "
                                      "gateway.log beside the config)")


def cmd_diag(args: argparse.Namespace) -> int:
    bad = unknown_names(args.checks)
    if bad:
        print(f"error: unknown check {', '.join(bad)}; the checks are: {', '.join(CHECKS)}",
              file=sys.stderr)
        return 2
    options = DiagOptions(timeout=args.timeout, speed_url=args.speed_url,
                          speed_target=args.speed_target, speed_bytes=args.speed_bytes,
                          dns_name=args.dns_name,
                          socket=getattr(args, "socket", None) or os.environ.get("DESANET_SOCKET"),
                          log_file=args.log_file)
    results = asyncio.run(run_checks(args.checks or None, getattr(args, "config", None), options))
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2, sort_keys=True,
                         ensure_ascii=False))
    else:
        print(render_table(results, args.lang or language_from_env(os.environ)))
    return exit_status(results)
