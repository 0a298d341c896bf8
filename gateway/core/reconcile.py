"""The reconciler: one path from "this config" to "the box does this", and every timer.

Theory of operation
-------------------
:meth:`Reconciler.converge` is the only way a config reaches the kernel and
the child processes. Start-up (``previous`` is None), SIGHUP, ``config
apply``, a confirm window that ran out, a rollback and a config
pushed over MQTT all call it. It builds a list of steps, each with its undo
(:mod:`gateway.config.apply`); parts whose settings did not change are left
alone (a new terms text does not restart the portal or dnsmasq). While it
runs it holds the session lock, so no login interleaves with a rebuild.

:meth:`Reconciler.run` owns every periodic job of the daemon (sweep of
expired and idle sessions, counter samples, pruning old sessions, upstream
probes, the nightly prefetch, the confirm-window deadline). Each job has an
interval and a next-due time on the monotonic clock; one failing job is
logged and retried at its next turn, never ends the loop. A job can also be
asked for earlier (:meth:`Reconciler.run_at`): the session service asks for
the sweep at the next expiry or idle deadline, so sessions end on time
rather than up to ``SWEEP_INTERVAL`` late.

Healing (:meth:`Reconciler.check_kernel`, every ``KERNEL_CHECK_INTERVAL`` and at
once on a netlink link event or a login the kernel refused): the kernel state
is a cache of the config and the sessions, and a hand edit (``nft flush
ruleset``, ``tc qdisc del``) or a modem's interface created again can take it
away while the daemon runs. The check is cheap (the table's handles and two
chains' rule counts, the root qdisc of each device: nothing that grows with the
clients); what it finds missing is built again from the store, with the
sessions to itself, like a converge's shaping and firewall steps. A table made
again carries no idle state, so every session gets one fresh idle window.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.asynctools import wait_event
from gateway.clock import Clock
from gateway.config.apply import Step, run_steps
from gateway.config.schema import Config
from gateway.core.plans import plan_stamps
from gateway.core.sessions import SessionService
from gateway.errors import DesanetError
from gateway.meter import Meter
from gateway.model import Session, VoucherLimits
from gateway.ports import DhcpServerPort, FirewallPort
from gateway.shaping.service import ShapingService

log = logging.getLogger("desanet.reconcile")

SWEEP_INTERVAL = 5.0  # the sweep's regular turn; deadlines bring it forward (run_at)
SWEEP_JOB = "sweep"  # the name the daemon registers the session sweep under
HURRIED_RETRY = 0.2  # a job asked for while still running looks again this soon
SAMPLE_INTERVAL = 5.0
KERNEL_CHECK_INTERVAL = 2.0  # the product promises a repair within 10 s
KERNEL_JOB = "kernel-check"  # the name the daemon registers check_kernel under
PRUNE_INTERVAL = 3600.0
SESSION_HISTORY = 90 * 86400  # ended sessions are kept this long (who was online when)


class ServersPort(Protocol):
    """What the daemon hosts that follows the config (implemented in gateway/daemon)."""

    def enable_forwarding(self) -> None:
        """Turn on IPv4 forwarding (only after the firewall is in place). Raises ServiceError."""

    async def sync_local_services(self, cfg: Config) -> None:
        """Start or stop the government-services site to match ``cfg``."""

    def update_limits(self, cfg: Config) -> None:
        """Apply settings kept in long-lived objects (the voucher rate limit)."""

    async def sync_portal(self, cfg: Config, previous: Config | None) -> None:
        """(Re)start the portal listeners when their address or ports changed.

        Raises ServiceError when a port cannot be bound.
        """

    async def stop_portal(self) -> None:
        """Close the portal listeners (undo of the first start)."""

    async def stop_local_services(self) -> None:
        """Stop the government-services site (undo of the first start)."""


def portal_listen(cfg: Config) -> tuple[object, ...]:
    """What the portal's listeners are bound with; a change restarts them."""
    tls = (cfg.portal.https_port, cfg.portal.tls_certificate, cfg.portal.tls_key) \
        if cfg.portal.https else None
    return (cfg.lan_ip, cfg.portal.http_port, cfg.portal.redirect_port, tls)


