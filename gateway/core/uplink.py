"""Is the village uplink up? One state, decided from link events and probes.

Theory of operation
-------------------
The gateway's uplink is ``unknown`` at start, then ``up`` or ``down``. Two
kinds of observation feed it:

* **The link** (carrier on the WAN device and a default route through it):
  when it is gone the uplink is down at once, without waiting for probes.
  Netlink link and route events make the daemon look again immediately.
* **Probe rounds** (every ``uplink.probe_interval``, default 2 s): a DNS
  query to each upstream resolver and a TCP connect to each configured
  ``host:port``, all at once; a round succeeds when any of them answers
  within its timeout. With nothing to probe, the link alone decides.

One lost packet must not tell a village its internet is gone, and one
lucky answer must not tell it that it is back: ``up`` becomes ``down``
after ``fail_after`` failed rounds in a row (default 3), ``down`` becomes
``up`` after ``recover_after`` good rounds in a row (default 2). From
``unknown`` the first good round decides ``up``. With the defaults a silent
cut is noticed in under 8 s and a lost link at the next netlink event.

The moves are one table, :data:`UPLINK` (``recovered``, ``failed`` and
``link_lost`` are fired only when a threshold is crossed, so every event the
monitor fires changes the state)::

    unknown ──recovered──▶ up        unknown ──failed | link_lost──▶ down
    up      ──failed | link_lost──▶ down
    down    ──recovered──▶ up

:class:`UplinkMonitor` is pure (state, counters, the clock). The service
around it (:class:`UplinkService`) asks a prober port for the observations,
publishes ``uplink_changed`` on the event bus and tells its listeners (the
DNS server's offline mode, the government-services catalog) on each change.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, get_args

from gateway.clock import Clock
from gateway.config.schema import Config
from gateway.core.events import EventBus, UplinkChanged
from gateway.core.lifecycle import TransitionTable
from gateway.timefmt import iso

log = logging.getLogger("desanet.uplink")

UplinkState = Literal["unknown", "up", "down"]
UplinkEvent = Literal["recovered", "failed", "link_lost"]

UPLINK: TransitionTable[UplinkState, UplinkEvent] = TransitionTable(
    "uplink",
    {
        ("unknown", "recovered"): "up",
        ("unknown", "failed"): "down",
        ("unknown", "link_lost"): "down",
        ("up", "failed"): "down",
        ("up", "link_lost"): "down",
        ("down", "recovered"): "up",
    },
    states=get_args(UplinkState),
    events=get_args(UplinkEvent),
)


LOSS_WINDOW = 20  # observations the loss figure covers (40 s at the default 2 s rounds)


@dataclass(frozen=True)
class ProbeResult:
    """One probe round: did any target answer, and how fast the fastest one did."""

    ok: bool
    latency_ms: float | None = None
    detail: str = ""  # what failed, for the log


@dataclass(frozen=True)
class UplinkStatus:
    state: UplinkState = "unknown"
    since: float = 0.0  # wall-clock time of the last change (or of the start)
    reason: str = "start"  # "link", "probes", "start"
    latency_ms: float | None = None  # of the last good round; None after a failed one
    checked: float | None = None  # wall-clock time of the last observation
    failures: int = 0  # failed rounds in a row
    successes: int = 0  # good rounds in a row
    # share of the last LOSS_WINDOW observations that failed (a probe round no target
    # answered, or the link gone), in %; None before the first
    loss_pct: float | None = None

    @property
    def down(self) -> bool:
        return self.state == "down"

    def as_json(self, tz: str) -> dict[str, Any]:
        return {
            "state": self.state,
            "since": int(self.since),
            "since_iso": iso(self.since, tz),
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "reason": self.reason,
            "checked": None if self.checked is None else int(self.checked),
            "loss_pct": None if self.loss_pct is None else round(self.loss_pct, 1),
        }


class UplinkMonitor:
    """The pure state machine: feed it observations, it says when the state changed."""

    def __init__(self, clock: Clock, fail_after: int = 3, recover_after: int = 2) -> None:
        self.clock = clock
        self.fail_after = fail_after
        self.recover_after = recover_after
        self.status = UplinkStatus(since=clock.time())
        self._recent: deque[bool] = deque(maxlen=LOSS_WINDOW)  # True: that observation failed

    def _loss(self, failed: bool) -> float:
        self._recent.append(failed)
        return 100.0 * sum(self._recent) / len(self._recent)

    def link_lost(self) -> UplinkStatus | None:
        """The link is gone (no carrier or no default route): down at once."""
        now = self.clock.time()
        st = replace(self.status, checked=now, latency_ms=None, successes=0,
                     loss_pct=self._loss(True))
        self.status = st
        if st.state == "down":
            return None
        return self._fire("link_lost", "link")

    def round(self, result: ProbeResult) -> UplinkStatus | None:
        """One probe round with the link present; the new status when the state changed."""
        now = self.clock.time()
        st = self.status
        if result.ok:
            st = replace(st, checked=now, latency_ms=result.latency_ms, failures=0,
                         successes=st.successes + 1, loss_pct=self._loss(False))
            self.status = st
            if st.state == "unknown" or (st.state == "down"
                                         and st.successes >= self.recover_after):
                return self._fire("recovered", "probes")
            return None
        st = replace(st, checked=now, latency_ms=None, successes=0, failures=st.failures + 1,
                     loss_pct=self._loss(True))
        self.status = st
        if st.state != "down" and st.failures >= self.fail_after:
            return self._fire("failed", "probes")
        return None

    def _fire(self, event: UplinkEvent, reason: str) -> UplinkStatus:
        state = UPLINK.next(self.status.state, event)
        self.status = replace(self.status, state=state, since=self.clock.time(), reason=reason)
        return self.status


class UplinkProberPort(Protocol):
    """How the service observes the uplink (gateway/netinfo/uplink.py; a fake beside it)."""

    async def link_up(self, wan_interface: str) -> bool:
        """Carrier on ``wan_interface`` and a default route through it."""
        ...

    def system_resolvers(self) -> list[str]:
        """The nameservers the gateway itself uses (its resolv.conf)."""
        ...

    async def probe(self, dns: Sequence[str], tcp: Sequence[tuple[str, int]],
                    timeout: float) -> ProbeResult:
        """One round: every target at once; ok when any answers within ``timeout``."""
        ...


def probe_targets(cfg: Config, system_resolvers: Sequence[str]
                  ) -> tuple[list[str], list[tuple[str, int]]]:
    """What to probe (pure): ``uplink.probe_dns`` or else the DNS upstreams (the
    config's, else the system's), never loopback ones; and ``uplink.probe_tcp``."""
    up = cfg.uplink
    dns = [str(a) for a in up.probe_dns] or [str(a) for a in cfg.dhcp.upstream_dns] \
        or list(system_resolvers)
    dns = [a for a in dict.fromkeys(dns) if _outside(a)]
    tcp = [(str(t.rsplit(":", 1)[0]).strip("[]"), int(t.rsplit(":", 1)[1])) for t in up.probe_tcp]
    return dns, tcp


def _outside(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified)


Listener = Callable[[UplinkStatus], Awaitable[None]]


TICK = 1.0  # the reconcile loop's job interval; rounds follow uplink.probe_interval


class UplinkService:
    """Runs the monitor from the prober. The reconcile loop calls :meth:`tick` every
    :data:`TICK` seconds; a round runs when ``uplink.probe_interval`` (read per round,
    so a config apply changes it) has passed, or at once after :meth:`poke`."""

    def __init__(self, config: Callable[[], Config], prober: UplinkProberPort, bus: EventBus,
                 clock: Clock) -> None:
        self._config = config
        self.prober = prober
        self.bus = bus
        cfg = config().uplink
        self.monitor = UplinkMonitor(clock, cfg.fail_after, cfg.recover_after)
        self.listeners: list[Listener] = []
        self._retry: list[Listener] = []  # listeners that failed on the last change
        self._clock = clock
        self._next_round: float | None = None
        self._poked = False

    @property
    def status(self) -> UplinkStatus:
        return self.monitor.status

    @property
    def down(self) -> bool:
        """True only when the uplink is known to be down (unknown counts as up)."""
        return self.monitor.status.down

    def status_json(self) -> dict[str, Any]:
        return self.monitor.status.as_json(self._config().site.timezone)

    def poke(self) -> None:
        """Observe at the next tick, whatever the interval (a netlink link event)."""
        self._poked = True

    async def tick(self) -> None:
        """A round when one is due (see the class docstring); else nothing."""
        now = self._clock.monotonic()
        if not self._poked and self._next_round is not None and now < self._next_round:
            return
        self._poked = False
        self._next_round = now + self._config().uplink.probe_interval
        await self.check()

    async def check(self) -> None:
        """One observation: the link, then (with the link present) a probe round.

        Raises nothing but what a listener raises after the change is recorded.
        """
        cfg = self._config()
        up = cfg.uplink
        self.monitor.fail_after, self.monitor.recover_after = up.fail_after, up.recover_after
        if not await self.prober.link_up(cfg.network.uplink_interface):
            changed = self.monitor.link_lost()
        else:
            dns, tcp = probe_targets(cfg, self.prober.system_resolvers())
            if dns or tcp:
                # A round must end before the next is due, or the loop skips a turn.
                result = await self.prober.probe(dns, tcp, up.probe_interval * 0.75)
            else:
                result = ProbeResult(True, None, "no probe targets: the link decides")
            if not result.ok:
                log.debug("uplink probe round failed: %s", result.detail)
            changed = self.monitor.round(result)
        if changed is not None:
            await self._announce(changed)
        elif self._retry:
            retry, self._retry = self._retry, []
            await self._tell(retry, self.monitor.status)

    async def _announce(self, st: UplinkStatus) -> None:
        if st.down:
            log.warning("uplink DOWN (%s); villagers are told the internet is cut", st.reason)
        else:
            log.info("uplink up (latency %s ms)", "-" if st.latency_ms is None
                     else f"{st.latency_ms:.0f}")
        self.bus.publish(UplinkChanged(not st.down, int(st.since), st.reason,
                                       None if st.latency_ms is None
                                       else round(st.latency_ms, 1)))
        self._retry = []
        await self._tell(list(self.listeners), st)

    async def _tell(self, listeners: list[Listener], st: UplinkStatus) -> None:
        for listener in listeners:
            try:
                await listener(st)
            except Exception:
                # One part failing (dnsmasq refused a restart) must not keep the others
                # from hearing it; it is told again at the next check.
                log.exception("reacting to the uplink change failed; retrying at the next check")
                self._retry.append(listener)
