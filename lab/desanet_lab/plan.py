"""Pure planning of the virtual village: names, addresses and `ip` commands.

Nothing here touches the system. :func:`plan_lab` turns a :class:`LabSpec`
into a :class:`LabPlan` (namespace names, MACs, service addresses, state
paths) and :func:`topology_commands` turns a plan into the exact `ip`
argument vectors that build it, so both are unit-testable without root.

Layout for prefix P and N clients::

    P-wan  isp0 100.64.0.1/30, 2001:db8:64::1/64; lo carries the services
      |
    P-gw   wan0 100.64.0.2/30, 2001:db8:64::2/64; br-lan 10.42.0.1/24
      |    lan-c1 .. lan-cN are bridge ports
    P-c1 .. P-cN   eth0 (MAC 02:d5:00:00:00:KK), address by DHCP
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import LabError

DEFAULT_PREFIX = "dn"
DEFAULT_CLIENTS = 2
MAX_CLIENTS = 200
STATE_ROOT = Path("/run/desanet-lab")
NETNS_ETC = Path("/etc/netns")

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")

# WAN link (RFC 6598 shared address space, like a real CGNAT ISP link).
WAN_GW_V4 = "100.64.0.2"
WAN_ISP_V4 = "100.64.0.1"
WAN_PREFIXLEN_V4 = 30
WAN_GW_V6 = "2001:db8:64::2"
WAN_ISP_V6 = "2001:db8:64::1"
WAN_PREFIXLEN_V6 = 64

LAN_INTERFACE = "br-lan"
WAN_INTERFACE = "wan0"
ISP_INTERFACE = "isp0"
CLIENT_INTERFACE = "eth0"
LAN_ADDRESS = "10.42.0.1/24"
LAN_IP = "10.42.0.1"
DHCP_RANGE = ("10.42.0.100", "10.42.0.199")

# Service addresses on the WAN namespace's loopback (TEST-NET-2 / doc prefix).
ISP_RESOLVER = "198.51.100.53"
OUTSIDE_RESOLVER = "198.51.100.99"
INTERNET_V4 = "198.51.100.10"
INTERNET_V6 = "2001:db8:100::10"
GOVERNMENT_V4 = "198.51.100.20"
CONNCHECK_V4 = "198.51.100.30"
MQTT_V4 = "198.51.100.40"  # the region's MQTT broker (Mosquitto, TLS)
WAN_SERVICE_ADDRESSES = (
    f"{ISP_RESOLVER}/32",
    f"{INTERNET_V4}/32",
    f"{GOVERNMENT_V4}/32",
    f"{CONNCHECK_V4}/32",
    f"{OUTSIDE_RESOLVER}/32",
    f"{MQTT_V4}/32",
    f"{INTERNET_V6}/128",
)

INTERNET_HOST = "internet.lab"
GOVERNMENT_HOST = "layanan.lab"
DUKCAPIL_HOST = "dukcapil.lab"  # test origin of the local services cache (gov_origin)
OUTSIDE_HOST = "outside.lab"
# dns: names under the walled garden's that point at the internet host (an attacker's)
GARDEN_EVIL_HOST = "evil.layanan.lab"
GARDEN_CNAME_HOST = "cdn.layanan.lab"
# stale: a name whose public answer is the ISP's own link address (a modem's admin page):
# the gateway's relay for stale pre-login DNS answers must never connect there
PRIVATE_ANSWER_HOST = "modem.lab"
CONNCHECK_HOSTS = (
    "connectivitycheck.gstatic.com",
    "clients3.google.com",
    "captive.apple.com",
    "www.msftconnecttest.com",
    "detectportal.firefox.com",
)
PORTAL_HOSTNAME = "portal.desa"
MQTT_HOST = "mqtt.lab"
MQTT_PORT = 8883
MQTT_PREFIX = "desanet/v1"
LAB_SITE_ID = "desa-lab"  # the lab gateway's telemetry.site_id and its certificate's CN
# The operator's certificate CN: never a valid site id (a '.'), so the broker's per-device
# pattern (desanet/v1/<CN>/#) gives it no gateway's subtree.
OPERATOR_CN = "operator.lab"
UDP_ECHO_PORT = 9999
TLS_PORT = 443


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` or raise LabError saying what a valid one looks like."""
    if not _PREFIX_RE.match(prefix):
        raise LabError(
            f"lab prefix {prefix!r} is not valid: expected 1-8 lower-case letters or digits "
            "starting with a letter (namespaces are named PREFIX-gw, PREFIX-c1, ...); "
            "use e.g. \"dn\" or \"tl42\""
        )
    return prefix


