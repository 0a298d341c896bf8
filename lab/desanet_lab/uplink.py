"""Cut and restore the lab village's uplink (`desanet lab uplink down|up`).

Two ways a real uplink fails, both on the ISP's side of the link so the
gateway must notice by itself:

* ``link``: the ISP end of the WAN cable goes dark (``isp0`` down in the WAN
  namespace). The gateway's ``wan0`` loses carrier: a netlink event.
* ``silent``: the link stays up but nothing comes back (the WAN namespace drops
  everything arriving on ``isp0``), like a VSAT modem whose satellite is gone.
  Only the gateway's probes can tell.

``up`` undoes both, whichever was used (idempotent).
"""

from __future__ import annotations

from typing import Literal

from desanet_lab import netns
from desanet_lab import plan as p
from gateway.errors import LabError

CutMode = Literal["link", "silent"]
CUT_MODES: tuple[CutMode, ...] = ("link", "silent")
CUT_TABLE = "desanet_lab_cut"


def silent_cut_rules() -> str:
    """nft script for the WAN namespace: drop every packet the gateway sends (pure)."""
    return (f"table inet {CUT_TABLE} {{\n"
            "  chain cut {\n"
            "    type filter hook prerouting priority raw; policy accept;\n"
            f'    iifname "{p.ISP_INTERFACE}" drop\n'
            "  }\n"
            "}\n")


def _wan(prefix: str) -> str:
    wan = p.wan_ns(p.validate_prefix(prefix))
    if wan not in netns.list_namespaces():
        raise LabError(f"no lab with prefix {prefix!r} is up; run `desanet lab up` first")
    return wan


def uplink_down(prefix: str = p.DEFAULT_PREFIX, mode: CutMode = "link") -> None:
    """Cut the uplink of lab ``prefix``; raises LabError (nothing changed) on a bad mode."""
    if mode not in CUT_MODES:
        raise LabError(f"unknown uplink cut {mode!r}: expected one of {', '.join(CUT_MODES)}")
    wan = _wan(prefix)
    if mode == "link":
        netns.ip("-n", wan, "link", "set", p.ISP_INTERFACE, "down")
    else:
        netns.run_in(wan, ["nft", "-f", "-"], input=silent_cut_rules(), check=True)


def uplink_up(prefix: str = p.DEFAULT_PREFIX) -> None:
    """Restore the uplink of lab ``prefix`` from either kind of cut (idempotent)."""
    wan = _wan(prefix)
    netns.ip("-n", wan, "link", "set", p.ISP_INTERFACE, "up")
    listed = netns.run_in(wan, ["nft", "list", "tables"], check=True).stdout
    if f"inet {CUT_TABLE}" in listed:
        netns.run_in(wan, ["nft", "delete", "table", "inet", CUT_TABLE], check=True)
