"""``python -m desanet_lab.start --prefix P``: start the lab's gateway daemon, as
``systemctl start desanet`` starts a village's.

The TUI's daemon-down page runs it when ``DESANET_START_COMMAND`` says so
(gateway/tui/start.py), so a test can press ``s`` and see the real daemon come up.
Like ``systemctl start``, it returns once the daemon answers on its control socket
(``ready``), and does nothing when the daemon already runs. The daemon is started
in a session of its own in the gateway namespace; it outlives this command.
"""

from __future__ import annotations

import argparse
import sys

from desanet_lab import netns, services
from desanet_lab import plan as p
from gateway.control.client import ControlClient
from gateway.errors import ControlError, LabError


def _answers(socket: str) -> bool:
    client = ControlClient(socket, timeout=2.0)
    try:
        return isinstance(client.request("GET", "/v1/status"), dict)
    except ControlError:
        return False
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m desanet_lab.start",
                                 description="start the lab's gateway daemon (if not running)")
    ap.add_argument("--prefix", required=True, help="the lab's prefix")
    args = ap.parse_args(argv)
    plan = p.plan_lab(p.LabSpec(prefix=args.prefix))
    try:
        old = int(plan.gateway_pidfile.read_text().strip())
    except (OSError, ValueError):
        old = None
    if old is not None and netns.pid_alive(old) and _answers(str(plan.control_socket)):
        print(f"gateway of lab {args.prefix} already runs as pid {old}")
        return 0
    try:
        pid = services.start_gateway(plan)
    except LabError as exc:
        print(f"cannot start the gateway of lab {args.prefix}: {exc}", file=sys.stderr)
        return 1
    print(f"gateway of lab {args.prefix} started as pid {pid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
