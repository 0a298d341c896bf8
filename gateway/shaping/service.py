"""The shaping service: keeps the HTB trees in step with sessions, keeps samples.

Theory of operation
-------------------
The planner (:mod:`gateway.shaping.plan`) says what each device's tree
should be; this service asks the shaper port to make it so. Counters are
read only by :meth:`sample`, which the reconcile loop calls on its timer;
reads (:meth:`status_json`, :meth:`client_json`) return the last two samples
and the moments they were taken, so the rate a reader sees does not depend
on who else asked, and a GET changes nothing.

Use per plan (telemetry's ``pu``/``pd``): each sample adds what every client
class moved since the previous sample to the totals of the plan its session
is on (the service learns the class -> plan map from converge/add/remove), so
the totals only grow while classes come and go with sessions. What a class
moved between its last sample and its removal is not counted (at most one
sampling interval of one client).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from gateway.clock import Clock
from gateway.config.schema import Config
from gateway.model import Session
from gateway.ports import ShaperPort
from gateway.shaping.plan import (
    LOCAL_MINOR,
    TRUSTED_MINOR,
    UNAUTHORIZED_MINOR,
    UPLINK_MINOR,
    ClassStats,
    Direction,
    classid_text,
    client_class,
    client_minor,
    fair_class,
    plan_trees,
)

_NAMED = {UPLINK_MINOR: "uplink", UNAUTHORIZED_MINOR: "unauthorized", LOCAL_MINOR: "local",
          TRUSTED_MINOR: "trusted"}
DIRECTIONS: tuple[Direction, ...] = ("down", "up")


@dataclass(frozen=True, slots=True)
class Sample:
    monotonic: float  # when the counters were read, for rates
    wall: float  # the same moment as Unix time, for readers
    stats: dict[int, ClassStats]


class ShapingService:
    def __init__(self, config: Callable[[], Config], shaper: ShaperPort, clock: Clock) -> None:
        self._config = config
        self._shaper = shaper
        self._clock = clock
        self._samples: dict[Direction, list[Sample]] = {"down": [], "up": []}
        self._plan_of: dict[int, str] = {}  # client class minor -> its session's plan
        # plan -> [bytes down, bytes up, packets dropped] since the daemon started
        self._plan_use: dict[str, list[int]] = {}

    @property
    def enabled(self) -> bool:
        return self._config().shaping.enabled

    def _device(self, direction: Direction, cfg: Config | None = None) -> str:
        cfg = cfg or self._config()
        return cfg.network.lan_interface if direction == "down" else cfg.network.wan_interface

    def class_text(self, session: Session) -> str | None:
        return self.ip_class_text(session.ip)

    def ip_class_text(self, ip: str) -> str | None:
        """The client_class map value of ``ip`` ("1:165"); None when shaping is off or
        the address is outside the LAN (it can then have no class)."""
        if not self.enabled:
            return None
        try:
            return classid_text(client_minor(self._config(), ip))
        except ValueError:
            return None

    async def converge(self, cfg: Config, sessions: Iterable[Session],
                       previous: Config | None = None) -> int:
        """Bring both trees in line with ``cfg`` and the sessions; return how many ops ran.

        Raises ShapingError when the kernel refuses a change.
        """
        if not cfg.shaping.enabled:
            if previous is not None and previous.shaping.enabled:
                for dev in (previous.network.lan_interface, previous.network.wan_interface):
                    await self._shaper.remove(dev)
            return 0
        if previous is not None and previous.shaping.enabled and (
            previous.network.lan_interface != cfg.network.lan_interface
            or previous.network.wan_interface != cfg.network.wan_interface
        ):
            for dev in (previous.network.lan_interface, previous.network.wan_interface):
                if dev not in (cfg.network.lan_interface, cfg.network.wan_interface):
                    await self._shaper.remove(dev)
        sessions = list(sessions)
        self._plan_of = {m: plan for m, plan in (_minor_plan(cfg, x) for x in sessions)
                         if m is not None}
        count = 0
        for tree in plan_trees(cfg, sessions):
            count += await self._shaper.reconcile(tree)
        return count

    async def intact(self, cfg: Config) -> bool:
        """Are our root qdiscs on both devices of ``cfg`` (True with shaping off)?
        Cheap: one netlink request per device. Raises ShapingError."""
        if not cfg.shaping.enabled:
            return True
        for dev in (cfg.network.lan_interface, cfg.network.wan_interface):
            if not await self._shaper.intact(dev):
                return False
        return True

    async def add(self, session: Session) -> None:
        """Create or update the client's classes. Raises ShapingError."""
        if self.enabled:
            cfg = self._config()
            for direction in DIRECTIONS:
                await self._shaper.upsert(self._device(direction, cfg),
                                          client_class(cfg, session, direction))
                fair = fair_class(cfg, session, direction)
                if fair is not None:
                    await self._shaper.upsert(self._device(direction, cfg), fair)
            minor, plan = _minor_plan(cfg, session)
            if minor is not None:
                self._plan_of[minor] = plan

    async def remove(self, session: Session) -> None:
        """Delete the client's classes. Raises ShapingError."""
        if self.enabled:
            cfg = self._config()
            for direction in DIRECTIONS:
                await self._shaper.delete(self._device(direction, cfg),
                                          client_class(cfg, session, direction))
                fair = fair_class(cfg, session, direction)
                if fair is not None:
                    await self._shaper.delete(self._device(direction, cfg), fair)
            minor, _ = _minor_plan(cfg, session)
            if minor is not None:
                self._plan_of.pop(minor, None)

    async def sample(self) -> None:
        """Read the counters (the reconcile loop's timer calls this, nobody else)."""
        if not self.enabled:
            self._samples = {"down": [], "up": []}
            return
        for direction in DIRECTIONS:
            stats = await self._shaper.stats(self._device(direction))
            samples = self._samples[direction]
            samples.append(Sample(self._clock.monotonic(), self._clock.time(), stats))
            del samples[:-2]
            if len(samples) == 2:
                self._count_plan_use(direction, samples[0].stats, stats)

    def _count_plan_use(self, direction: Direction, old: dict[int, ClassStats],
                        new: dict[int, ClassStats]) -> None:
        slot = 0 if direction == "down" else 1
        for minor, cur in new.items():
            plan = self._plan_of.get(minor)
            before = old.get(minor)
            if plan is None or before is None:
                continue  # not a client class, or created since: counted from the next sample
            use = self._plan_use.setdefault(plan, [0, 0, 0])
            # a class re-created between samples starts again from 0: its new count is the use
            use[slot] += cur.bytes - before.bytes if cur.bytes >= before.bytes else cur.bytes
            use[2] += cur.drops - before.drops if cur.drops >= before.drops else cur.drops

    def plan_use_json(self) -> dict[str, dict[str, int]]:
        """Bytes and drops per plan since the daemon started (all client classes of it)."""
        return {plan: {"down_bytes": d, "up_bytes": u, "drops": dr}
                for plan, (d, u, dr) in sorted(self._plan_use.items())}

    def _class_stats(self, direction: Direction, minor: int) -> dict[str, Any] | None:
        samples = self._samples[direction]
        if not samples:
            return None
        latest = samples[-1]
        cur = latest.stats.get(minor)
        if cur is None:
            return None
        data = asdict(cur)
        del data["minor"]
        rate = 0
        if len(samples) == 2:
            first = samples[0]
            old = first.stats.get(minor)
            elapsed = latest.monotonic - first.monotonic
            if old is not None and elapsed > 0 and cur.bytes >= old.bytes:
                rate = int((cur.bytes - old.bytes) * 8 / elapsed)
        data["rate_bps"] = rate
        return data

    def _sample_times(self, direction: Direction) -> dict[str, float | None]:
        samples = self._samples[direction]
        if not samples:
            return {"sampled_at": None, "interval": None}
        interval = samples[-1].monotonic - samples[0].monotonic if len(samples) == 2 else None
        return {"sampled_at": samples[-1].wall, "interval": interval}

    def client_json(self, session: Session) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        cfg = self._config()
        try:
            minor = client_minor(cfg, session.ip)
        except ValueError:
            return None
        down = client_class(cfg, session, "down")
        up = client_class(cfg, session, "up")
        return {
            "class": classid_text(minor),
            "plan": session.plan or "default",
            "down": {"rate": down.rate, "ceil": down.ceil, "stats": self._class_stats("down", minor)},
            "up": {"rate": up.rate, "ceil": up.ceil, "stats": self._class_stats("up", minor)},
        }

    def status_json(self) -> dict[str, Any]:
        cfg = self._config()
        if not cfg.shaping.enabled:
            return {"enabled": False}
        classes: dict[str, Any] = {}
        for direction in DIRECTIONS:
            samples = self._samples[direction]
            minors = sorted(samples[-1].stats) if samples else []
            classes[direction] = {
                "device": self._device(direction),
                **self._sample_times(direction),
                "classes": {
                    _NAMED.get(m, classid_text(m)): {"class": classid_text(m),
                                                     **(self._class_stats(direction, m) or {})}
                    for m in minors
                },
            }
        return {
            "enabled": True,
            "leaf_qdisc": self._shaper.leaf_kind,
            "uplink_down": cfg.shaping.uplink_down,
            "uplink_up": cfg.shaping.uplink_up,
            "directions": classes,
            "plans": self.plan_use_json(),
        }


def _minor_plan(cfg: Config, session: Session) -> tuple[int | None, str]:
    try:
        minor: int | None = client_minor(cfg, session.ip)
    except ValueError:
        minor = None
    return minor, session.plan or "default"
