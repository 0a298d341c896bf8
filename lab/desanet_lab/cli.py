"""`desanet lab ...`: argparse wiring for the virtual village.

``register(subparsers)`` adds the ``lab`` command to the main CLI; each
subcommand sets ``func(args) -> int``. ``python -m desanet_lab`` runs the
same commands on their own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from desanet_lab import api, uplink
from desanet_lab import plan as p
from gateway.errors import DesanetError


def _prefix_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefix", default=p.DEFAULT_PREFIX,
                        help=f"namespace name prefix (default {p.DEFAULT_PREFIX!r})")


def register(subparsers: argparse._SubParsersAction) -> None:
    lab = subparsers.add_parser(
        "lab", help="the virtual village: network namespaces for demos and tests",
        description="Build a village out of network namespaces (WAN with origin servers "
                    "and resolvers, the gateway running the real daemon, N DHCP clients).",
    )
    sub = lab.add_subparsers(dest="lab_command", metavar="COMMAND", required=True,
                             help="what to do with the lab")

    up = sub.add_parser("up", help="build the lab (tears down a leftover one first)")
    _prefix_arg(up)
    up.add_argument("--clients", type=int, default=p.DEFAULT_CLIENTS,
                    help=f"number of client namespaces (default {p.DEFAULT_CLIENTS})")
    up.add_argument("--json", action="store_true", help="print the result as JSON")
    up.add_argument("--no-gateway", action="store_true",
                    help="do not start the gateway daemon (and so no DHCP in the clients)")
    up.add_argument("--no-broker", action="store_true",
                    help="no MQTT broker in the WAN (and telemetry off in the gateway's config)")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="remove the lab: processes, namespaces, files")
    _prefix_arg(down)
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="show namespaces, addresses and the daemon")
    _prefix_arg(status)
    status.add_argument("--json", action="store_true", help="print as JSON")
    status.set_defaults(func=cmd_status)

    ex = sub.add_parser(
        "exec", help="run a command in a lab namespace (gw, wan, c1, c2, ...)",
        description="Run CMD in a lab namespace, e.g. "
                    "`desanet lab exec c1 -- curl -i http://internet.lab/`. "
                    "--prefix may come before or after the member.",
    )
    _prefix_arg(ex)
    ex.add_argument("member", help="gw, wan or cN")
    # REMAINDER takes everything after the member, so `exec c1 --prefix P -- CMD`
    # arrives here whole: cmd_exec reads the lab's own options before the "--".
    ex.add_argument("cmd", nargs=argparse.REMAINDER,
                    help="[--prefix P] -- CMD [ARGS...]: the command to run")
    ex.set_defaults(func=cmd_exec)

    link = sub.add_parser(
        "uplink", help="cut or restore the village uplink (to see what villagers see offline)",
        description="`down` cuts the gateway's uplink on the ISP side, `up` restores it. "
                    "--mode link: the ISP end of the WAN link goes dark (the gateway loses "
                    "carrier); --mode silent: the link stays up but nothing answers (only "
                    "probes notice). Then watch `desanet status`.",
    )
    _prefix_arg(link)
    link.add_argument("state", choices=("down", "up"), help="down: cut it; up: restore it")
    link.add_argument("--mode", choices=uplink.CUT_MODES, default="link",
                      help="how `down` cuts: link (default) or silent")
    link.set_defaults(func=cmd_uplink)


def _fail(exc: DesanetError) -> int:
    print(f"desanet lab: {exc}", file=sys.stderr)
    return 1


def cmd_up(args: argparse.Namespace) -> int:
    spec = p.LabSpec(prefix=args.prefix, clients=args.clients,
                     start_gateway=not args.no_gateway, broker=not args.no_broker)
    try:
        info = api.lab_up(spec)
    except DesanetError as exc:
        return _fail(exc)
    _show(info, args.json)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    try:
        api.lab_down(args.prefix)
    except DesanetError as exc:
        return _fail(exc)
    print(f"lab {args.prefix!r} is down")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    try:
        info = api.lab_status(args.prefix)
    except DesanetError as exc:
        return _fail(exc)
    if not info.present and not args.json:
        print(f"no lab with prefix {args.prefix!r} is up; start one with `desanet lab up`")
        return 1
    _show(info, args.json)
    return 0 if info.present else 1


def split_exec_args(prefix: str, rest: list[str]) -> tuple[str, list[str]]:
    """(prefix, CMD) from what follows the member: ``[--prefix P] [--] CMD...``.

    Only options before the ``--`` (or before the first word that is not one)
    belong to the lab; everything after is the command's, untouched
    (``exec c1 -- curl --prefix x`` passes ``--prefix x`` to curl).
    """
    i = 0
    while i < len(rest):
        word = rest[i]
        if word == "--":
            return prefix, rest[i + 1:]
        if word.startswith("--prefix="):
            prefix = word.split("=", 1)[1]
            i += 1
        elif word == "--prefix":
            if i + 1 == len(rest):
                return prefix, []  # no value and no command: the caller says how
            prefix = rest[i + 1]
            i += 2
        else:
            break
    return prefix, rest[i:]


def cmd_exec(args: argparse.Namespace) -> int:
    args.prefix, cmd = split_exec_args(args.prefix, list(args.cmd))
    if not cmd:
        print("desanet lab exec: give a command after --, "
              "e.g. `desanet lab exec c1 -- curl -i http://internet.lab/`", file=sys.stderr)
        return 2
    try:
        ns = p.resolve_ns(args.prefix, args.member)
    except DesanetError as exc:
        return _fail(exc)
    if ns not in api.lab_namespaces(args.prefix):
        print(f"desanet lab exec: namespace {ns} does not exist; is the lab up?",
              file=sys.stderr)
        return 1
    # Interactive: inherit the terminal, no timeout (the user owns the command).
    try:
        return subprocess.call(["ip", "netns", "exec", ns, *cmd])
    except KeyboardInterrupt:
        return 130


def cmd_uplink(args: argparse.Namespace) -> int:
    try:
        if args.state == "down":
            uplink.uplink_down(args.prefix, args.mode)
        else:
            uplink.uplink_up(args.prefix)
    except DesanetError as exc:
        return _fail(exc)
    how = f" ({args.mode})" if args.state == "down" else ""
    print(f"uplink of lab {args.prefix!r} is {'cut' if args.state == 'down' else 'restored'}"
          f"{how}; the gateway notices within 10 s (`desanet status`)")
    return 0


def _show(info: api.LabInfo, as_json: bool) -> None:
    data = info.to_json()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    print(format_human(data))


def _addrs(cidrs: list[str]) -> str:
    shown = [a for a in cidrs if not a.startswith("fe80:")]
    return ", ".join(shown) or "-"


def format_human(data: dict[str, Any]) -> str:
    ns = data["namespaces"]
    gw = data["gateway"]
    lines = [f"desanet lab {data['prefix']!r}" + ("" if data["present"] else " (not up)")]
    lines.append(f"  WAN      {ns['wan']['name']:<10} {_addrs(ns['wan']['addresses'])}")
    lines.append(f"  gateway  {ns['gw']['name']:<10} {_addrs(ns['gw']['addresses'])}")
    state = "running" if gw["running"] else "not running"
    lines.append(f"  daemon   pid {gw['pid'] or '-'} ({state}); log {gw['log']}")
    for c in ns["clients"]:
        lines.append(f"  client   {c['name']:<10} mac {c['mac']}  ipv4 {c['ipv4'] or '(no lease)'}")
    lines += [
        "",
        f"  portal         {data['portal_url']}  (or {data['portal_ip_url']})",
        f"  control socket {data['control_socket']}",
        f"  internet       http://{data['hosts']['internet']}/ ({data['addresses']['internet']})",
        f"  government     http://{data['hosts']['government']}/ "
        f"({data['addresses']['government']})",
        f"  resolvers      ISP {data['addresses']['isp_resolver']}, "
        f"outside {data['addresses']['outside_resolver']}",
        *_broker_lines(data.get("broker")),
        "",
        "Try:",
        *(f"  {cmd}" for cmd in data["try"]),
    ]
    return "\n".join(lines)


def _broker_lines(b: dict[str, Any] | None) -> list[str]:
    if not b:
        return []
    state = "running" if b.get("running") else "not running"
    return [f"  MQTT broker    {b['url']} ({b['address']}:{b['port']} in {b['namespace']}, "
            f"{state}); gateway site {b['site_id']}",
            f"  operator       --ca {b['ca']} --cert {b['operator_cert']} "
            f"--key {b['operator_key']}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="desanet")
    register(parser.add_subparsers(dest="command", required=True, help="what to do"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("desanet lab: needs root (network namespaces)", file=sys.stderr)
        return 1
    code: int = args.func(args)
    return code
