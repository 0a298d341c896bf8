"""The free trial: ``portal.trial_minutes`` free minutes per device per local day,
given by the portal's terms button on ``portal.trial_plan``'s rates (0 minutes: off).

Counted per MAC and per local day of the site in the store (table ``trial_use``,
gateway/store/office.py), so a restart or a kill -9 gives nothing twice. A grant
gives what is left of the day's minutes; the session it opens expires when they run
out, in the kernel like any session, and the next press of the button that day gets
the "trial used up" page. Time a trial session did not use (the villager logged out or
went idle) is given back on the next press.

MAC rotation: a phone that changes its MAC is a new device and gets a new trial. That
is bounded by what Step 6 bounds for any new MAC (a DHCP lease per address from the
pool, ``portal.max_clients``, the portal's per-address connection and request limits),
not prevented; docs/vouchers-office.md says so, and an office that sees it abused turns
the trial off (trial_minutes = 0).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Protocol

from gateway.clock import Clock
from gateway.config.schema import Config
from gateway.errors import PortalDenied
from gateway.timefmt import local

TRIAL_USED = "trial_used"  # PortalDenied.reason: the day's minutes are used up
KEEP_DAYS = 7  # trial counts kept (a clock stepped back a few days still finds its day)


class TrialStorePort(Protocol):
    async def trial_grant(self, mac: str, day: str, now: int, allowance: int) -> int: ...

    async def trial_used(self, mac: str, day: str, now: int) -> int: ...

    async def prune_trials(self, before_day: str) -> int: ...


def trial_day(now: int, tz: str) -> str:
    """The site's local day of ``now``, "2026-12-02": the trial's unit of counting."""
    return local(now, tz).date().isoformat()


class TrialService:
    def __init__(self, config: Callable[[], Config], store: TrialStorePort,
                 clock: Clock) -> None:
        self._config = config
        self.store = store
        self.clock = clock

    def enabled(self) -> bool:
        return self._config().portal.trial_minutes > 0

    async def grant(self, mac: str) -> tuple[int, str | None]:
        """(seconds granted, plan) for a trial session of ``mac`` starting now; raises
        PortalDenied("trial_used") when the day's minutes are used up."""
        cfg = self._config()
        now = self.clock.now()
        seconds = await self.store.trial_grant(mac, trial_day(now, cfg.site.timezone), now,
                                               cfg.portal.trial_minutes * 60)
        if seconds <= 0:
            raise PortalDenied(TRIAL_USED)
        return seconds, cfg.portal.trial_plan

    async def prune(self) -> int:
        """Forget the trial counts of days over KEEP_DAYS ago (one row per device a day)."""
        today = dt.date.fromisoformat(trial_day(self.clock.now(), self._config().site.timezone))
        return await self.store.prune_trials((today - dt.timedelta(days=KEEP_DAYS)).isoformat())
