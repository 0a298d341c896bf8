"""Data quotas: the reconcile loop's side of the kernel's meters (docs/quota.md).

Theory of operation
-------------------
The kernel counts and enforces (firewall/meters.py): per voucher two counters and one
quota object per limit, looked up by client address on every packet. A quota that runs
out acts in the kernel at once, on the packet that reaches it (dropped when the plan
cuts, steered into the client's fair-use class when it slows). This service turns that
into the store's and the villager's view:

* every ``TICK`` it lists the quota objects (one nfnetlink dump; a turn is skipped
  when the last read took more than 1/READ_SHARE of the time since): a voucher whose quota is
  used up gets ``quota_state`` 'cut' or 'slow', and a cut voucher's sessions end with
  EndReason.QUOTA (the portal then shows why); a voucher within its quota again (its
  plan was given a larger quota) gets '' back.
* every ``FLUSH_INTERVAL`` (and at once when a state changes) it reads the counters and
  zeroes them in the same request, and adds the bytes to the vouchers in one store
  transaction. A delta is what the kernel counted since the last read: never negative,
  never counted twice. A crash between the read and the commit loses that one read's
  bytes; a lost table (reboot, ``nft flush ruleset``) loses what was counted since the
  last flush. Meanwhile the bytes wait in the kernel, which a daemon crash does not touch.
* objects of vouchers with no session left are deleted after their last read.

At a rebuild the kernel's counts and quotas' use are carried into the new table
(firewall adapter); a quota made afresh (after a reboot) starts from the store's bytes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from gateway.clock import Clock
from gateway.config.schema import Config
from gateway.core.events import EndReason
from gateway.errors import DesanetError, NotFound
from gateway.meter import Meter, meter_of, voucher_of
from gateway.model import Session, Voucher
from gateway.ports import FirewallPort, SessionStorePort
from gateway.shaping.plan import classid_text, fair_class

log = logging.getLogger("desanet.quota")

TICK = 1.0  # quota states (and cut sessions' ends) follow the kernel within about this
FLUSH_INTERVAL = 10.0  # counted bytes reach the store at least this often
# ... but the kernel worker spends at most 1/READ_SHARE of its time on these reads: with
# many thousands of vouchers online a turn is skipped (the kernel still enforces at once)
READ_SHARE = 10


def meter_for(cfg: Config, session: Session, used: tuple[int, int] = (0, 0)) -> Meter | None:
    """The kernel meter of a session under ``cfg`` (None without a voucher)."""
    fair = fair_class(cfg, session, "down") if cfg.shaping.enabled else None
    return meter_of(cfg, session, used, classid_text(fair.minor) if fair else None)


def voucher_used(voucher: Voucher | None) -> tuple[int, int]:
    return (voucher.bytes_down, voucher.bytes_up) if voucher is not None else (0, 0)


class QuotaService:
    def __init__(self, config: Callable[[], Config], store: SessionStorePort,
                 firewall: FirewallPort, clock: Clock,
                 end: Callable[[str, EndReason], Awaitable[object]],
                 note_cut: Callable[[str, str], None] | None = None) -> None:
        """``end(mac, reason)`` ends a session (SessionService.end); ``note_cut(mac,
        code)`` tells the portal why (SessionService.note_quota_cut)."""
        self._config = config
        self.store = store
        self.firewall = firewall
        self.clock = clock
        self._end = end
        self._note_cut = note_cut
        self._states: dict[str, str] = {}  # voucher -> quota state last written
        self._flushed = float("-inf")  # monotonic time of the last counter read
        self._read_at = float("-inf")  # monotonic time of the last read, and its duration
        self._read_took = 0.0

    async def meters(self, cfg: Config, sessions: Sequence[Session]) -> list[Meter]:
        """Meters of the sessions under ``cfg``, quotas starting at the store's bytes (for
        a rebuild of the ruleset)."""
        codes = [s.voucher for s in sessions if s.voucher is not None]
        used = await self.store.voucher_usage(codes) if codes else {}
        out = []
        for s in sessions:
            m = meter_for(cfg, s, used.get(s.voucher or "", (0, 0)))
            if m is not None:
                out.append(m)
        return out

    async def tick(self) -> None:
        """Follow the kernel's quotas; flush counted bytes when due. Raises DesanetError
        (the reconciler logs it and tries again at the next turn)."""
        started = self.clock.monotonic()
        if started - self._read_at < READ_SHARE * self._read_took:
            return
        due = started - self._flushed >= FLUSH_INTERVAL
        reading = await self.firewall.read_meters(counters=due)
        self._read_at, self._read_took = started, self.clock.monotonic() - started
        now = self.clock.now()
        sessions = await self.store.active_sessions(now)
        cfg = self._config()
        by_voucher: dict[str, list[Session]] = {}
        for s in sessions:
            if s.voucher is not None:
                by_voucher.setdefault(s.voucher, []).append(s)
        states: dict[str, str] = {}
        for code, group in by_voucher.items():
            if code not in reading.quotas:
                continue
            plan = cfg.shaping.plan(group[0].plan)
            state: str = plan.after_quota if reading.over(code) else ""
            if self._states.get(code) != state:
                states[code] = state
        if states and not due:  # a quota ran out: its bytes go to the store with it
            reading = reading.merge(await self.firewall.read_meters(counters=True))
            due = True
        if due:
            self._flushed = self.clock.monotonic()
        deltas = {code: d for code, d in reading.bytes.items() if d != (0, 0)}
        if deltas or states:
            await self.store.add_voucher_bytes(deltas, states)
        self._states.update(states)
        for code in [c for c in self._states if c not in by_voucher]:
            del self._states[code]  # offline: the store keeps it, the next login looks again
        for code, new in states.items():
            log.info("a voucher's quota: %s", "used up, slowed to its fair-use rate"
                     if new == "slow" else "used up, cut off" if new else "within quota")
            if new == "cut":
                await self._cut(by_voucher.get(code, []))
        if due:
            await self._drop_unused(reading.names, by_voucher)

    async def _cut(self, sessions: Iterable[Session]) -> None:
        for s in sessions:
            if self._note_cut is not None and s.voucher is not None:
                self._note_cut(s.mac, s.voucher)
            with contextlib.suppress(NotFound):  # ended meanwhile
                await self._end(s.mac, EndReason.QUOTA)

    async def _drop_unused(self, names: Iterable[str], online: dict[str, list[Session]]) -> None:
        """Delete the objects of vouchers no session uses (just read: nothing is lost). A
        login that took one up meanwhile makes the kernel refuse; the next flush retries."""
        unused = [n for n in names if voucher_of(n) not in online]
        if not unused:
            return
        try:
            await self.firewall.drop_meters(unused)
        except DesanetError as exc:
            log.debug("meter objects still in use, kept for now: %s", exc)
