"""The `desanet` command."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from gateway.cli_connect import DEFAULT_SOCKET, SiteZone, resolve_socket, unreachable_hint
from gateway.cli_format import (
    class_owners,
    clock_time,
    config_status_lines,
    degraded_status_lines,
    fmt_time,
    format_event,
    print_changes,
    print_problems,
    print_restart_needed,
    services_lines,
    shaping_lines,
    telemetry_status_line,
    uplink_status_line,
    with_iso,
)
from gateway.config import DEFAULT_PATH, load_config
from gateway.config.units import format_duration, format_left, format_rate
from gateway.control.client import UNREACHABLE, ControlClient
from gateway.control.schema import ConfigApplyRequest, Out, parse_request
from gateway.errors import ConfigError, ControlError, DesanetError, Invalid

__all__ = ["build_parser", "format_event", "main"]

def _client(args: argparse.Namespace) -> ControlClient:
    return ControlClient(resolve_socket(args))


# The site's time zone for the dates this call prints (see gateway/cli_connect.py); main()
# points it at the daemon the call talks to.
_site = SiteZone(lambda: ControlClient(DEFAULT_SOCKET))


def _zone() -> str:
    return _site.name


def _print_json(data: Any) -> None:
    # The daemon's keys unchanged, plus an ISO 8601 sibling for each epoch time.
    print(json.dumps(with_iso(data, _zone()), indent=2, sort_keys=True))


def _vouchers_path(batch: str | None) -> str:
    # Batch names are free text ("posyandu mei"): encode them for the query string.
    return "/v1/vouchers" + (f"?{urlencode({'batch': batch})}" if batch else "")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("desanet")
    except PackageNotFoundError:  # a source tree that was not installed
        return "unknown"


def _account_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _who() -> str:
    """Who runs this command, for the daemon's events: "budi@10.0.0.5" over SSH, else "budi"."""
    user = os.environ.get("SUDO_USER") or os.environ.get("USER") or os.environ.get("LOGNAME") \
        or _account_name()
    ssh = (os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_CLIENT") or "").split()
    who = f"{user}@{ssh[0]}" if ssh else user
    return "".join(ch for ch in who if ch.isprintable())[:64] or "cli"


def _read_valid_config(path: str) -> str | None:
    """The text of a config file that passes `config check`; None (problems printed) if not."""
    try:
        load_config(path)
        return Path(path).read_text(encoding="utf-8")
    except ConfigError as exc:
        print_problems(exc.source, exc.problems)
        return None
    except (OSError, UnicodeDecodeError) as exc:  # pragma: no cover - raced with load_config
        print_problems(path, [f"cannot read file: {exc}"])
        return None


def _print_out(out: Out) -> None:
    _print_json(out.to_json())


# -- commands ------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.daemon.logs import setup_logging
    from gateway.daemon.main import run_daemon

    setup_logging(args.verbose)
    # No check here: a file that does not parse is the daemon's to handle, which
    # falls back to the last config that ran (and only fails when there is none).
    run_daemon(args.config or DEFAULT_PATH)
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    try:
        load_config(args.file)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return 2
    print(f"{args.file}: OK")
    return 0


def cmd_config_apply(args: argparse.Namespace) -> int:
    text = _read_valid_config(args.file)
    if text is None:
        return 2
    # The window is checked here too: nothing is sent unless everything is valid.
    request = parse_request(ConfigApplyRequest, {"text": text, "confirm": args.confirm,
                                                 "by": _who()})
    try:
        out = _client(args).config_apply(request.text, request.confirm, request.by)
    except ControlError as exc:
        if print_restart_needed(exc, "applied"):
            return 1
        raise
    if args.json:
        _print_out(out)
        return 0
    was = f" (was {out.previous_version})" if out.previous_version else ""
    print(f"applied {args.file}: config {out.version}{was}")
    print_changes(out.changes)
    if out.trial is not None:
        deadline = clock_time(out.trial.deadline, _zone())
        print(f"trial: until {deadline} ({format_left(int(out.trial.deadline - time.time()))} "
              f"left); the previous config {out.trial.previous_version} is kept")
        print(f"run `desanet config confirm` from a new connection (a new SSH login) before "
              f"{deadline} or the previous config comes back")
    return 0


def cmd_config_confirm(args: argparse.Namespace) -> int:
    out = _client(args).config_confirm(_who())
    if args.json:
        _print_out(out)
    else:
        print(f"confirmed config {out.version}; it stays")
    return 0


def cmd_config_rollback(args: argparse.Namespace) -> int:
    out = _client(args).config_rollback(_who())
    if args.json:
        _print_out(out)
    else:
        print(f"rolled back: config {out.version} is running again")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    out = _client(args).config_show()
    if args.json:
        _print_out(out)
        return 0
    sys.stdout.write(out.text if out.text.endswith("\n") or not out.text else out.text + "\n")
    return 0


def cmd_config_diff(args: argparse.Namespace) -> int:
    text = _read_valid_config(args.file)
    if text is None:
        return 2
    out = _client(args).config_diff(text)
    if args.json:
        _print_out(out)
        return 0
    print(f"running config -> {args.file}:")
    print_changes(out.changes)
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    try:
        out = _client(args).reload(_who())
    except ControlError as exc:
        if exc.kind == "unavailable":
            raise  # not reached, or the answer was lost: no refusal to report
        # The file on disk was refused (even an invalid one): that is a refusal of
        # the reload, exit 1, as systemd's ExecReload and scripts expect.
        if not print_restart_needed(exc, "reloaded"):
            print(f"reload refused, the running config stays: {exc}", file=sys.stderr)
        return 1
    if args.json:
        _print_out(out)
        return 0
    print(f"reloaded: config {out.version or '-'}")
    print_changes(out.changes)
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    client = _client(args)
    since = args.since
    waiting = False
    try:
        while True:
            try:
                page = client.events(since, 0 if args.no_follow else 25)
            except ControlError as exc:
                if args.no_follow or exc.kind != "unavailable":
                    raise
                if not waiting:  # the daemon restarts: wait for it, say so once
                    print(f"waiting for the daemon: {exc}", file=sys.stderr)
                    waiting = True
                time.sleep(2)
                continue
            waiting = False
            for event in page.events:
                if args.json:
                    print(json.dumps(with_iso(event.to_json(), _zone()), sort_keys=True,
                                     ensure_ascii=False))
                else:
                    print(format_event(event, _zone()))
            sys.stdout.flush()
            since = page.next
            if args.no_follow:
                return 0
    except KeyboardInterrupt:
        return 0


def cmd_status(args: argparse.Namespace) -> int:
    data = _client(args).request("GET", "/v1/status")
    _site.learn(data)
    if args.json:
        _print_json(data)
        return 0
    print(f"{data['site']} ({data['village']})")
    print(f"  ready:           {data['ready']}")
    for line in degraded_status_lines(data.get("degraded"), data.get("timezone")):
        print(line)
    print(f"  portal:          {data['portal_url']}  mode={data['portal_mode']}")
    print(f"  LAN address:     {data['lan_ip']}")
    print(uplink_status_line(data.get("uplink"), data.get("timezone")))
    print(telemetry_status_line(data.get("telemetry")))
    print(f"  active sessions: {data['sessions_active']}")
    print(f"  uptime:          {format_left(data['uptime'])}")
    print(f"  firewall:        nftables via {data['firewall']['backend']}")
    dns = data["dnsmasq"]
    print(f"  dnsmasq:         {'running' if dns['running'] else 'DOWN'} pid={dns['pid']}")
    shaping = data.get("shaping") or {}
    if shaping.get("enabled"):
        print(f"  shaping:         {format_rate(shaping['uplink_down'])} down / "
              f"{format_rate(shaping['uplink_up'])} up, leaf qdisc {shaping['leaf_qdisc'] or '-'}")
    else:
        print("  shaping:         off")
    for line in config_status_lines(data.get("config"), _zone()):
        print(line)
    return 0


def cmd_clients_list(args: argparse.Namespace) -> int:
    data = _client(args).request("GET", "/v1/clients")
    if args.json:
        _print_json(data)
        return 0
    rows = data["clients"]
    if not rows:
        print("no clients")
        return 0
    print(f"{'MAC':17}  {'IP':15}  {'STATE':10}  {'VIA':7}  {'LEFT':>6}  {'IDLE-LEFT':>9}  PLAN")
    for c in rows:
        if c["authorized"]:
            left = format_left(c["remaining"])
            idle = format_left(c.get("idle_left", 0))
            print(f"{c['mac']:17}  {c['ip']:15}  {'online':10}  {c['source']:7}  {left:>6}  "
                  f"{idle:>9}  {c.get('plan') or '-'}")
        else:
            print(f"{c['mac']:17}  {c['ip']:15}  {'portal':10}  {'-':7}  {'-':>6}  {'-':>9}  -")
    return 0


def cmd_clients_auth(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"mac": args.mac}
    for key in ("ip", "duration", "plan", "force"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    try:
        data = _client(args).request("POST", "/v1/clients/auth", body)
    except ControlError as exc:
        if exc.reason != "voucher_session":
            raise
        print(f"refused: {exc}; nothing changed. Add --force to replace the voucher session "
              "with this one.", file=sys.stderr)
        return 1
    if args.json:
        _print_json(data)
    else:
        c = data["client"]
        print(f"authorized {c['mac']} ({c['ip']}) until {fmt_time(c['expires'], _zone())}")
    return 0


def cmd_clients_deauth(args: argparse.Namespace) -> int:
    data = _client(args).request("POST", "/v1/clients/deauth", {"mac": args.mac})
    if args.json:
        _print_json(data)
    else:
        print(f"deauthorized {data['deauthorized']} ({data['ip']})")
    return 0


def cmd_clients_plan(args: argparse.Namespace) -> int:
    plan = None if args.plan == "default" else args.plan
    data = _client(args).request("POST", "/v1/clients/plan", {"mac": args.mac, "plan": plan})
    if args.json:
        _print_json(data)
    else:
        print(f"{data['client']['mac']} now on plan {data['client']['plan'] or 'default'}")
    return 0


def cmd_shaping(args: argparse.Namespace) -> int:
    client = _client(args)
    data = client.request("GET", "/v1/shaping")
    if args.json:
        _print_json(data)
        return 0
    if not data["enabled"]:
        print("shaping is off (shaping.enabled = false)")
        return 0
    # Client classes are named by tc class id only; the client list says whose they are.
    owners = class_owners(client.request("GET", "/v1/clients").get("clients"))
    for line in shaping_lines(data, owners):
        print(line)
    return 0


def cmd_services(args: argparse.Namespace) -> int:
    data = _client(args).request("GET", "/v1/services")
    if args.json:
        _print_json(data)
        return 0
    if not data["enabled"]:
        print("local services are off (local_services.enabled = false)")
        return 0
    for line in services_lines(data, _zone()):
        print(line)
    return 0


def cmd_services_prefetch(args: argparse.Namespace) -> int:
    data = _client(args).request("POST", "/v1/services/prefetch")
    if args.json:
        _print_json(data)
    else:
        for url, result in data["results"].items():
            print(f"{result:13} {url}")
    return 0


def cmd_vouchers_create(args: argparse.Namespace) -> int:
    import shlex

    from gateway.control.schema import VoucherCreateRequest

    body: dict[str, Any] = {"count": args.count, "duration": args.duration,
                            "max_devices": args.max_devices}
    if args.plan:
        body["plan"] = args.plan
    if args.name is not None:
        body["name"] = args.name
    if args.seller is not None:
        body["seller"] = args.seller
    # A bad --name (too long, control characters) is refused here, before anything is sent.
    parse_request(VoucherCreateRequest, body)
    data = _client(args).request("POST", "/v1/vouchers", body)
    if args.json:
        _print_json(data)
        return 0
    named = f" ({data['vouchers'][0]['batch_name']})" if data["vouchers"] and \
        data["vouchers"][0].get("batch_name") else ""
    print(f"batch {data['batch']}{named}: {len(data['vouchers'])} voucher(s), "
          f"{args.duration} each{', plan ' + args.plan if args.plan else ''}")
    for v in data["vouchers"]:
        print(f"  {v.get('serial', 0):>4}  {v['code']}")
    print(f"print them with: desanet vouchers print {shlex.quote(data['batch'])} -o vouchers.html")
    return 0


def cmd_vouchers_list(args: argparse.Namespace) -> int:
    path = _vouchers_path(args.batch)
    data = _client(args).request("GET", path)
    if args.json:
        _print_json(data)
        return 0
    rows = data["vouchers"]
    if not rows:
        print("no vouchers")
        return 0
    print(f"{'CODE':11}  {'STATE':8}  {'DURATION':8}  {'PLAN':10}  {'DEVICES':7}  {'NO.':>4}  "
          "BATCH")
    for v in rows:
        name = f" ({v['batch_name']})" if v.get("batch_name") else ""
        print(f"{v['code']:11}  {v['state']:8}  {format_duration(v['duration']):8}  "
              f"{v['plan'] or '-':10}  {len(v['devices'])}/{v['max_devices']:<5}  "
              f"{v.get('serial', 0):>4}  {v['batch']}{name}")
    return 0


def cmd_vouchers_revoke(args: argparse.Namespace) -> int:
    data = _client(args).request("POST", "/v1/vouchers/revoke", {"code": args.code})
    if args.json:
        _print_json(data)
    else:
        print(f"revoked {data['voucher']['code']}")
    return 0


def cmd_vouchers_release(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"code": args.code, "mac": args.mac}
    data = _client(args).request("POST", "/v1/vouchers/release", body)
    if args.json:
        _print_json(data)
    else:
        v = data["voucher"]
        print(f"released {v['code']} for {args.mac or 'every device'}: "
              f"{len(v['devices'])}/{v['max_devices']} device(s) now use it")
    return 0


def cmd_vouchers_print(args: argparse.Namespace) -> int:
    from gateway.model import Voucher
    from gateway.portal.printable import render_voucher_sheet

    if args.batch_arg and args.batch and args.batch_arg != args.batch:
        raise Invalid("BATCH", args.batch_arg, f"the same batch as --batch {args.batch!r}")
    batch = args.batch or args.batch_arg
    path = _vouchers_path(batch)
    rows = _client(args).request("GET", path)["vouchers"]
    if batch and not rows:
        # A typo in the batch name must not print an empty sheet that looks fine.
        print(f"error: no batch named {batch!r}; see `desanet vouchers list`",
              file=sys.stderr)
        return 1
    vouchers = [
        Voucher(code=v["code"], duration=v["duration"], plan=v["plan"], created=v["created"],
                batch=v["batch"], max_devices=v["max_devices"], first_used=v["first_used"],
                revoked=v["revoked"], devices=tuple(v["devices"]),
                batch_name=v.get("batch_name", ""), serial=v.get("serial", 0),
                price=v.get("price", 0), seller=v.get("seller", ""))
        for v in rows if v["state"] == "unused"
    ]
    if not vouchers:  # nothing to cut out: say so instead of printing an empty page
        which = f"batch {batch!r} has" if batch else "there are"
        print(f"error: {which} no unused vouchers; see `desanet vouchers list`", file=sys.stderr)
        return 1
    html = render_voucher_sheet(_sheet_config(args), vouchers, args.lang)
    if args.output:
        from gateway.config.loader import write_file_atomic

        try:  # owner-only, whole or not at all: unused codes are worth money
            write_file_atomic(args.output, html)
        except OSError as exc:
            print(f"error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"wrote {len(vouchers)} voucher(s) to {args.output}")
    else:
        sys.stdout.write(html)
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    from gateway.tui.app import run

    return run(resolve_socket(args), args.lang, getattr(args, "config", None))


def _sheet_config(args: argparse.Namespace) -> Any:
    """The running daemon's config: its portal address goes into the QR codes, its
    Wi-Fi name, plan labels and time zone onto the cards. A daemon started without a
    file gives its site names only (the defaults for the rest)."""
    from gateway.config import parse_config
    from gateway.config.loader import parse_config_text

    shown = _client(args).config_show()
    if shown.text:
        return parse_config_text(shown.text, shown.path or "the daemon's config")
    status = _client(args).request("GET", "/v1/status")
    return parse_config({
        "site": {"name": status["site"], "village": status["village"]},
        "network": {"lan_interface": "lan", "wan_interface": "wan",
                    "lan_address": f"{status['lan_ip']}/24"},
        "dhcp": {"range_start": _host(status["lan_ip"], 100),
                 "range_end": _host(status["lan_ip"], 200)},
    })


def _host(ip: str, last: int) -> str:
    return ".".join([*ip.split(".")[:3], str(last)])


# -- parser ----------------------------------------------------------------------


def build_parser(extras: bool = True) -> argparse.ArgumentParser:
    """The whole CLI; ``extras=False`` leaves out `fleet`, `diag` and plugin commands,
    whose modules (cryptography, paho's operator side, the lab) would otherwise stay
    resident in the daemon for its life (~11 MB; docs/benchmarks.md, footprint)."""
    parser = argparse.ArgumentParser(
        prog="desanet",
        description="desanet village hotspot gateway (captive portal, shaping, offline services)",
    )
    parser.add_argument("--version", action="version", version=f"desanet {_version()}")
    parser.add_argument("--config", help=f"gateway config file (default {DEFAULT_PATH})")
    parser.add_argument("--socket", help=f"control socket (default {DEFAULT_SOCKET}; "
                        "$DESANET_SOCKET; or the one running lab)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help="what to do")

    def add(parent: Any, name: str, func: Callable[[argparse.Namespace], int], help_: str,
            json_flag: bool = False) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        # Accept --config/--socket after the subcommand too (`desanet run --config F`).
        p.add_argument("--config", default=argparse.SUPPRESS, help="gateway config file")
        p.add_argument("--socket", default=argparse.SUPPRESS, help="control socket path")
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    run = add(sub, "run", cmd_run, "run the gateway daemon (systemd Type=notify)")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="log debug lines too (malformed requests, skipped work)")

    config = sub.add_parser("config", help="check, diff, apply (with a trial), confirm, roll back")
    csub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True,
                                 help="what to do with the config")
    check = add(csub, "check", cmd_config_check,
                "validate a config file; print every problem; exit 2 if invalid")
    check.add_argument("file", help="the TOML config file to check")
    ap = add(csub, "apply", cmd_config_apply,
             "validate a config file, show what changes and apply it to the running gateway",
             json_flag=True)
    ap.add_argument("file", help="the TOML config file to apply")
    ap.add_argument("--confirm", metavar="DURATION",
                    help='trial: keep the previous config and bring it back unless '
                         '`desanet config confirm` runs within DURATION, e.g. "5m"')
    add(csub, "confirm", cmd_config_confirm, "keep the config on trial", json_flag=True)
    add(csub, "rollback", cmd_config_rollback,
        "bring the previous config back now (ends a trial)", json_flag=True)
    add(csub, "show", cmd_config_show, "print the running config (TOML)", json_flag=True)
    df = add(csub, "diff", cmd_config_diff, "what applying FILE would change", json_flag=True)
    df.add_argument("file", help="the TOML config file to compare with the running one")

    add(sub, "reload", cmd_reload, "re-read the config file and apply it (systemctl reload); "
        "exit 1 if refused", json_flag=True)
    ev = add(sub, "events", cmd_events, "follow the gateway's events (Ctrl-C stops)",
             json_flag=True)
    ev.add_argument("--since", type=int, default=0, metavar="N",
                    help="events after sequence number N (default 0: all still buffered)")
    ev.add_argument("--no-follow", action="store_true", help="print what is buffered and exit")

    add(sub, "status", cmd_status, "show the gateway's state", json_flag=True)

    clients = add(sub, "clients", cmd_clients_list, "list clients (default), auth, deauth",
                  json_flag=True)
    clsub = clients.add_subparsers(dest="clients_command", metavar="SUBCOMMAND",
                                   help="what to do (default: list)")
    add(clsub, "list", cmd_clients_list, "list authorized clients and DHCP clients",
        json_flag=True)
    a = add(clsub, "auth", cmd_clients_auth, "authorize a client by MAC", json_flag=True)
    a.add_argument("mac", help="the client's MAC address, e.g. 02:00:00:00:00:01")
    a.add_argument("--ip", help="client IPv4 (default: from DHCP lease / neighbour table; "
                   "needed when the MAC holds several leases, as a copied MAC does)")
    a.add_argument("--duration", help='session length, e.g. "4h" (default: portal.session_length)')
    a.add_argument("--plan", help="shaping plan name")
    a.add_argument("--force", action="store_true",
                   help="replace the client's voucher session too (refused without it, so "
                        "a villager's paid time is not cut short by mistake)")
    d = add(clsub, "deauth", cmd_clients_deauth, "end a client's session now", json_flag=True)
    d.add_argument("mac", help="the client's MAC address")
    pl = add(clsub, "plan", cmd_clients_plan,
             "move a live client to another shaping plan (connections kept)", json_flag=True)
    pl.add_argument("mac", help="the client's MAC address")
    pl.add_argument("plan", help='a name from shaping.plans, or "default"')

    add(sub, "shaping", cmd_shaping, "per-class traffic counters of the shaping trees",
        json_flag=True)

    services = add(sub, "services", cmd_services,
                   "government-services cache: hit ratio, upstream health, queued forms",
                   json_flag=True)
    ssub = services.add_subparsers(dest="services_command", metavar="SUBCOMMAND",
                                   help="what to do (default: show the state)")
    add(ssub, "prefetch", cmd_services_prefetch, "warm the prefetch URLs now", json_flag=True)

    vouchers = sub.add_parser("vouchers", help="create, list, revoke and print vouchers")
    vsub = vouchers.add_subparsers(dest="vouchers_command", metavar="SUBCOMMAND", required=True,
                                   help="what to do with vouchers")
    c = add(vsub, "create", cmd_vouchers_create, "create a batch of vouchers", json_flag=True)
    c.add_argument("--count", type=int, default=1, help="how many vouchers (default 1, at most 1000)")
    c.add_argument("--duration", required=True, help='access per voucher from first use, e.g. "1d"')
    c.add_argument("--plan", help="shaping plan for clients using these vouchers")
    c.add_argument("--max-devices", type=int, default=1, help="devices per voucher (default 1)")
    c.add_argument("--name", help='what you call the batch, printed on the sheet, e.g. '
                                  '"Posyandu Mei" (at most 64 characters)')
    c.add_argument("--seller", help='who sells this batch, for `vouchers report`, e.g. '
                                    '"Warung Bu Sari" (at most 64 characters)')
    ls = add(vsub, "list", cmd_vouchers_list, "list vouchers", json_flag=True)
    ls.add_argument("--batch", help="only this batch (its id, as `vouchers create` printed it)")
    r = add(vsub, "revoke", cmd_vouchers_revoke, "revoke a voucher and end its sessions",
            json_flag=True)
    r.add_argument("code", help='the voucher code, e.g. "ABCDE-FGHJK"')
    rl = add(vsub, "release", cmd_vouchers_release,
             "free a voucher's device slot (a villager changed phones); its time keeps running",
             json_flag=True)
    rl.add_argument("code", help='the voucher code, e.g. "ABCDE-FGHJK"')
    rl.add_argument("--mac", help="free only this device's slot (default: every slot)")
    pr = add(vsub, "print", cmd_vouchers_print, "printable HTML sheet of unused vouchers")
    pr.add_argument("batch_arg", nargs="?", metavar="BATCH",
                    help="the batch to print (default: every unused voucher)")
    pr.add_argument("--batch", help="the same as BATCH")
    pr.add_argument("--lang", choices=["id", "en"],
                    help="language of the sheet: id or en (default: site.language)")
    pr.add_argument("--output", "-o", help="write to this file instead of stdout")
    from gateway.cli_office import register as register_office  # report, import

    register_office(vsub, add, _client)

    tui = add(sub, "tui", cmd_tui, "the technician's terminal UI (keyboard only, 80x24)")
    tui.add_argument("--lang", choices=["id", "en"],
                     help="language at start: id (default) or en; `l` switches at run time")

    if not extras:
        return parser
    from gateway.fleet.cli import register as register_fleet

    register_fleet(sub)
    from gateway.diag.cli import register as register_diag  # works without the daemon

    register_diag(sub)
    from gateway.system.cli import register as register_system  # the OS image's boot files

    register_system(sub)
    from provisioning.cli import register as register_provision  # crypto loads per command

    register_provision(sub)
    from gateway.update.cli import register as register_update  # A/B root updates

    register_update(sub)
    from gateway.plugins import register_plugins  # `desanet lab` (dev-only lab/ distribution)

    register_plugins(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    global _site
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(extras=argv[:1] != ["run"])  # the daemon: only what it uses
    args = parser.parse_args(argv)
    _site = SiteZone(lambda: _client(args))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc.source}:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return 2
    except Invalid as exc:  # a bad argument, caught before anything was sent
        problems = getattr(exc, "problems", None) or [str(exc)]
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except ControlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.reason == UNREACHABLE:
            for line in unreachable_hint(resolve_socket(args), argv):
                print(line, file=sys.stderr)
        return 2 if exc.kind == "invalid" else 1
    except DesanetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `desanet vouchers list | head`: the reader left; say nothing more. Point
        # stdout at /dev/null so the interpreter's final flush does not complain.
        with contextlib.suppress(OSError, ValueError):  # stdout may not be a real file
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
