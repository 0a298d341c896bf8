"""The composition root: builds adapters -> services -> servers, runs, tears down.

The only module that knows the concrete adapters. Each part registers its
own cleanup on an ``AsyncExitStack`` as soon as it is acquired; stopping
unwinds the stack in reverse, and a cleanup that fails is logged while the
others still run (aiohttp's CleanupContext is the model).

On stop the firewall table stays in place: a stopped daemon fails closed
(unauthorized clients stay locked out) rather than open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.clock import Clock, SystemClock
from gateway.config import load_config
from gateway.config.pending import TrialRecord, TrialStore, recover_trial, recover_unreadable
from gateway.config.schema import Config
from gateway.control.api import create_control_app
from gateway.core.configuration import ConfigService
from gateway.core.events import ChangeSource, EventBus, ServiceHealthChanged
from gateway.core.garden import INTERVAL as GARDEN_INTERVAL
from gateway.core.garden import GardenService
from gateway.core.office import OfficeService
from gateway.core.ops import GatewayOps
from gateway.core.quota import TICK as QUOTA_TICK
from gateway.core.quota import QuotaService
from gateway.core.reconcile import (
    KERNEL_CHECK_INTERVAL,
    KERNEL_JOB,
    PRUNE_INTERVAL,
    SAMPLE_INTERVAL,
    SESSION_HISTORY,
    SWEEP_INTERVAL,
    ConfigHolder,
    Reconciler,
)
from gateway.core.returning import ReturningDevices
from gateway.core.sessions import SessionService
from gateway.core.trial import TrialService
from gateway.core.uplink import TICK, UplinkService, UplinkStatus
from gateway.core.vouchers import VoucherService
from gateway.daemon import eventloop, memory, systemd
from gateway.daemon.reboot import SystemReboot
from gateway.daemon.servers import DaemonServers, raise_file_limit
from gateway.errors import ConfigError, DesanetError, StoreError
from gateway.firewall.adapter import Firewall, KernelFirewall
from gateway.kernel import DatabaseWorker, KernelWorker
from gateway.netinfo.neighbours import KernelNeighbours, Neighbours
from gateway.netinfo.uplink import LinkEvents, UplinkProber
from gateway.services.dnsmasq import Dnsmasq
from gateway.services.garden_dns import GardenResolver
from gateway.services.offline_dns import OfflineDns
from gateway.services.prelogin_dns import DnsPair, prelogin_dnsmasq
from gateway.shaping.service import ShapingService
from gateway.shaping.tc import KernelShaper, Shaper
from gateway.store.backup import BACKUP_INTERVAL, list_backups
from gateway.store.db import AsyncStore
from gateway.store.heal import adopt_kernel_sessions
from gateway.store.health import DEGRADED
from gateway.store.office import AsyncOfficeStore, OfficeStore
from gateway.store.sqlite import Store
from gateway.store.telemetry_outbox import AsyncTelemetryOutbox, TelemetryOutbox
from gateway.telemetry.dispatch import Dispatcher
from gateway.telemetry.metrics import Readings
from gateway.telemetry.mqtt import connect as mqtt_connect
from gateway.telemetry.outbox import backlog_bound
from gateway.telemetry.seen import SeenCommands
from gateway.telemetry.service import TelemetryService
from gateway.telemetry.sysinfo import read_system
from gateway.telemetry.topics import Topics

log = logging.getLogger("desanet.daemon")

PROBE_INTERVAL = 30.0
PREFETCH_CHECK_INTERVAL = 60.0
TRIAL_CHECK_INTERVAL = 1.0


class Daemon:
    """One running gateway: ``await Daemon(path).run()``."""

    def __init__(self, config_path: str | None, cfg: Config | None = None,
                 clock: Clock | None = None) -> None:
        self.config_path = config_path
        self._initial = cfg
        self.clock = clock or SystemClock()
        self.stop_requested = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self.ops: GatewayOps | None = None
        self.config: ConfigService | None = None
        self.unreadable: tuple[str, str] | None = None  # (problem, where the refused file went)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
        async with contextlib.AsyncExitStack() as stack:
            await self.start(stack)
            await self.stop_requested.wait()
            systemd.notify("STOPPING=1")
            if self.ops is not None:
                self.ops.ready = False
        log.info("gateway stopped; firewall left in place (fail closed)")

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        clock = self.clock
        bus = EventBus(clock)
        cfg, text, recovered = await self._load_config()
        holder = ConfigHolder(cfg)
        state_dir, run_dir = Path(cfg.store.state_dir), Path(cfg.store.run_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(run_dir, 0o755)

        kernel = KernelWorker()
        _on_close(stack, "kernel worker", lambda: asyncio.to_thread(kernel.shutdown))
        database = DatabaseWorker()
        _on_close(stack, "database worker", lambda: asyncio.to_thread(database.shutdown))

        # A missing, corrupt or unwritable database never keeps the hotspot down: it is
        # healed around (store/heal.py) and reported in `desanet status`.
        DEGRADED.clear()
        store_file = await asyncio.to_thread(Store, state_dir / "desanet.db")
        store = AsyncStore(store_file, database)
        _on_close(stack, "store", self._closer(store))
        firewall = KernelFirewall(Firewall(), kernel)
        # Before the first converge writes the sets from the store: keep who the kernel
        # still lets through when the store was lost or restored from an older backup.
        await adopt_kernel_sessions(store, firewall, store_file.heal,
                                    cfg.portal.idle_timeout, clock.now())
        shaper = KernelShaper(Shaper(), kernel)
        _on_close(stack, "shaper", shaper.close)
        neighbours = KernelNeighbours(Neighbours(str(state_dir / "dnsmasq.leases")), kernel,
                                      lambda: holder.get().network.lan_interface)
        _on_close(stack, "neighbours", neighbours.close)
        await neighbours.start()  # the client map: one dump, then neighbour events
        dhcp = Dnsmasq(cfg.programs.dnsmasq, str(run_dir / "dnsmasq.conf"),
                       str(run_dir / "dnsmasq.pid"), state_dir=str(state_dir),
                       run_dir=str(run_dir))
        # dns: clients not logged in get the pre-login resolver (gateway/services/prelogin_dns.py)
        dns = DnsPair(dhcp, prelogin_dnsmasq(cfg.programs.dnsmasq, str(run_dir)))

        shaping = ShapingService(holder.get, shaper, clock)
        sessions = SessionService(holder.get, store, firewall, shaping, neighbours, clock, bus)
        vouchers = VoucherService(holder.get, store, sessions, clock, bus)
        servers = DaemonServers(holder.get, sessions, state_dir)
        # portalsec: room for the portal's connections under its cap, and a reserve beside it
        servers.file_limit = raise_file_limit()
        reconciler = Reconciler(holder, sessions, shaping, firewall, dns, servers, clock)
        quota = QuotaService(holder.get, store, firewall, clock, sessions.end,
                             sessions.note_quota_cut)
        reconciler.meters = quota.meters  # every rebuild of the ruleset keeps the meters
        config = ConfigService(holder, reconciler, bus, clock, state_dir, self.config_path, text)
        config.check_network = servers.check_network
        if recovered is not None:
            config.note_recovered_trial(recovered)
        if self.unreadable is not None:
            config.note_unreadable_file(*self.unreadable)
        self.config = config
        ops = GatewayOps(sessions, vouchers, shaping, config, bus, clock, firewall, dns,
                         neighbours, lambda: servers.local)
        self.ops = ops
        uplink = UplinkService(holder.get, UplinkProber(), bus, clock)
        ops.uplink = uplink
        ops.degraded = DEGRADED.json
        ops.reboot_action = SystemReboot()  # systemd, or DESANET_REBOOT_COMMAND (the lab)
        office_store = AsyncOfficeStore(await database.call(OfficeStore, store_file), database)
        ops.office = OfficeService(holder.get, office_store, clock, bus)
        trial = sessions.trial = TrialService(holder.get, office_store, clock)
        sessions.returning = ReturningDevices(holder.get, office_store, store, clock)
        servers.uplink_down = lambda: uplink.down
        uplink.listeners += [self._dns_follows_uplink(holder, dhcp),
                             self._local_follows_uplink(servers, bus)]

        # While the uplink is down, dnsmasq asks this responder for outside names.
        offline_dns = OfflineDns(lambda: holder.get().lan_ip)
        try:
            await offline_dns.start()
            dhcp.offline_server = offline_dns.server
            _on_close(stack, "offline DNS", offline_dns.close)
        except OSError as exc:
            log.error("cannot start the offline DNS responder (%s); while the uplink is "
                      "down, villagers will see DNS errors instead of the notice", exc)

        # Start-up goes through the same converge as every later change.
        _on_close(stack, "dnsmasq", dns.stop)
        _on_close(stack, "local services", servers.stop_local_services)
        _on_close(stack, "portal", servers.stop_portal)
        await config.start()

        await servers.start_control(create_control_app(ops), cfg.control.socket)
        _on_close(stack, "control socket", servers.stop_control)
        if cfg.telemetry.enabled:
            await self._start_telemetry(stack, holder, ops, database, state_dir)

        await shaping.sample()
        reconciler.every("sweep", SWEEP_INTERVAL, sessions.sweep)
        reconciler.every("samples", SAMPLE_INTERVAL, shaping.sample)
        reconciler.every("quota", QUOTA_TICK, quota.tick)  # docs/quota.md
        reconciler.every("prune", PRUNE_INTERVAL, self._pruner(store, clock), first_in=60.0)

        async def prune_trials() -> None:  # office: trial counts of days long past
            await trial.prune()

        reconciler.every("trial-prune", PRUNE_INTERVAL, prune_trials, first_in=90.0)
        reconciler.every("confirm-deadline", TRIAL_CHECK_INTERVAL, config.check_deadline)
        reconciler.every("uplink", TICK, uplink.tick, first_in=0.0)
        # dns: exact walled-garden names, resolved by the daemon and opened for their TTL
        garden = GardenService(holder.get, firewall,
                               GardenResolver(lambda: (holder.get().lan_ip, 53)),
                               dns.publish_garden, clock)
        reconciler.every("garden", GARDEN_INTERVAL, garden.tick, first_in=0.0)
        first_backup = BACKUP_INTERVAL if list_backups(store_file.backups, "desanet") else 5.0
        reconciler.every("backup", BACKUP_INTERVAL, self._backup(store), first_in=first_backup)

        async def check_kernel() -> None:
            await reconciler.check_kernel()

        # Puts back a flushed table or deleted trees (see Reconciler.check_kernel).
        reconciler.every(KERNEL_JOB, KERNEL_CHECK_INTERVAL, check_kernel)

        def link_changed() -> None:
            uplink.poke()
            reconciler.run_soon("uplink")
            reconciler.run_soon(KERNEL_JOB)  # an interface created again has no tree yet

        link_events = LinkEvents(link_changed)
        try:
            link_events.start()
            _on_close(stack, "link events", link_events.close)
        except OSError as exc:
            log.warning("no netlink link events (%s); the uplink is checked every %ss only",
                        exc, cfg.uplink.probe_interval)
        reconciler.every("upstream-probe", PROBE_INTERVAL, self._probe(servers, bus))
        reconciler.every("prefetch", PREFETCH_CHECK_INTERVAL, self._prefetch(servers),
                         first_in=1.0)
        _task_on_stack(stack, asyncio.create_task(reconciler.run(), name="reconcile"))
        interval = systemd.watchdog_interval()
        if interval:
            _task_on_stack(stack, asyncio.create_task(_watchdog(interval), name="watchdog"))

        ops.ready = True
        systemd.notify("READY=1\nSTATUS=portal and firewall up")
        log.info("gateway ready: portal %s, %d active sessions", cfg.portal_url,
                 await store.count_active(clock.now()))

    async def _start_telemetry(self, stack: contextlib.AsyncExitStack, holder: ConfigHolder,
                               ops: GatewayOps, database: DatabaseWorker, state_dir: Path) -> None:
        """Reports to the region's broker (docs/mqtt.md). Stops first (it is registered after
        the rest): the Will says offline while the gateway still serves. A broken outbox is
        logged and the gateway runs without telemetry, never the other way round."""
        try:
            box = await asyncio.to_thread(TelemetryOutbox, state_dir / "telemetry.db",
                                          lambda: backlog_bound(holder.get().telemetry))
        except StoreError as exc:
            log.error("telemetry is off: cannot open its outbox: %s", exc)
            return
        outbox = AsyncTelemetryOutbox(box, database)
        _on_close(stack, "telemetry outbox", outbox.close)
        async def readings() -> Readings:
            net = holder.get().network
            system = await asyncio.to_thread(read_system, state_dir,
                                             (net.lan_interface, net.wan_interface))
            return Readings(system, await ops.metrics())

        telemetry = TelemetryService(lambda: holder.get().telemetry, outbox, mqtt_connect, ops,
                                     lambda: ops.config.version, software_version(), self.clock,
                                     readings=readings)
        try:  # remote commands (docs/mqtt.md "Commands"), subscribed from the first connection
            seen = await asyncio.to_thread(SeenCommands, state_dir / "commands.json")
            telemetry.commands = dispatcher = Dispatcher(
                ops, seen, lambda: holder.get().telemetry.command_keys,
                lambda: Topics(holder.get().telemetry.topic_prefix, holder.get().telemetry.site_id),
                self.clock, ops.bus.publish, telemetry.rebirth,
                telemetry=lambda: holder.get().telemetry)
            # a cert.install trial a restart cut short goes on (gateway/telemetry/certtrial.py)
            resumed = await dispatcher.resume_cert_trial()
            if resumed is not None:
                telemetry.when_connected(resumed)
        except StoreError as exc:
            log.error("remote commands are off: %s", exc)
        try:
            await telemetry.start()
        except StoreError as exc:
            log.error("telemetry is off: %s", exc)
            return
        _on_close(stack, "telemetry", telemetry.stop)
        ops.telemetry = telemetry

    async def _load_config(self) -> tuple[Config, str | None, TrialRecord | None]:
        if self.config_path is None:
            assert self._initial is not None, "a config path or a Config object is needed"
            return self._initial, None, None
        path = Path(self.config_path)
        try:
            first = load_config(path)
        except ConfigError as exc:
            # A file that does not even parse (a hand edit gone wrong): start the last
            # config that ran rather than leave the village locked out.
            refused = await asyncio.to_thread(recover_unreadable, str(path))
            if refused is None:
                raise
            log.error("%s does not parse (%s); started the last config that ran instead, "
                      "the refused file is kept as %s", path, exc, refused)
            self.unreadable = (str(exc), refused)
            first = load_config(path)
        # A trial left on disk (power cut, kill -9 during the confirm window):
        # put the previous config file back before reading it.
        state_dir = Path(first.store.state_dir)
        recovered = await asyncio.to_thread(recover_trial, TrialStore(state_dir), str(path))
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        return load_config(path), text, recovered

    def _reload_on_signal(self) -> None:
        task = asyncio.create_task(self._reload_logged(), name="reload")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reload_logged(self) -> None:
        if self.ops is None:
            return
        try:
            await self.ops.reload(ChangeSource.SIGHUP)
        except DesanetError as exc:
            log.error("reload refused, keeping the running config: %s", exc)

    @staticmethod
    def _pruner(store: AsyncStore, clock: Clock) -> Callable[[], Awaitable[None]]:
        async def prune() -> None:
            gone = await store.prune_ended(clock.now() - SESSION_HISTORY)
            if gone:
                log.info("forgot %d sessions that ended over 90 days ago", gone)
        return prune

    @staticmethod
    def _backup(store: AsyncStore) -> Callable[[], Awaitable[None]]:
        async def backup() -> None:
            try:
                await store.backup()
            except StoreError as exc:
                DEGRADED.report("state database", store.path, "backup failing",
                                f"{exc}; the older backups are kept")
            else:
                DEGRADED.resolve(store.path, "backup failing")
        return backup

    @classmethod
    def _closer(cls, store: AsyncStore) -> Callable[[], Awaitable[None]]:
        """At a clean stop: a last backup, then close."""
        backup = cls._backup(store)

        async def close() -> None:
            await backup()
            await store.close()
        return close

    @staticmethod
    def _dns_follows_uplink(holder: ConfigHolder, dhcp: Dnsmasq
                            ) -> Callable[[UplinkStatus], Awaitable[None]]:
        """While the uplink is down, outside names resolve to the gateway (its web
        server then shows the "terputus" page); restored when it is back."""
        async def follow(st: UplinkStatus) -> None:
            await dhcp.set_uplink_down(st.down, holder.get())
        return follow

    @classmethod
    def _local_follows_uplink(cls, servers: DaemonServers, bus: EventBus
                              ) -> Callable[[UplinkStatus], Awaitable[None]]:
        """The catalog's badges follow the uplink at once, not at the next minute's
        probe; when it is back a probe round now also starts delivering queued forms."""
        probe = cls._probe(servers, bus)

        async def follow(st: UplinkStatus) -> None:
            local = servers.local
            if local is None:
                return
            if not st.down:
                await probe()
                return
            before = local.health_states()
            local.uplink_lost()
            for slug, state in local.health_states().items():
                if before.get(slug) != state:
                    bus.publish(ServiceHealthChanged(slug, state))
        return follow

    @staticmethod
    def _probe(servers: DaemonServers, bus: EventBus) -> Callable[[], Awaitable[None]]:
        async def probe() -> None:
            local = servers.local
            if local is None:
                return
            before = local.health_states()
            await local.probe()
            after = local.health_states()
            for slug, state in after.items():
                if before.get(slug) != state:
                    bus.publish(ServiceHealthChanged(slug, state))
        return probe

    @staticmethod
    def _prefetch(servers: DaemonServers) -> Callable[[], Awaitable[None]]:
        async def prefetch() -> None:
            if servers.local is not None:
                await servers.local.scheduled_prefetch()
        return prefetch


def _on_close(stack: contextlib.AsyncExitStack, what: str,
              close: Callable[[], Awaitable[None]]) -> None:
    """Register an async cleanup that logs its failure instead of skipping the rest."""
    async def run() -> None:
        try:
            await close()
        except Exception:
            log.exception("stopping %s failed; stopping the other parts anyway", what)
    stack.push_async_callback(run)


def _task_on_stack(stack: contextlib.AsyncExitStack, task: asyncio.Task[None]) -> None:
    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    stack.push_async_callback(cancel)


async def _watchdog(interval: float) -> None:
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("desanet")
    except PackageNotFoundError:
        return "unknown"


def run_daemon(config_path: str) -> None:
    memory.limit_arenas()  # before any thread starts
    factory, which = eventloop.choose()
    log.info("event loop: %s", which)
    eventloop.run(Daemon(config_path).run(), factory)
