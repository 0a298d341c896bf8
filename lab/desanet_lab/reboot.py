"""What the ``reboot`` remote command does in the virtual village.

The lab's daemon gets ``DESANET_REBOOT_COMMAND`` = ``python -m desanet_lab.reboot
--prefix P`` (services.start_gateway), so an operator who sends ``reboot`` from the
WAN sees what a village would see: the gateway goes away (its offline status comes
from the broker) and comes back with a new session counter. The machine is never
rebooted.

The daemon waits for its reboot command to end, and this command stops the daemon,
so it only hands the work to a process of its own session and returns at once; that
process stops the daemon (SIGTERM, as a shutdown would) and starts it again like
``desanet lab up`` does. Its output goes to ``<state>/reboot.log``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from desanet_lab import netns, services
from desanet_lab import plan as p


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m desanet_lab.reboot",
                                 description="restart the lab's gateway daemon, as a reboot would")
    ap.add_argument("--prefix", required=True, help="the lab's prefix")
    ap.add_argument("--now", action="store_true", help=argparse.SUPPRESS)  # the detached half
    return ap


def restart(prefix: str) -> int:
    """Stop the daemon of lab ``prefix`` and start it again; its new pid."""
    plan = p.plan_lab(p.LabSpec(prefix=prefix))
    try:
        old = int(plan.gateway_pidfile.read_text().strip())
    except (OSError, ValueError):
        old = None
    if old is not None:
        netns.stop_pids([old], grace=20.0)  # the daemon's clean stop: dnsmasq, rules, status
    return services.start_gateway(plan)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    plan = p.plan_lab(p.LabSpec(prefix=args.prefix))
    if args.now:
        pid = restart(args.prefix)
        print(f"gateway of lab {args.prefix} started again as pid {pid}", flush=True)
        return 0
    log = open(plan.state_dir / "reboot.log", "ab")  # noqa: SIM115 (the child keeps it)
    subprocess.Popen([sys.executable, "-m", "desanet_lab.reboot", "--prefix", args.prefix, "--now"],
                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                     env=services.child_env(), cwd=services.project_root())
    return 0


if __name__ == "__main__":
    sys.exit(main())
