"""The shaping service: keeps the HTB trees in step with sessions, keeps samples.

Theory of operation
-------------------
The planner (:mod:`gateway.shaping.plan`) says what each device's tree
should be; this service asks the shaper port to make it so. Counters are
read only by :meth:`sample`, which the reconcile loop calls on its timer;
reads (:meth:`status_json`, :meth:`client_json`) return the last two samples
and the moments they were taken, so the rate a reader sees does not depend
on who else asked, and a GET changes nothing.
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

    async def remove(self, session: Session) -> None:
        """Delete the client's classes. Raises ShapingError."""
        if self.enabled:
            cfg = self._config()
            for direction in DIRECTIONS:
                await self._shaper.delete(self._device(direction, cfg),
                                          client_class(cfg, session, direction))

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
        }
