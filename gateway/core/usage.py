"""Time of use (Step 11): seconds a voucher was online, idle time excluded, kept in
``vouchers.used_seconds`` so that it survives restarts.

How it is counted
-----------------
The session sweep lists the kernel's activity sets anyway: ``active4`` (every
packet a client sends refreshes its element to the element's timeout) and
``active_down4`` (every packet forwarded to it, by address), merged by
:func:`latest_activity` into the later of the two, so "timeout - seconds left" is
how long the client has been quiet in both directions (a silent phone receiving a
stream is in use). At each sweep,
:meth:`TimeOfUse.tick` credits every live voucher session the part of the time
since the previous tick up to its last packet:

    credit = span - quiet,  clamped to 0 .. span

where ``span`` is measured on the monotonic clock (a wall-clock step, NTP's first
sync on a box without a battery, neither adds nor removes use). A voucher with
several devices online at once is credited once (the longest of them): time of use
is time the voucher was in use, not device-seconds. Whole seconds are written in one
transaction per tick (fractions carry over in memory).

Bounds (docs/plans.md): use is resolved to the sweep's interval (a quiet gap shorter
than one tick, ~5 s, counts as use); a kill -9 or power cut loses what was counted
since the last tick (at most one sweep interval, and the fraction carried) and the
seconds the daemon was down (the kernel keeps letting clients out meanwhile); a
client is idle once quiet for its idle timeout and the sweep ends its session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from gateway.config.schema import Config
from gateway.model import Session, Voucher
from gateway.ports import SessionStorePort

log = logging.getLogger("desanet.usage")

MacIp = tuple[str, str]


def latest_activity(active: Mapping[MacIp, int], downloads: Mapping[str, int],
                    clients: Iterable[MacIp]) -> dict[MacIp, int]:
    """Each client's seconds left in its idle window after its last packet either way:
    ``active`` (``active4``: what it sent) merged with ``downloads`` (``active_down4``:
    what was forwarded to its address) for each of ``clients`` (the authorized ones:
    a download names no MAC). Both sets' elements have the same timeout, so the larger
    number left is the later packet. A client in neither is idle (left out)."""
    out = dict(active)
    for key in clients:
        down = downloads.get(key[1])
        if down is not None and down > out.get(key, -1):
            out[key] = down
    return out


def quiet_for(session: Session, left: int) -> float:
    """Seconds since ``session``'s last packet, from its ``active4`` element's seconds
    ``left``. The element's timeout is the idle timeout, or less when the login came
    within an idle timeout of the session's end (plan_authorize caps it). The kernel
    truncates ``left``: one second is given back so a busy client reads 0."""
    timeout = min(session.idle_timeout, max(1, session.expires - session.started))
    return max(0.0, float(timeout - left - 1))


def session_key(s: Session) -> tuple[str, str, int]:
    return s.mac, s.ip, s.started


def credits(sessions: Iterable[Session], active: Mapping[MacIp, int], span: float,
            now: int, known: Iterable[tuple[str, str, int]] = ()) -> dict[str, float]:
    """Seconds of use in the last ``span`` seconds for each voucher with a live session
    (0.0 when idle throughout). A session not ``known`` at the previous tick started
    within the span: it is credited no more than it has existed (by the wall clock,
    ignored when a clock step makes that look negative or longer than the span)."""
    seen = set(known)
    out: dict[str, float] = {}
    for s in sessions:
        if s.voucher is None:
            continue
        left = active.get((s.mac, s.ip))
        used = 0.0 if left is None else min(span, max(0.0, span - quiet_for(s, left)))
        age = now - s.started
        if session_key(s) not in seen and 0 <= age <= span:
            used = min(used, float(age) + 1.0)
        out[s.voucher] = max(out.get(s.voucher, 0.0), used)
    return out


def time_left(cfg: Config, voucher: Voucher) -> int | None:
    """Seconds of use left on ``voucher`` (None: its plan has no time of use)."""
    plan = cfg.shaping.plans.get(voucher.plan) if voucher.plan else None
    if plan is None or plan.time_of_use is None:
        return None
    return max(0, plan.time_of_use - voucher.used_seconds)


class TimeOfUse:
    """The counter behind ``vouchers.used_seconds``; one per daemon (its first tick after a
    start only sets the base: time the daemon was down is not counted)."""

    def __init__(self, config: Callable[[], Config], store: SessionStorePort) -> None:
        self._config = config
        self.store = store
        self._last: float | None = None
        self._carry: dict[str, float] = {}
        self._known: set[tuple[str, str, int]] = set()  # sessions live at the last tick
        self.deadline: float | None = None  # wall clock: the earliest time of use running out

    async def tick(self, sessions: list[Session], active: Mapping[MacIp, int],
                   mono: float, now: int) -> list[Session]:
        """Credit the time since the last tick; return the sessions whose voucher's time
        of use is used up (the caller ends them). Raises StoreError (nothing counted)."""
        last, self._last = self._last, mono
        known, self._known = self._known, {session_key(s) for s in sessions}
        span = 0.0 if last is None else max(0.0, mono - last)
        used = credits(sessions, active, span, now, known)
        whole: dict[str, int] = {}
        for code, seconds in used.items():
            total = self._carry.get(code, 0.0) + seconds
            whole[code] = int(total)
            self._carry[code] = total - int(total)
        self._carry = {c: f for c, f in self._carry.items() if c in used}
        if not whole:
            self.deadline = None
            return []
        timed = sorted(n for n, p in self._config().shaping.plans.items()
                       if p.time_of_use is not None)
        try:
            vouchers = {v.code: v for v in await self.store.add_used_seconds(whole, timed)}
        except BaseException:
            self._last, self._known = last, known  # counted again at the next tick
            raise
        return self._used_up(sessions, vouchers, active, now)

    def _used_up(self, sessions: list[Session], vouchers: Mapping[str, Voucher],
                 active: Mapping[MacIp, int], now: int) -> list[Session]:
        cfg = self._config()
        done, soonest = set(), None
        for code, v in vouchers.items():
            left = time_left(cfg, v)
            if left is None:
                continue
            if left <= 0:
                done.add(code)
            elif any(s.voucher == code and (s.mac, s.ip) in active for s in sessions):
                soonest = now + left if soonest is None else min(soonest, now + left)
        self.deadline = soonest
        return [s for s in sessions if s.voucher in done]
