"""``desanet update install|status``: A/B root updates on the gateway (docs/updates.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.update import install as inst
from gateway.update import slots, ubootstate
from gateway.update.bundle import BundleError

INSTALL_HELP = """\
Memasang pembaruan ke slot root yang tidak aktif; setelah reboot slot baru dicoba,
dan bila daemon tidak siap (READY) gateway kembali sendiri ke versi lama.
Installs a signed update bundle into the inactive root slot. After a reboot the
new slot is tried; if the daemon never reaches READY the gateway falls back to
the running version by itself. The data partition is never touched.

example:  ssh root@gateway desanet update install - < desanet-2026.12.1.update
"""


def cmd_install(args: argparse.Namespace) -> int:
    paths = inst.Paths()
    try:
        if args.bundle == "-":
            target, version, running = inst.install(sys.stdin.buffer, paths, args.tries,
                                                    args.allow_downgrade)
        else:
            with Path(args.bundle).open("rb") as f:
                target, version, running = inst.install(f, paths, args.tries,
                                                        args.allow_downgrade)
    except (BundleError, OSError) as exc:
        print(f"error: update not installed: {exc}", file=sys.stderr)
        return 1
    print(f"terpasang / installed: {version} in slot {target}. Reboot to try it "
          f"({args.tries} tries; then back to slot {running} by itself).")
    return 0


def cmd_status(args: argparse.Namespace, paths: inst.Paths | None = None) -> int:
    paths = paths or inst.Paths()
    running = slots.running_slot(paths.cmdline.read_text())
    print(f"slot: {running or '-'}  version: {inst.image_version(paths.os_release) or '-'}")
    if ubootstate.is_uboot(paths.cmdline.read_text()):
        for line in ubootstate.read(paths.esp).describe(running):
            print(line)
        return 0
    for e in slots.entries(paths.esp):
        state = "good" if e.tries_left is None else (
            "failed" if e.tries_left == 0 else f"trial, {e.tries_left} tries left")
        print(f"  {e.name}: slot {e.slot}, {state}")
    return 0


def cmd_bless(args: argparse.Namespace, paths: inst.Paths | None = None) -> int:
    """Run by desanet-boot-check once the daemon is READY (U-Boot; systemd-boot has its own)."""
    paths = paths or inst.Paths()
    cmdline = paths.cmdline.read_text()
    running = slots.running_slot(cmdline)
    if not ubootstate.is_uboot(cmdline):
        print("systemd-boot: systemd-bless-boot marks the slot good; nothing to do here")
        return 0
    if running is None or not ubootstate.is_trial(cmdline):
        print(f"slot {running or '-'}: not a trial boot; nothing to mark")
        return 0
    try:
        marked = ubootstate.bless(paths.esp, running)
    except OSError as exc:
        print(f"error: slot {running} not marked good: {exc}", file=sys.stderr)
        return 1
    print(f"slot {running}: {'marked good' if marked else 'was not on trial any more'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("update", help="A/B root updates with automatic fallback",
                        description="A/B root updates with automatic fallback (docs/updates.md)")
    usub = up.add_subparsers(dest="update_cmd", metavar="SUBCOMMAND", required=True,
                            help="install a bundle, or show the slots")
    p = usub.add_parser("install", help="write a signed bundle into the inactive slot",
                        description=INSTALL_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="the .update file, or - for standard input")
    p.add_argument("--tries", type=int, default=inst.DEFAULT_TRIES,
                   help=f"boots the new slot gets to reach READY, 1-{inst.MAX_TRIES} "
                   "(default %(default)s)")
    p.add_argument("--allow-downgrade", action="store_true",
                   help="install a version not newer than the running one")
    p.set_defaults(func=cmd_install)
    s = usub.add_parser("status", help="the running slot and the loader entries")
    s.set_defaults(func=cmd_status)
    b = usub.add_parser("bless", help="mark the running trial slot good (boot check, U-Boot)",
                        description="Marks the running slot good after a trial boot whose "
                        "daemon reached READY. On a Raspberry Pi (U-Boot) desanet-boot-check "
                        "runs it; with systemd-boot, systemd-bless-boot does this.")
    b.set_defaults(func=cmd_bless)
