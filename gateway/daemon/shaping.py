"""The daemon's side of shaping: keeps the HTB trees in step with sessions.

All tc work runs on the netlink thread. Counters are sampled by the sweep,
so a "current rate" is the average over the last sampling interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

from gateway.config.schema import Config
from gateway.model import Session
from gateway.netlink import NetlinkThread
from gateway.shaping.plan import (
    LOCAL_MINOR,
    TRUSTED_MINOR,
    UNAUTHORIZED_MINOR,
    UPLINK_MINOR,
    Direction,
    classid_text,
    client_class,
    client_minor,
    plan_trees,
)
from gateway.shaping.tc import ClassStats, Shaper

_NAMED = {UPLINK_MINOR: "uplink", UNAUTHORIZED_MINOR: "unauthorized", LOCAL_MINOR: "local",
          TRUSTED_MINOR: "trusted"}

Sample = tuple[float, dict[int, ClassStats]]
DIRECTIONS: tuple[Direction, ...] = ("down", "up")


class ShapingService:
    def __init__(self, config: Callable[[], Config], netlink: NetlinkThread) -> None:
        self._config = config
        self.netlink = netlink
        self.shaper = Shaper()
        self._samples: dict[Direction, list[Sample]] = {"down": [], "up": []}

    @property
    def enabled(self) -> bool:
        return self._config().shaping.enabled

    def _device(self, direction: Direction) -> str:
        cfg = self._config()
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

    async def reconcile(self, sessions: Iterable[Session], previous: Config | None = None) -> int:
        """Bring both trees in line with the sessions; return how many ops ran."""
        cfg = self._config()
        if not cfg.shaping.enabled:
            if previous is not None and previous.shaping.enabled:
                for dev in (previous.network.lan_interface, previous.network.wan_interface):
                    await self.netlink.call(self.shaper.remove, dev)
            return 0
        count = 0
        for tree in plan_trees(cfg, sessions):
            count += len(await self.netlink.call(self.shaper.reconcile, tree))
        return count

    async def add(self, session: Session) -> None:
        if self.enabled:
            for direction in DIRECTIONS:
                cls = client_class(self._config(), session, direction)
                await self.netlink.call(self.shaper.upsert, self._device(direction), cls)

    async def remove(self, session: Session) -> None:
        if self.enabled:
            for direction in DIRECTIONS:
                cls = client_class(self._config(), session, direction)
                await self.netlink.call(self.shaper.delete, self._device(direction), cls)

    async def sample(self) -> None:
        if not self.enabled:
            return
        for direction in DIRECTIONS:
            d = direction
            stats = await self.netlink.call(self.shaper.stats, self._device(d))
            samples = self._samples[d]
            samples.append((time.monotonic(), stats))
            del samples[:-2]

    def _class_stats(self, direction: Direction, minor: int) -> dict[str, Any] | None:
        samples = self._samples[direction]
        if not samples:
            return None
        now_t, now = samples[-1]
        cur = now.get(minor)
        if cur is None:
            return None
        data = asdict(cur)
        del data["minor"]
        rate = 0
        if len(samples) == 2:
            then_t, then = samples[0]
            old = then.get(minor)
            if old is not None and now_t > then_t and cur.bytes >= old.bytes:
                rate = int((cur.bytes - old.bytes) * 8 / (now_t - then_t))
        data["rate_bps"] = rate
        return data

    def client_json(self, session: Session) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        cfg = self._config()
        minor = client_minor(cfg, session.ip)
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
            d = direction
            samples = self._samples[d]
            minors = sorted(samples[-1][1]) if samples else []
            classes[d] = {
                "device": self._device(d),
                "classes": {
                    _NAMED.get(m, classid_text(m)): {"class": classid_text(m),
                                                     **(self._class_stats(d, m) or {})}
                    for m in minors
                },
            }
        return {
            "enabled": True,
            "leaf_qdisc": self.shaper.leaf_kind,
            "uplink_down": cfg.shaping.uplink_down,
            "uplink_up": cfg.shaping.uplink_up,
            "directions": classes,
        }

    def close(self) -> None:
        self.shaper.close()
