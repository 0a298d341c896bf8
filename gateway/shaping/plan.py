"""Pure HTB planner: config + sessions -> the tc tree each device should have.

Theory of operation
-------------------
Downloads are shaped where they leave the gateway towards the villagers (the
LAN device's egress), uploads where they leave towards the uplink (the WAN
device's egress). No IFB is needed: each direction is shaped on the device it
leaves by, and the uplink is the bottleneck we protect.

Both devices get the same tree shape, handle ``1:``::

    1:      htb qdisc, unclassified traffic (ARP, DHCP) -> 1:3
    1:1     the uplink (rate = ceil = uplink capacity)
    1:2       unauthorized clients (portal, walled garden): small, fixed
    1:4       trusted MACs, sharing the default plan
    1:100+n   one class per authorized client, n = its address's offset in the LAN
    1:8100+n  its fair-use class, for a client whose plan slows down past its quota
              (nftables steers its packets here once the quota is used: docs/quota.md)
    1:3     the gateway's own traffic: on the LAN a sibling of 1:1 at LAN speed
            (portal and local cache are not charged to the uplink); on the WAN
            a child of 1:1 (it does use the uplink)

A client's class number comes from its address, so a restart or a second
planner run produces the same ids: the adapter can diff and never creates
duplicates. Packets reach classes without any tc filter: nftables sets the
packet's priority from a map (address -> class id), and HTB classifies on
``skb->priority`` directly. Sibling classes share spare capacity in
proportion to their rates (HTB's quantum follows the rate), so a plan with
twice the rate gets twice the share when the uplink is full, and any single
active client may borrow up to its ceil (by default the whole uplink).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.config.schema import Config
from gateway.model import Session

ROOT_MAJOR = 1
UPLINK_MINOR = 0x1
UNAUTHORIZED_MINOR = 0x2
LOCAL_MINOR = 0x3
TRUSTED_MINOR = 0x4
CLIENT_BASE_MINOR = 0x100
# HTB's default class: traffic nftables could not classify. Every forwarded
# packet is classified, so what remains is the gateway's own ARP and DHCP
# (packet sockets bypass netfilter): it must never queue behind the walled
# garden, so it goes to the local class.
DEFAULT_MINOR = LOCAL_MINOR
# Fair-use classes: above every client class of a LAN up to /18 (client minors end at
# 0x40ff there); in a /17 the last 256 addresses have none (their plan then cannot slow
# them down: see docs/quota.md).
FAIR_BASE_MINOR = 0x8100
MAX_MINOR = 0xFFFF
MTU = 1514

Direction = Literal["down", "up"]


def classid(minor: int) -> int:
    return (ROOT_MAJOR << 16) | minor


def classid_text(minor: int) -> str:
    return f"{ROOT_MAJOR}:{minor:x}"


def client_minor(cfg: Config, ip: str) -> int:
    """Class minor for a LAN address: 0x100 + its offset in the LAN prefix."""
    addr = ipaddress.IPv4Address(ip)
    net = cfg.network.lan_address.network
    if addr not in net:
        raise ValueError(f"{ip} is not in the LAN {net}")
    minor = CLIENT_BASE_MINOR + int(addr) - int(net.network_address)
    if minor > MAX_MINOR:
        raise ValueError(f"{ip} is too far into {net} for a tc class id")
    return minor


def fair_minor(cfg: Config, ip: str) -> int:
    """Fair-use class minor of a LAN address; ValueError when it has none."""
    minor = FAIR_BASE_MINOR + client_minor(cfg, ip) - CLIENT_BASE_MINOR
    if minor > MAX_MINOR:
        raise ValueError(f"{ip} is too far into the LAN for a fair-use class id")
    return minor


@dataclass(frozen=True, slots=True)
class HtbClass:
    minor: int
    parent_minor: int | None  # None: directly under the qdisc
    rate: int  # bits/s
    ceil: int  # bits/s
    prio: int
    label: str  # "uplink", "unauthorized", "local", "trusted" or a client IP

    @property
    def quantum(self) -> int:
        """Bytes a class may send per DRR round: proportional to its rate, so
        spare capacity is shared by rate (clamped to sane bounds)."""
        return max(MTU, min(200_000, self.rate // 8 // 10))

    def same_shape(self, other: HtbClass) -> bool:
        return (self.parent_minor, self.rate, self.ceil, self.prio) == (
            other.parent_minor, other.rate, other.ceil, other.prio)


@dataclass(frozen=True, slots=True)
class ClassStats:
    """Counters of one HTB class as the kernel reported them."""

    minor: int
    bytes: int
    packets: int
    drops: int
    backlog: int
    overlimits: int


@dataclass(frozen=True, slots=True)
class DeviceTree:
    device: str
    direction: Direction
    classes: tuple[HtbClass, ...]

    def by_minor(self) -> dict[int, HtbClass]:
        return {c.minor: c for c in self.classes}


def client_class(cfg: Config, session: Session, direction: Direction) -> HtbClass:
    shaping = cfg.shaping
    plan = shaping.plan(session.plan)
    uplink = shaping.uplink_down if direction == "down" else shaping.uplink_up
    rate = plan.down if direction == "down" else plan.up
    ceil = (plan.ceil_down if direction == "down" else plan.ceil_up) or uplink
    return HtbClass(client_minor(cfg, session.ip), UPLINK_MINOR, rate, ceil, plan.priority,
                    session.ip)


def fair_class(cfg: Config, session: Session, direction: Direction) -> HtbClass | None:
    """The client's fair-use class, when its plan slows down past a quota (else None).
    rate = ceil = the fair-use rate: past the quota it never borrows more."""
    plan = cfg.shaping.plan(session.plan)
    if plan.after_quota != "slow" or session.voucher is None:
        return None
    rate = plan.fair_use_down if direction == "down" else plan.fair_use_up
    if rate is None:
        return None
    try:
        minor = fair_minor(cfg, session.ip)
    except ValueError:
        return None
    return HtbClass(minor, UPLINK_MINOR, rate, rate, plan.priority, f"{session.ip} fair use")


def plan_device(cfg: Config, sessions: Iterable[Session], direction: Direction) -> DeviceTree:
    shaping = cfg.shaping
    down = direction == "down"
    uplink = shaping.uplink_down if down else shaping.uplink_up
    unauth = shaping.unauthorized_down if down else shaping.unauthorized_up
    default = shaping.plan(None)
    trusted_rate = default.down if down else default.up
    classes = [
        HtbClass(UPLINK_MINOR, None, uplink, uplink, 0, "uplink"),
        HtbClass(UNAUTHORIZED_MINOR, UPLINK_MINOR, unauth, unauth, 7, "unauthorized"),
        HtbClass(TRUSTED_MINOR, UPLINK_MINOR, trusted_rate, uplink, 4, "trusted"),
    ]
    if down:
        classes.append(HtbClass(LOCAL_MINOR, None, shaping.lan_rate, shaping.lan_rate, 0, "local"))
    else:
        local = min(uplink, max(unauth, uplink // 10))
        classes.append(HtbClass(LOCAL_MINOR, UPLINK_MINOR, local, uplink, 1, "local"))
    seen: set[int] = set()
    for s in sorted(sessions, key=lambda s: s.ip):
        cls = client_class(cfg, s, direction)
        if cls.minor not in seen:
            seen.add(cls.minor)
            classes.append(cls)
        fair = fair_class(cfg, s, direction)
        if fair is not None and fair.minor not in seen:
            seen.add(fair.minor)
            classes.append(fair)
    device = cfg.network.lan_interface if down else cfg.network.wan_interface
    return DeviceTree(device, direction, tuple(classes))


def plan_trees(cfg: Config, sessions: Iterable[Session]) -> tuple[DeviceTree, DeviceTree]:
    sessions = list(sessions)
    return plan_device(cfg, sessions, "down"), plan_device(cfg, sessions, "up")


@dataclass(frozen=True, slots=True)
class TcOp:
    action: Literal["add", "change", "delete"]
    cls: HtbClass


def diff_classes(desired: DeviceTree, observed: Mapping[int, HtbClass]) -> list[TcOp]:
    """Smallest list of class operations turning ``observed`` into ``desired``.

    Adds go parents-first, deletes children-first, so every op is valid when
    it runs; a class whose parent changed is deleted and re-added.
    """
    want = desired.by_minor()
    ops: list[TcOp] = []
    deletes: list[HtbClass] = []
    for minor, have in observed.items():
        target = want.get(minor)
        if target is None or target.parent_minor != have.parent_minor:
            deletes.append(have)
    deletes.sort(key=lambda c: c.parent_minor is None)  # leaves before parents
    ops += [TcOp("delete", c) for c in deletes]
    deleted = {c.minor for c in deletes}
    for cls in sorted(want.values(), key=lambda c: c.parent_minor is not None):
        current = observed.get(cls.minor)
        if current is None or cls.minor in deleted:
            ops.append(TcOp("add", cls))
        elif not cls.same_shape(current):
            ops.append(TcOp("change", cls))
    return ops


def leaf_limit_packets(cls: HtbClass) -> int:
    """FIFO fallback length: about 100 ms at the class ceil, 16..1000 packets."""
    return max(16, min(1000, cls.ceil // 8 // 10 // MTU))