def garden_same(a: Config, b: Config) -> bool:
    return a.walled_garden.hostnames == b.walled_garden.hostnames


@dataclass
class Job:
    name: str
    interval: float
    action: Callable[[], Awaitable[None]]
    due: float = 0.0
    running: asyncio.Task[None] | None = None
    hurried: bool = False  # brought forward by run_at: a deadline depends on this turn


class Reconciler:
    def __init__(
        self,
        holder: ConfigHolder,
        sessions: SessionService,
        shaping: ShapingService,
        firewall: FirewallPort,
        dhcp: DhcpServerPort,
        servers: ServersPort,
        clock: Clock,
    ) -> None:
        self.holder = holder
        self.sessions = sessions
        self.shaping = shaping
        self.firewall = firewall
        self.dhcp = dhcp
        self.servers = servers
        self.clock = clock
        self.jobs: list[Job] = []
        self._wake = asyncio.Event()
        sessions.set_wakeup(lambda at: self.run_at(SWEEP_JOB, at))
        sessions.set_kernel_suspect(lambda: self.run_soon(KERNEL_JOB))
        self._repair_failing: str | None = None  # the last failed repair, logged once
        # quota: the sessions' kernel meters for a rebuild (QuotaService.meters), set by
        # the daemon; None: no meters (tests of other parts)
        self.meters: Callable[[Config, Sequence[Session]], Awaitable[list[Meter]]] | None = None

    async def _meters(self, cfg: Config, sessions: Sequence[Session]) -> list[Meter]:
        return await self.meters(cfg, sessions) if self.meters is not None else []

    # -- converge ------------------------------------------------------------------

    async def converge(self, new: Config, previous: Config | None) -> list[str]:
        """Make the box match ``new``; all or nothing. Return the steps that ran.

        Raises ApplyFailed(step, reason) after undoing every step taken; the
        running config (``holder.current``) is then ``previous`` again.
        """
        return await run_steps(self._steps(new, previous))

    def _locked(self, step: Step) -> Step:
        """The step (and its undo) with the sessions to itself: no login interleaves with
        a rebuild of the kernel state from the session list. Steps that only touch child
        processes (dnsmasq's check and restart can take seconds) run without it, so
        villagers can log in meanwhile."""
        locks = self.sessions.locks

        async def do() -> None:
            async with locks.exclusive():
                await step.do()

        async def undo() -> None:
            async with locks.exclusive():
                await step.undo()

        return Step(step.name, do, undo)

    def _steps(self, new: Config, old: Config | None) -> list[Step]:
        holder = self.holder
        steps: list[Step] = []

        async def switch() -> None:
            holder.current = new

        async def switch_back() -> None:
            if old is not None:
                holder.current = old

        steps.append(self._locked(Step("config", switch, switch_back)))

        # plans: a plan's validity and shared devices are stamped on its vouchers and the
        # end of their sessions moves, before the firewall is built from those sessions.
        stamped: list[VoucherLimits] = []

        async def plans_new() -> None:
            stamped[:] = await self.sessions.store.stamp_plans(plan_stamps(new, old))
            self.sessions.sweep_soon()  # time of use or a validity shortened: end them now

        async def plans_old() -> None:
            await self.sessions.store.restore_limits(stamped)
            if stamped and old is not None:
                # Undone in reverse: the firewall step's undo ran before this one, with
                # the stamped session ends; the old ends go back into the kernel too.
                await self.firewall.apply(old, await sessions_now(), self.clock.now(), True)

        steps.append(self._locked(Step("plans", plans_new, plans_old)))

        async def sessions_now() -> list[Session]:
            return await self.sessions.active()

        async def shape_new() -> None:
            await self.shaping.converge(new, await sessions_now(), old)

        async def shape_old() -> None:
            if old is not None:
                await self.shaping.converge(old, await sessions_now(), new)

        # Classes first, then the firewall that steers packets into them. Both
        # always run: the shaper applies only differences, and a ruleset swap is
        # one atomic transaction that carries the dynamic sets and keeps connections.
        steps.append(self._locked(Step("shaping", shape_new, shape_old)))

        async def firewall_new() -> None:
            # Expired sessions are left out here and ended (with their event) by the sweep.
            now = self.clock.now()
            carry = old is None or garden_same(old, new)
            sessions = await sessions_now()
            await self.firewall.apply(new, sessions, now, carry,
                                      await self._meters(new, sessions))

        async def firewall_old() -> None:
            if old is not None:
                # Carry the walled garden's resolved addresses back only when they were
                # resolved for names the old config allows too (names were only removed).
                carry = set(new.walled_garden.hostnames) <= set(old.walled_garden.hostnames)
                sessions = await sessions_now()
                await self.firewall.apply(old, sessions, self.clock.now(), carry,
                                          await self._meters(old, sessions))

        steps.append(self._locked(Step("firewall", firewall_new, firewall_old)))

        if old is None:
            async def forwarding() -> None:
                self.servers.enable_forwarding()  # only now: the firewall fails closed

            steps.append(Step("forwarding", forwarding))

        async def dhcp_new() -> None:
            changed = await self.dhcp.configure(new)
            if old is None or not self.dhcp.running:
                await self.dhcp.start()
            elif changed:
                await self.dhcp.restart()

        async def dhcp_old() -> None:
            if old is None:  # the first start: stop what it started
                await self.dhcp.stop()
                return
            changed = await self.dhcp.configure(old)
            if not self.dhcp.running:
                await self.dhcp.start()
            elif changed:
                await self.dhcp.restart()

        steps.append(Step("dnsmasq", dhcp_new, dhcp_old))

        async def local_new() -> None:
            await self.servers.sync_local_services(new)

        async def local_old() -> None:
            if old is None:
                await self.servers.stop_local_services()
            else:
                await self.servers.sync_local_services(old)

        if old is None or local_site_settings(old) != local_site_settings(new):
            steps.append(Step("local_services", local_new, local_old))

        async def portal_new() -> None:
            await self.servers.sync_portal(new, old)

        async def portal_old() -> None:
            if old is None:
                await self.servers.stop_portal()
            else:
                await self.servers.sync_portal(old, new)

        if old is None or portal_listen(old) != portal_listen(new):
            steps.append(Step("portal", portal_new, portal_old))

        async def limits_new() -> None:
            self.servers.update_limits(new)

        async def limits_old() -> None:
            if old is not None:
                self.servers.update_limits(old)

        steps.append(Step("limits", limits_new, limits_old))
        return steps

    # -- healing -----------------------------------------------------------------------

    async def check_kernel(self) -> list[str]:
        """Rebuild what is missing from the kernel: the nftables table, the HTB trees.

        Returns the parts rebuilt (empty when all was in place). A repair that
        fails (the device is still gone) is logged once, at error, and tried
        again at the next turn; it raises nothing.
        """
        cfg = self.holder.current
        broken = []
        try:
            if not await self.shaping.intact(cfg):
                broken.append("shaping")
            if not await self.firewall.intact():
                broken.append("firewall")
        except DesanetError as exc:
            self._repair_failed(f"could not check the kernel state: {exc}")
            return []
        if not broken:
            self._repair_failing = None
            return []
        async with self.sessions.locks.exclusive():
            cfg = self.holder.current  # a converge may have run while we waited
            try:
                sessions = await self.sessions.active()
                if "shaping" in broken:
                    await self.shaping.converge(cfg, sessions)
                if "firewall" in broken:  # after the classes its map steers into
                    await self.firewall.apply(cfg, sessions, self.clock.now(),
                                              meters=await self._meters(cfg, sessions))
            except DesanetError as exc:
                self._repair_failed(f"the kernel lost our {' and '.join(broken)} state and "
                                    f"rebuilding it failed: {exc}; trying again")
                return []
        self._repair_failing = None
        log.warning("the kernel had lost our %s state (removed by hand, or an interface was "
                    "created again); rebuilt it for %d sessions", " and ".join(broken),
                    len(sessions))
        return broken

    def _repair_failed(self, message: str) -> None:
        if message != self._repair_failing:
            log.error("%s", message)
        else:
            log.debug("%s", message)
        self._repair_failing = message

    # -- timers ------------------------------------------------------------------------

    def every(self, name: str, interval: float, action: Callable[[], Awaitable[None]],
              first_in: float | None = None) -> None:
        """Register a periodic job (before :meth:`run` starts, or while it runs)."""
        due = self.clock.monotonic() + (interval if first_in is None else first_in)
        self.jobs.append(Job(name, interval, action, due))
        self._wake.set()

    def run_at(self, name: str, at: float) -> None:
        """Run job ``name`` at wall-clock time ``at`` when that comes before its next turn.

        Does nothing for a job not registered (yet). Does not block.
        """
        due = self.clock.monotonic() + max(0.0, at - self.clock.time())
        for job in self.jobs:
            if job.name == name and due < job.due:
                job.due, job.hurried = due, True
                self._wake.set()

    def run_soon(self, name: str) -> None:
        """Make job ``name`` due now (a netlink event says the uplink may have changed).
        Unknown names are ignored; a run in progress is not doubled."""
        for job in self.jobs:
            if job.name == name:
                job.due = self.clock.monotonic()
        self._wake.set()

    def wake(self) -> None:
        """Look at the jobs again now (a job was added, or a test moved the clock)."""
        self._wake.set()

    async def run(self) -> None:
        """Start due jobs forever (cancel the task to stop; running jobs are cancelled too).

        Each run of a job is its own task, so a slow one (a prefetch download, a
        probe waiting on a dead upstream) never delays the others: the sweep and
        the confirm deadline keep their time. A job still running when it is due
        again is skipped for that turn, never run twice at once.
        """
        try:
            while True:
                now = self.clock.monotonic()
                for job in self.jobs:
                    if job.due > now:
                        continue
                    hurried, job.hurried = job.hurried, False
                    job.due = now + job.interval
                    if job.running is not None and not job.running.done():
                        if hurried:  # a deadline waits on it: run it right after this one
                            job.due, job.hurried = now + HURRIED_RETRY, True
                            continue
                        log.debug("periodic job %s is still running; skipping a turn", job.name)
                        continue
                    job.running = asyncio.create_task(self._run_job(job), name=f"job-{job.name}")
                self._wake.clear()
                wait = min((j.due for j in self.jobs), default=now + 60.0) \
                    - self.clock.monotonic()
                if wait > 0:
                    await wait_event(self._wake, wait)
                else:
                    await asyncio.sleep(0)  # let the jobs just started run
        finally:
            running = [j.running for j in self.jobs if j.running is not None]
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    @staticmethod
    async def _run_job(job: Job) -> None:
        try:
            await job.action()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never let one job end the loop: expiry and idle cut-offs depend on it.
            log.exception("periodic job %s failed; retrying in %.0fs", job.name, job.interval)


class ConfigHolder:
    """The running config, read through :meth:`get` by every service."""

    def __init__(self, cfg: Config) -> None:
        self.current = cfg

    def get(self) -> Config:
        return self.current


def local_site_settings(cfg: Config) -> tuple[object, ...]:
    """Settings the government-services site takes when it starts (the rest it reads
    per request): a change of one restarts the site."""
    ls = cfg.local_services
    return (ls.enabled, ls.cache_size, ls.request_timeout)
