"""Which running services a changed rendered file concerns, and telling them.

At boot nothing needs telling: desanet-system-render.service writes the files
before systemd-networkd, hostapd and pppd start. While the gateway runs,
desanet-system-apply.path sees gateway.toml change (the wizard, `desanet config
apply`, or the daemon's rollback putting the old file back) and starts
desanet-system-apply.service, which renders again and runs only the commands the
changed files call for: a portal text changes no rendered file, so the WAN and
the Wi-Fi stay up. The daemon cannot do this itself: its unit is hardened
(ProtectSystem=strict, no write access to /run/systemd/network or
/run/desanet-system), so the path unit is the seam between the two.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from gateway.system.render import HOSTAPD_CONF, NETWORKD_DIR, PPPOE_OPTIONS

WAN_NETWORK: Final = f"{NETWORKD_DIR}/10-desanet-wan.network"
HOSTAPD_UNIT: Final = "hostapd.service"
PPPOE_UNIT: Final = "desanet-pppoe.service"

Runner = Callable[[Sequence[str]], int]


def reload_commands(changed: Iterable[str], present: Iterable[str],
                    wan_interface: str) -> list[list[str]]:
    """The commands for ``changed`` (paths relative to the root, written or removed);
    ``present`` is every file the config renders now. Order: the links first (PPPoE
    needs its bare Ethernet port), then pppd, then the access point."""
    changed, present = set(changed), set(present)
    commands: list[list[str]] = []
    if any(rel.startswith(NETWORKD_DIR + "/") for rel in changed):
        # reload re-reads every file and reconfigures the links whose file changed;
        # the explicit reconfigure of the WAN makes sure its address method is redone
        # (DHCP <-> static <-> PPPoE) whatever networkd judges changed.
        commands.append(["networkctl", "reload"])
        if WAN_NETWORK in changed:
            commands.append(["networkctl", "reconfigure", wan_interface])
    if PPPOE_OPTIONS in changed:
        # restart also starts it (its ConditionPathExists= now holds); stop when gone.
        verb = "restart" if PPPOE_OPTIONS in present else "stop"
        commands.append(["systemctl", verb, PPPOE_UNIT])
    if HOSTAPD_CONF in changed:
        # A restart, not SIGHUP: hostapd's reload does not apply every setting (the
        # country, the bridge), and a start is needed when a Wi-Fi name was just set.
        verb = "restart" if HOSTAPD_CONF in present else "stop"
        commands.append(["systemctl", verb, HOSTAPD_UNIT])
    return commands


def _run(argv: Sequence[str]) -> int:
    return subprocess.run(list(argv), check=False, timeout=120).returncode


def run_commands(commands: Sequence[Sequence[str]], runner: Runner | None = None) -> int:
    """Runs every command even when one fails (a Wi-Fi failure must not keep the WAN's
    change from being applied); 0 when all succeeded, else 1."""
    run = runner or _run
    status = 0
    for argv in commands:
        print("+ " + " ".join(argv), flush=True)
        try:
            code = run(argv)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"{argv[0]}: {exc}", file=sys.stderr)
            code = 1
        if code != 0:
            print(f"{' '.join(argv)}: exit {code}", file=sys.stderr)
            status = 1
    return status