def wan_ns(prefix: str) -> str:
    return f"{prefix}-wan"


def gw_ns(prefix: str) -> str:
    return f"{prefix}-gw"


def client_ns(prefix: str, k: int) -> str:
    """Namespace name of client ``k`` (1-based)."""
    if k < 1:
        raise LabError(f"client numbers start at 1, got {k}")
    return f"{prefix}-c{k}"


def client_mac(k: int) -> str:
    """Stable, locally administered MAC of client ``k``: 02:d5:00:00:00:KK."""
    if not 1 <= k <= 255:
        raise LabError(f"client number must be 1..255 for a MAC, got {k}")
    return f"02:d5:00:00:00:{k:02x}"


def state_dir(prefix: str) -> Path:
    return STATE_ROOT / prefix


def owns_namespace(prefix: str, name: str) -> bool:
    """True when namespace ``name`` belongs to the lab with ``prefix``."""
    return name.startswith(prefix + "-")


def resolve_ns(prefix: str, role: str) -> str:
    """Map a role ("gw", "wan", "c3" or a full namespace name) to a namespace."""
    if role in ("gw", "wan"):
        return f"{prefix}-{role}"
    match = re.fullmatch(r"c(\d+)", role)
    if match:
        return client_ns(prefix, int(match.group(1)))
    if owns_namespace(prefix, role):
        return role
    raise LabError(f"unknown lab member {role!r}: expected gw, wan or cN (e.g. c1)")


@dataclass(frozen=True)
class LabSpec:
    """What to build. ``extra`` is deep-merged into the gateway config TOML."""

    prefix: str = DEFAULT_PREFIX
    clients: int = DEFAULT_CLIENTS
    portal_mode: str = "both"
    session_length: str = "4h"
    idle_timeout: str = "30m"
    extra: dict[str, Any] = field(default_factory=dict)
    start_gateway: bool = True
    dhcp: bool = True
    broker: bool = True  # run Mosquitto in the WAN as the region's broker; the gateway reports


@dataclass(frozen=True)
class ClientPlan:
    index: int
    ns: str
    mac: str
    bridge_port: str


@dataclass(frozen=True)
class LabPlan:
    prefix: str
    wan: str
    gw: str
    clients: tuple[ClientPlan, ...]
    state_dir: Path

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.wan, self.gw, *(c.ns for c in self.clients))

    @property
    def config_path(self) -> Path:
        return self.state_dir / "gateway.toml"

    @property
    def control_socket(self) -> Path:
        return self.state_dir / "control.sock"

    @property
    def gateway_log(self) -> Path:
        return self.state_dir / "gateway.log"

    @property
    def gateway_pidfile(self) -> Path:
        return self.state_dir / "gateway.pid"

    @property
    def dhcp_script(self) -> Path:
        return self.state_dir / "udhcpc.sh"

    @property
    def info_path(self) -> Path:
        return self.state_dir / "lab.json"

    @property
    def mqtt_dir(self) -> Path:
        """The broker's config, ACL, persistence and log, and the lab's PKI."""
        return self.state_dir / "mqtt"


def plan_lab(spec: LabSpec) -> LabPlan:
    """Compute names and paths for ``spec``; raise LabError on bad input."""
    prefix = validate_prefix(spec.prefix)
    if not 1 <= spec.clients <= MAX_CLIENTS:
        raise LabError(
            f"client count must be 1..{MAX_CLIENTS}, got {spec.clients}; use e.g. --clients 2"
        )
    clients = tuple(
        ClientPlan(index=k, ns=client_ns(prefix, k), mac=client_mac(k), bridge_port=f"lan-c{k}")
        for k in range(1, spec.clients + 1)
    )
    return LabPlan(
        prefix=prefix,
        wan=wan_ns(prefix),
        gw=gw_ns(prefix),
        clients=clients,
        state_dir=state_dir(prefix),
    )


