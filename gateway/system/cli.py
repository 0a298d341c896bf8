"""`desanet system render`: write the image's boot-time files from gateway.toml."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from gateway.config import DEFAULT_PATH, load_config
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


def write_files(root: Path, files: dict[str, str]) -> list[Path]:
    """Writes ``files`` under ``root`` and removes this command's earlier files that the
    config no longer needs (a Wi-Fi name cleared, PPPoE back to DHCP)."""
    stale = {HOSTAPD_CONF, PPPOE_OPTIONS}
    networkd = root / NETWORKD_DIR
    if networkd.is_dir():
        stale |= {f"{NETWORKD_DIR}/{p.name}" for p in networkd.glob("*-desanet-*")}
    for rel in sorted(stale - files.keys()):
        (root / rel).unlink(missing_ok=True)
    written = []
    for rel, text in sorted(files.items()):
        _write(root / rel, text, file_mode(rel))
        written.append(root / rel)
    return written


def cmd_system_render(args: argparse.Namespace) -> int:
    cfg = load_config(args.config or DEFAULT_PATH)
    root = Path(args.root)
    radio = args.wifi_interface or wifi_interface(root / "sys/class/net")
    for path in write_files(root, render(cfg, radio)):
        print(path)
    return 0


def register(sub: Any) -> None:
    """Add `system` to the `desanet` parser's subcommands."""
    p = sub.add_parser("system", help="files of the OS image (hostapd, networkd, pppd)",
                       description="the OS image's boot-time files, made from gateway.toml")
    ssub = p.add_subparsers(dest="system_command", metavar="SUBCOMMAND", required=True,
                            help="what to do (render: the boot-time files)")
    r = ssub.add_parser(
        "render", help="write hostapd.conf, systemd-networkd and PPPoE files under ROOT/run",
        description="write hostapd.conf, the systemd-networkd files of the WAN and the LAN and "
                    "the PPPoE options from gateway.toml under ROOT/run (the image runs this at "
                    "boot: desanet-system-render.service); exit 2 if the config is invalid")
    r.set_defaults(func=cmd_system_render)
    r.add_argument("--config", default=argparse.SUPPRESS, help="gateway config file")
    r.add_argument("--root", default="/", help="write under this directory (default /)")
    r.add_argument("--wifi-interface", metavar="IFNAME",
                   help="the radio hostapd serves (default: the first in /sys/class/net, "
                        f"else {DEFAULT_WIFI_INTERFACE})")
