"""`desanet system render`: write the image's boot-time files from gateway.toml."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from gateway.config import DEFAULT_PATH, load_config
from gateway.system.reload import reload_commands, run_commands
from gateway.system.render import (
    DEFAULT_WIFI_INTERFACE,
    HOSTAPD_CONF,
    NETWORKD_DIR,
    PPPOE_OPTIONS,
    file_mode,
    render,
)


def wifi_interface(sys_class_net: Path = Path("/sys/class/net")) -> str:
    """The first radio the kernel knows (wlan0 on a Pi, wlp2s0 on a mini-PC), else wlan0."""
    try:
        radios = sorted(p.name for p in sys_class_net.iterdir() if (p / "phy80211").exists())
    except OSError:
        radios = []
    return radios[0] if radios else DEFAULT_WIFI_INTERFACE


def _write(path: Path, text: str, mode: int) -> None:
    # Atomic: hostapd or networkd never read half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _current(path: Path) -> tuple[str, int] | None:
    try:
        return path.read_text(encoding="utf-8"), path.stat().st_mode & 0o7777
    except (OSError, UnicodeDecodeError):
        return None


def write_files(root: Path, files: dict[str, str]) -> list[str]:
    """Writes ``files`` under ``root`` and removes this command's earlier files that the
    config no longer needs (a Wi-Fi name cleared, PPPoE back to DHCP). A file already
    as rendered (text and mode) is left alone. Returns what changed: the paths,
    relative to ``root``, written anew or removed."""
    stale = {HOSTAPD_CONF, PPPOE_OPTIONS}
    networkd = root / NETWORKD_DIR
    if networkd.is_dir():
        stale |= {f"{NETWORKD_DIR}/{p.name}" for p in networkd.glob("*-desanet-*")}
    changed = []
    for rel in sorted(stale - files.keys()):
        if (root / rel).exists() or (root / rel).is_symlink():
            (root / rel).unlink(missing_ok=True)
            changed.append(rel)
    for rel, text in sorted(files.items()):
        mode = file_mode(rel)
        if _current(root / rel) != (text, mode):
            _write(root / rel, text, mode)
            changed.append(rel)
    return sorted(changed)


def cmd_system_render(args: argparse.Namespace) -> int:
    cfg = load_config(args.config or DEFAULT_PATH)
    root = Path(args.root)
    radio = args.wifi_interface or wifi_interface(root / "sys/class/net")
    files = render(cfg, radio)
    changed = write_files(root, files)
    if not args.reload:
        for rel in changed if args.changed_only else sorted(files):
            print(root / rel)
        return 0
    # A change to gateway.toml made while this runs starts no second run (systemd merges
    # the path unit's start into this one): render again until nothing changes, at most
    # three rounds (every file written is also reloaded).
    status, rounds = 0, 0
    while changed:
        for rel in changed:
            print(f"changed: {root / rel}", flush=True)
        status |= run_commands(reload_commands(changed, files, cfg.network.wan_interface))
        rounds += 1
        if rounds == 3:
            print("gateway.toml kept changing: stopped after 3 rounds")
            return status
        cfg = load_config(args.config or DEFAULT_PATH)
        files = render(cfg, radio)
        changed = write_files(root, files)
    print("the rendered files are as gateway.toml says")
    return status


def cmd_grow_data(args: argparse.Namespace) -> int:
    from gateway.system.growdata import GrowError, grow

    try:
        print(grow(Path(args.device)))
    except (GrowError, OSError, ValueError) as exc:
        print(f"error: {args.device} not grown: {exc}", file=sys.stderr)
        return 1
    return 0


def register(sub: Any) -> None:
    """Add `system` to the `desanet` parser's subcommands."""
    p = sub.add_parser("system", help="files of the OS image (hostapd, networkd, pppd)",
                       description="the OS image's boot-time files, made from gateway.toml")
    ssub = p.add_subparsers(dest="system_command", metavar="SUBCOMMAND", required=True,
                            help="render: write the boot-time files")
    r = ssub.add_parser(
        "render", help="write hostapd.conf, systemd-networkd and PPPoE files under ROOT/run",
        description="write hostapd.conf, the systemd-networkd files of the WAN and the LAN and "
                    "the PPPoE options from gateway.toml under ROOT/run (the image runs this at "
                    "boot: desanet-system-render.service, and after each change of gateway.toml: "
                    "desanet-system-apply.path); a file already as rendered is not rewritten; "
                    "exit 2 if the config is invalid")
    r.set_defaults(func=cmd_system_render)
    r.add_argument("--config", default=argparse.SUPPRESS, help="gateway config file")
    r.add_argument("--root", default="/", help="write under this directory (default /)")
    r.add_argument("--wifi-interface", metavar="IFNAME",
                   help="the radio hostapd serves (default: the first in /sys/class/net, "
                        f"else {DEFAULT_WIFI_INTERFACE})")
    r.add_argument("--changed-only", action="store_true",
                   help="print only the files this run changed (written anew or removed); "
                        "nothing printed: the running services need no telling")
    r.add_argument("--reload", action="store_true",
                   help="then tell the running services about the changed files only: "
                        "networkctl reload (+ reconfigure the WAN link), restart or stop "
                        "desanet-pppoe and hostapd; exit 1 if one of those failed")
    g = ssub.add_parser(
        "grow-data", help="grow the data partition of an MBR card (Raspberry Pi) to its end",
        description="extend the card's last partition (the data partition) to the end of the "
                    "card in the MBR and tell the kernel (resizepart); the image runs this at "
                    "boot on a Raspberry Pi (desanet-grow-data.service), before /data is "
                    "checked or mounted. GPT disks are grown by systemd-repart instead.")
    g.add_argument("--device", default="/dev/disk/by-label/desanet-data",
                   help="the data partition (default: %(default)s)")
    g.set_defaults(func=cmd_grow_data)
