"""Byte counting and quotas per voucher: the plain data and arithmetic (pure).

Shared by the core (which decides), the firewall planner (which writes the nftables
objects) and the fakes. Nothing here touches the kernel. Design: docs/quota.md.

A voucher session is *metered*: the kernel counts its bytes per voucher (all devices of
the voucher share one counter per direction) and, when the plan has a quota, enforces
it with named quota objects of the voucher. Object names carry the voucher code in
hex (codes imported from other systems may hold any character; nft names may not).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from gateway.config.schema import Config, Plan
from gateway.model import Session

QuotaKind = Literal["total", "down", "up"]
QUOTA_KINDS: tuple[QuotaKind, ...] = ("total", "down", "up")
_OBJECT_PREFIX = {"total": "qt_", "down": "qd_", "up": "qu_"}
COUNTER_DOWN, COUNTER_UP = "cd_", "cu_"


def voucher_key(code: str) -> str:
    """The voucher's part of its objects' names (reversible: hex of the UTF-8 code)."""
    return code.encode().hex()


def voucher_of(name: str) -> str | None:
    """The voucher code of an object name made here; None for any other name."""
    prefix, _, rest = name.partition("_")
    if not rest or prefix + "_" not in (COUNTER_DOWN, COUNTER_UP, *_OBJECT_PREFIX.values()):
        return None
    try:
        return bytes.fromhex(rest).decode()
    except ValueError:
        return None


def quota_name(kind: QuotaKind, code: str) -> str:
    return _OBJECT_PREFIX[kind] + voucher_key(code)


def counter_names(code: str) -> tuple[str, str]:
    """(download counter, upload counter) of the voucher."""
    key = voucher_key(code)
    return COUNTER_DOWN + key, COUNTER_UP + key


def kind_of(name: str) -> QuotaKind | None:
    for kind in QUOTA_KINDS:
        if name.startswith(_OBJECT_PREFIX[kind]):
            return kind
    return None


@dataclass(frozen=True, slots=True)
class Meter:
    """What the kernel must count and enforce for one client address of a voucher."""

    ip: str
    voucher: str
    limits: Mapping[QuotaKind, int] = field(default_factory=dict)  # bytes; empty: unlimited
    after: Literal["cut", "slow"] = "cut"
    fair_class: str | None = None  # HTB class ("1:8165") of the fair-use rate, for "slow"
    used_down: int = 0  # the voucher's bytes so far (a quota object made anew starts here)
    used_up: int = 0

    def used(self, kind: QuotaKind) -> int:
        if kind == "down":
            return self.used_down
        if kind == "up":
            return self.used_up
        return self.used_down + self.used_up

    @property
    def over_verdict(self) -> str | None:
        """What nftables does with the client's packets once a quota is used up: drop
        them (cut), or steer them into the fair-use class (slow). None: nothing (no quota;
        or slow without a fair-use class, shaping being off: nothing can slow them)."""
        if not self.limits:
            return None
        if self.after == "cut":
            return "drop"
        return "jump fair_use" if self.fair_class is not None else None


def plan_limits(plan: Plan) -> dict[QuotaKind, int]:
    limits: dict[QuotaKind, int] = {}
    for kind, value in (("total", plan.quota), ("down", plan.quota_down), ("up", plan.quota_up)):
        if value is not None:
            limits[kind] = value  # type: ignore[index]
    return limits


def meter_of(cfg: Config, session: Session, used: tuple[int, int] = (0, 0),
             fair_class: str | None = None) -> Meter | None:
    """The session's meter; None for sessions without a voucher (nothing to count into).

    ``used`` is the voucher's (bytes down, bytes up) from the store; ``fair_class`` the
    client's fair-use HTB class (from the shaping service) when its plan slows down.
    """
    if session.voucher is None:
        return None
    plan = cfg.shaping.plan(session.plan)
    limits = plan_limits(plan)
    after = plan.after_quota if limits else "cut"
    return Meter(session.ip, session.voucher, limits, after,
                 fair_class if after == "slow" else None, used[0], used[1])


@dataclass(frozen=True, slots=True)
class QuotaUse:
    """One quota object as the kernel holds it."""

    used: int
    limit: int

    @property
    def over(self) -> bool:
        # nft's "over" quota matches once consumed >= limit (nft_overquota)
        return self.used >= self.limit


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One read of the kernel's meters: counters read and zeroed at once, quotas as held.

    ``bytes``: voucher -> (bytes down, bytes up) since the previous read (the counters
    are reset as they are read, so a delta is never negative and never counted twice).
    ``quotas``: voucher -> kind -> use. ``names``: every meter object in the table.
    """

    bytes: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    quotas: Mapping[str, Mapping[QuotaKind, QuotaUse]] = field(default_factory=dict)
    names: frozenset[str] = frozenset()

    def over(self, voucher: str) -> bool:
        return any(q.over for q in self.quotas.get(voucher, {}).values())

    def vouchers(self) -> set[str]:
        return {v for v in (voucher_of(n) for n in self.names) if v is not None}

    def merge(self, later: MeterReading) -> MeterReading:
        """This reading and a later one: bytes of both, the later quotas."""
        return MeterReading(add_bytes(self.bytes, later.bytes),
                            {**self.quotas, **later.quotas}, self.names | later.names)


def add_bytes(totals: Mapping[str, tuple[int, int]], deltas: Mapping[str, tuple[int, int]]
              ) -> dict[str, tuple[int, int]]:
    """Totals plus deltas per voucher (pure); negative deltas are refused (ValueError)."""
    out = dict(totals)
    for code, (down, up) in deltas.items():
        if down < 0 or up < 0:
            raise ValueError(f"negative byte delta for a voucher: {down}, {up}")
        was = out.get(code, (0, 0))
        out[code] = (was[0] + down, was[1] + up)
    return out


def parse_objects(items: Iterable[Mapping[str, object]]) -> MeterReading:
    """A MeterReading from nft's JSON objects (``{"counter": {...}}``, ``{"quota": ...}``)."""
    totals: dict[str, tuple[int, int]] = {}
    quotas: dict[str, dict[QuotaKind, QuotaUse]] = {}
    names: set[str] = set()
    for item in items:
        for key in ("counter", "quota"):
            obj = item.get(key)
            if not isinstance(obj, Mapping):
                continue
            name = str(obj.get("name", ""))
            code = voucher_of(name)
            if code is None:
                continue
            names.add(name)
            if key == "counter":
                n = _int(obj.get("bytes"))
                down, up = totals.get(code, (0, 0))
                totals[code] = (down + n, up) if name.startswith(COUNTER_DOWN) else (down, up + n)
            else:
                kind = kind_of(name)
                if kind is not None:
                    quotas.setdefault(code, {})[kind] = QuotaUse(
                        _int(obj.get("used")), _int(obj.get("bytes")))
    return MeterReading(totals, quotas, frozenset(names))


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0