def topology_commands(plan: LabPlan) -> list[list[str]]:
    """Every `ip` invocation (without the leading "ip") that builds ``plan``.

    Veth pairs are created with both ends directly inside their namespaces,
    so no interface name ever appears in the host namespace and two labs
    can be built at the same time. IPv6 addresses use ``nodad`` so they are
    usable at once instead of "tentative" for a second or two.
    """
    wan, gw = plan.wan, plan.gw
    cmds: list[list[str]] = [["netns", "add", ns] for ns in plan.namespaces]
    cmds += [["-n", ns, "link", "set", "lo", "up"] for ns in plan.namespaces]
    # WAN link
    cmds.append(["-n", gw, "link", "add", WAN_INTERFACE, "type", "veth",
                 "peer", "name", ISP_INTERFACE, "netns", wan])
    cmds += [
        ["-n", gw, "addr", "add", f"{WAN_GW_V4}/{WAN_PREFIXLEN_V4}", "dev", WAN_INTERFACE],
        ["-n", gw, "-6", "addr", "add", f"{WAN_GW_V6}/{WAN_PREFIXLEN_V6}",
         "dev", WAN_INTERFACE, "nodad"],
        ["-n", wan, "addr", "add", f"{WAN_ISP_V4}/{WAN_PREFIXLEN_V4}", "dev", ISP_INTERFACE],
        ["-n", wan, "-6", "addr", "add", f"{WAN_ISP_V6}/{WAN_PREFIXLEN_V6}",
         "dev", ISP_INTERFACE, "nodad"],
        ["-n", gw, "link", "set", WAN_INTERFACE, "up"],
        ["-n", wan, "link", "set", ISP_INTERFACE, "up"],
        ["-n", gw, "route", "add", "default", "via", WAN_ISP_V4, "dev", WAN_INTERFACE],
        ["-n", gw, "-6", "route", "add", "default", "via", WAN_ISP_V6, "dev", WAN_INTERFACE],
    ]
    for addr in WAN_SERVICE_ADDRESSES:
        family = "-6" if ":" in addr else "-4"
        cmds.append(["-n", wan, family, "addr", "add", addr, "dev", "lo"])
    # LAN bridge; STP off so ports forward as soon as they are up.
    cmds += [
        ["-n", gw, "link", "add", LAN_INTERFACE, "type", "bridge", "stp_state", "0"],
        ["-n", gw, "addr", "add", LAN_ADDRESS, "dev", LAN_INTERFACE],
        ["-n", gw, "link", "set", LAN_INTERFACE, "up"],
    ]
    for c in plan.clients:
        cmds += [
            ["-n", gw, "link", "add", c.bridge_port, "type", "veth",
             "peer", "name", CLIENT_INTERFACE, "address", c.mac, "netns", c.ns],
            ["-n", gw, "link", "set", c.bridge_port, "master", LAN_INTERFACE],
            ["-n", gw, "link", "set", c.bridge_port, "up"],
            ["-n", c.ns, "link", "set", CLIENT_INTERFACE, "up"],
        ]
    return cmds


# Sysctls set inside the gateway namespace: it routes like the real box, so
# only the gateway's firewall stops a bypass.
GATEWAY_SYSCTLS = (
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
)


def resolv_conf(nameservers: list[str], comment: str) -> str:
    lines = [f"# {comment}"] + [f"nameserver {ns}" for ns in nameservers]
    return "\n".join(lines) + "\n"


def udhcpc_script(netns_etc: Path = NETNS_ETC) -> str:
    """POSIX sh hook for busybox udhcpc; the namespace name comes in $LAB_NS.

    It writes ``/etc/netns/$LAB_NS/resolv.conf`` in place (truncate, not
    rename), so the bind mount made by a running ``ip netns exec`` sees the
    new servers too. It never touches /etc/resolv.conf itself.
    """
    return f"""#!/bin/sh
# desanet lab: busybox udhcpc hook (generated; safe to delete)
set -u
: "${{LAB_NS:?LAB_NS must name the client namespace}}"
dir="{netns_etc}/$LAB_NS"
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${{mask:-24}}" dev "$interface"
    if [ -n "${{router:-}}" ]; then
      ip route replace default via "${{router%% *}}" dev "$interface"
    fi
    mkdir -p "$dir"
    {{
      echo "# written by the desanet lab udhcpc hook ($1 on $interface)"
      [ -n "${{domain:-}}" ] && echo "search $domain"
      for s in ${{dns:-}}; do echo "nameserver $s"; done
    }} > "$dir/resolv.conf"
    ;;
  leasefail|nak)
    echo "udhcpc: $1 on $interface" >&2
    ;;
esac
exit 0
"""
