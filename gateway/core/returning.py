"""Returning phones: a device that logged in with a voucher of a plan with
``auto_login = true`` is let in again without the portal while that voucher is usable.

Where the daemon learns of the device: its first request the portal sees. Every phone
checks for a captive portal the moment it joins the Wi-Fi (Android's generate_204,
Apple's hotspot-detect): that request is redirected to the portal, which asks
``SessionService.identify`` who it is. For a MAC with no session, identify asks
:meth:`ReturningDevices.voucher_for`; with a voucher, the phone is logged in with it
(the same store transaction and device-slot rules as typing the code) and the portal
relays the request it was holding, so the phone sees the internet and no login page.

Which voucher: the one of the MAC's latest session, when that session ended on its own
(idle, or its time) — not after a logout, a release or a revocation, which say "this
phone should not come back by itself". Refused once the voucher is over (validity, time
of use, quota cut, revoked) or its plan no longer has auto_login (a plan change applies
at once).

Randomized MACs: Android and iOS use one random MAC per network (SSID) and keep it, so
the same phone returns with the same MAC and is recognised; a phone set to a new random
MAC per connection is a new device and meets the portal. The MAC is the only proof: a
device that copies a returning phone's MAC while that phone is away gets its voucher's
time. docs/vouchers-office.md weighs that risk and what bounds it (Step 6's DHCP and
source checks: one address per lease, the copy cannot use the address of the phone while
it is present); keep auto_login off for plans where it matters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from gateway.clock import Clock
from gateway.config.schema import Config
from gateway.model import Voucher

RETURNABLE = frozenset({"idle", "expired"})  # ended by itself; None: never swept yet
NEGATIVE_FOR = 10.0  # s: a MAC found not returning is not looked up again for this long
MEMORY = 4096  # MACs remembered as not returning (then the oldest half is forgotten)


class ReturningStorePort(Protocol):
    async def last_session(self, mac: str) -> tuple[str | None, str | None, int | None] | None:
        ...


class VoucherLookup(Protocol):
    async def voucher(self, code: str) -> Voucher | None: ...


def usable(voucher: Voucher, cfg: Config, now: int) -> bool:
    """The voucher can still be used: not revoked, within its time, quota not cut, time
    of use (of its plan) not used up."""
    if voucher.state(now) != "active" or voucher.quota_state == "cut":
        return False
    plan = cfg.shaping.plans.get(voucher.plan) if voucher.plan else None
    tou = plan.time_of_use if plan is not None else None
    return not (tou and voucher.used_seconds >= tou)


class ReturningDevices:
    def __init__(self, config: Callable[[], Config], store: ReturningStorePort,
                 vouchers: VoucherLookup, clock: Clock) -> None:
        self._config = config
        self.store = store
        self.vouchers = vouchers
        self.clock = clock
        self._not: dict[str, float] = {}  # MAC -> monotonic time found not returning
        self.readmitted = 0  # since the daemon started (counts only, for status)

    def forget(self, mac: str) -> None:
        self._not.pop(mac, None)

    async def voucher_for(self, mac: str) -> str | None:
        """The code to log ``mac`` in with again, or None."""
        cfg = self._config()
        auto = {name for name, plan in cfg.shaping.plans.items() if plan.auto_login}
        if not auto:
            return None
        mono = self.clock.monotonic()
        if mono - self._not.get(mac, float("-inf")) < NEGATIVE_FOR:
            return None
        code = await self._lookup(mac, cfg, auto)
        if code is None:
            if len(self._not) >= MEMORY:
                for old in sorted(self._not, key=self._not.__getitem__)[:MEMORY // 2]:
                    del self._not[old]
            self._not[mac] = mono
        return code

    async def _lookup(self, mac: str, cfg: Config, auto: set[str]) -> str | None:
        last = await self.store.last_session(mac)
        if last is None:
            return None
        code, reason, ended = last
        if code is None or (ended is not None and reason not in RETURNABLE):
            return None
        voucher = await self.vouchers.voucher(code)
        if voucher is None or voucher.plan not in auto or (mac not in voucher.devices and
                len(voucher.devices) >= voucher.max_devices):
            return None
        return code if usable(voucher, cfg, self.clock.now()) else None
