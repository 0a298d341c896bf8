"""The gateway daemon: owns the store, the firewall, dnsmasq and the portal.

Theory of operation
-------------------
SQLite is the source of truth for sessions; the kernel sets are a cache of
it. Every change is written to SQLite first and then to the kernel:

* login:  store.start_session -> firewall.authorize. A crash in between is
          healed at start, which rebuilds the kernel sets from the store.
* logout: store.end_session -> firewall.revoke. A crash in between leaves a
          kernel entry the store no longer backs; the start-up rebuild (and
          the periodic sweep) removes it, so nobody regains access.

Start-up, SIGHUP and the periodic sweep all go through the same
reconciliation (:meth:`Gateway.apply_firewall` / :meth:`Gateway.sweep`).
On stop the firewall table stays in place: a stopped daemon fails closed
(unauthorized clients stay locked out) rather than open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.cache.service import LocalServices
from gateway.config import load_config
from gateway.config.schema import Config
from gateway.daemon import systemd
from gateway.daemon.neighbours import Neighbours
from gateway.daemon.sessions import idle_sessions, new_session, stale_kernel_entries
from gateway.daemon.shaping import ShapingService
from gateway.errors import ConfigError, ControlError, DesanetError, ServiceError
from gateway.firewall import Firewall
from gateway.model import Session, SessionSource
from gateway.netlink import NetlinkThread
from gateway.portal.backend import ClientView, PortalDenied
from gateway.services.dnsmasq import Dnsmasq, render_dnsmasq_conf
from gateway.store import Store

log = logging.getLogger("desanet.daemon")

SWEEP_INTERVAL = 5.0
SESSION_HISTORY = 90 * 86400  # ended sessions are kept this long (who was online when)
PRUNE_EVERY = 3600.0


def enable_ipv4_forwarding() -> None:
    try:
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    except OSError as exc:
        raise ServiceError(f"cannot enable IPv4 forwarding: {exc}; run as root") from exc


class Gateway:
    def __init__(self, cfg: Config, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.state_dir = Path(cfg.store.state_dir)
        self.run_dir = Path(cfg.store.run_dir)
        self.store = Store(self.state_dir / "desanet.db")
        self.firewall = Firewall()
        self.neighbours = Neighbours(str(self.state_dir / "dnsmasq.leases"))
        self.netlink = NetlinkThread()
        self.shaping = ShapingService(lambda: self.cfg, self.netlink)
        self.local: LocalServices | None = None
        self.dnsmasq = Dnsmasq(
            cfg.programs.dnsmasq,
            str(self.run_dir / "dnsmasq.conf"),
            str(self.run_dir / "dnsmasq.pid"),
        )
        self.ready = False
        self.started_at = int(time.time())
        self._portal_runner: web.AppRunner | None = None
        self._control_runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    # -- clock ------------------------------------------------------------

    def now(self) -> int:
        return int(time.time())

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o755)
        # Classes first, then the firewall that steers packets into them.
        await self.shaping.reconcile(self.store.active_sessions(self.now()))
        self.apply_firewall()
        enable_ipv4_forwarding()  # only now: the firewall is in place, so it fails closed
        self.dnsmasq.write_config(
            render_dnsmasq_conf(self.cfg, str(self.state_dir), str(self.run_dir))
        )
        await self.dnsmasq.start()
        await self._sync_local_services()
        await self._start_portal()
        await self._start_control()
        self._tasks.append(asyncio.create_task(self._sweep_loop(), name="sweep"))
        interval = systemd.watchdog_interval()
        if interval:
            self._tasks.append(asyncio.create_task(self._watchdog(interval), name="watchdog"))
        self.ready = True
        systemd.notify("READY=1\nSTATUS=portal and firewall up")
        log.info(
            "gateway ready: portal %s, %d active sessions",
            self.cfg.portal_url, len(self.store.active_sessions(self.now())),
        )

    async def stop(self) -> None:
        systemd.notify("STOPPING=1")
        self.ready = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for runner in (self._portal_runner, self._control_runner):
            if runner is not None:
                await runner.cleanup()
        if self.local is not None:
            await self.local.stop()
        await self.dnsmasq.stop()
        await self.netlink.call(self.neighbours.close)
        await self.netlink.call(self.shaping.close)
        self.netlink.shutdown()
        self.store.close()
        log.info("gateway stopped; firewall left in place (fail closed)")

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.stop()

    def _reload_on_signal(self) -> None:
        task = asyncio.create_task(self._reload_logged(), name="reload")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except ControlError:
            pass  # already logged by reload()
        except DesanetError as exc:
            log.error("reload failed: %s", exc)

    async def reload(self, cfg: Config | None = None) -> dict[str, Any]:
        """Apply a new config; a bad one is refused and the running one stays."""
        if cfg is None:
            if not self.config_path:
                raise ControlError("no config file to reload from", 409)
            try:
                cfg = load_config(self.config_path)
            except ConfigError as exc:
                log.error("reload refused, keeping the running config: %s", exc)
                raise ControlError(
                    f"reload refused, keeping the running config: {exc}", 422
                ) from exc
        async with self._lock:
            old = self.cfg
            hostnames_same = old.walled_garden.hostnames == cfg.walled_garden.hostnames
            self.cfg = cfg
            try:
                await self.shaping.reconcile(self.store.active_sessions(self.now()), old)
                self.apply_firewall(carry_garden=hostnames_same)
            except DesanetError:
                self.cfg = old
                await self.shaping.reconcile(self.store.active_sessions(self.now()), cfg)
                self.apply_firewall()
                raise
            conf = render_dnsmasq_conf(cfg, str(self.state_dir), str(self.run_dir))
            if self.dnsmasq.write_config(conf):
                await self.dnsmasq.restart()
            await self._stop_portal()
            await self._sync_local_services()
            try:
                await self._start_portal()
            except ServiceError as exc:
                # e.g. a new portal port that is taken: serve the old one again
                # rather than leave villagers with no portal at all.
                log.error("reload refused, keeping the running config: %s", exc)
                self.cfg = old
                await self.shaping.reconcile(self.store.active_sessions(self.now()), cfg)
                self.apply_firewall()
                if self.dnsmasq.write_config(
                    render_dnsmasq_conf(old, str(self.state_dir), str(self.run_dir))
                ):
                    await self.dnsmasq.restart()
                await self._sync_local_services()
                await self._start_portal()
                raise ControlError(
                    f"reload refused, keeping the running config: {exc}", 422
                ) from exc
        log.info("config reloaded")
        return {"reloaded": True}

    # -- reconciliation -----------------------------------------------------

    def apply_firewall(self, carry_garden: bool = True) -> None:
        now = self.now()
        self.store.expire_sessions(now)
        self.firewall.apply(self.cfg, self.store.active_sessions(now), now, carry_garden)

    async def sweep(self) -> None:
        """End expired and idle sessions; drop kernel entries the store does not back."""
        async with self._lock:
            now = self.now()
            for s in self.store.expire_sessions(now):
                await self._cut_off(s)
                log.info("session of %s (%s) expired", s.mac, s.ip)
            sessions = self.store.active_sessions(now)
            for s in idle_sessions(sessions, self.firewall.active_clients(), now):
                self.store.end_session(s.mac, now, "idle")
                await self._cut_off(s)
                log.info("session of %s (%s) ended: idle", s.mac, s.ip)
            live = self.store.active_sessions(now)
            live_ips = {s.ip for s in live}
            for mac, ip in stale_kernel_entries(live, self.firewall.authorized_clients()):
                # The address's class and map entry belong to a live session if any.
                cls = None if ip in live_ips else self.shaping.ip_class_text(ip)
                self.firewall.revoke(mac, ip, cls)
                log.warning("removed kernel authorization with no session: %s %s", mac, ip)

    async def _cut_off(self, session: Session) -> None:
        """Kernel side of ending a session: firewall first, then its classes.

        Shaping is per address, so when another MAC's live session now holds
        this address (its DHCP lease moved), that session keeps the class and
        the map entry; only this MAC's authorization goes.
        """
        if self.store.ip_taken(session.ip, session.mac, self.now()):
            self.firewall.revoke(session.mac, session.ip, None)
            return
        self.firewall.revoke(session.mac, session.ip, self.shaping.class_text(session))
        await self.shaping.remove(session)

    async def _sweep_loop(self) -> None:
        last_prune = 0.0
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.sweep()
                await self.shaping.sample()
                if time.monotonic() - last_prune > PRUNE_EVERY:
                    last_prune = time.monotonic()
                    gone = self.store.prune_ended(self.now() - SESSION_HISTORY)
                    if gone:
                        log.info("forgot %d sessions that ended over 90 days ago", gone)
            except DesanetError as exc:
                log.error("sweep failed: %s", exc)
            except Exception:
                # Never let a bug end the loop: expiry and idle cut-offs depend on it.
                log.exception("sweep failed unexpectedly; retrying in %.0fs", SWEEP_INTERVAL)

    async def _watchdog(self, interval: float) -> None:
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # -- sessions -------------------------------------------------------------

    async def authorize(
        self,
        mac: str,
        ip: str,
        source: SessionSource,
        duration: int | None = None,
        plan: str | None = None,
        voucher_code: str | None = None,
    ) -> Session:
        async with self._lock:
            now = self.now()
            current = self.store.active_session(mac, now)
            if mac in self.cfg.access.blocked_macs:
                raise PortalDenied("blocked")
            if current is None and self.store.count_active(now) >= self.cfg.portal.max_clients:
                raise PortalDenied("full")
            voucher = None
            if voucher_code is not None:
                voucher = self.store.redeem_voucher(voucher_code, mac, now)
            self._check_plan(plan)
            session = new_session(self.cfg, mac, ip, now, source, voucher, duration, plan)
            self.store.start_session(session)
            if current is not None and current.ip != ip:
                await self._cut_off(current)
            try:
                await self.shaping.add(session)
                self.firewall.authorize(session, now, self.shaping.class_text(session))
            except DesanetError:
                self.store.end_session(mac, now, "kernel refused")
                await self._cut_off(session)
                raise
            log.info("authorized %s (%s) via %s until %s", mac, ip, source, session.expires)
            return session

    async def deauthorize(self, mac: str, reason: str) -> Session | None:
        async with self._lock:
            session = self.store.end_session(mac, self.now(), reason)
            if session is not None:
                await self._cut_off(session)
                log.info("deauthorized %s (%s): %s", mac, session.ip, reason)
            return session

    async def change_plan(self, mac: str, plan: str | None) -> Session:
        """Move a live client to another plan; its connections are not touched."""
        async with self._lock:
            self._check_plan(plan)
            session = self.store.change_plan(mac, plan, self.now())
            if session is None:
                raise ControlError(f"{mac} has no active session", 404)
            await self.shaping.add(session)
            log.info("plan of %s is now %s", mac, plan or "default")
            return session

    def _check_plan(self, plan: str | None) -> None:
        if plan is not None and plan not in self.cfg.shaping.plans:
            raise ControlError(
                f"plan {plan!r} is not defined in shaping.plans; known plans: "
                f"{', '.join(self.cfg.shaping.plans) or '(none)'}", 422
            )

    # -- PortalBackend ------------------------------------------------------------

    async def identify(self, ip: str) -> ClientView:
        mac = await self.netlink.call(self.neighbours.mac_of, ip)
        session = self.store.active_session(mac, self.now()) if mac else None
        if session is not None and session.ip != ip:
            session = None
        return ClientView(ip=ip, mac=mac, session=session)

    async def login_terms(self, client: ClientView) -> Session:
        if self.cfg.portal.mode == "voucher":
            raise PortalDenied("mode")
        if client.mac is None:
            raise PortalDenied("no_mac")
        return await self.authorize(client.mac, client.ip, "terms")

    async def login_voucher(self, client: ClientView, code: str) -> Session:
        if self.cfg.portal.mode == "terms":
            raise PortalDenied("mode")
        if client.mac is None:
            raise PortalDenied("no_mac")
        return await self.authorize(client.mac, client.ip, "voucher", voucher_code=code)

    async def logout(self, client: ClientView) -> None:
        if client.mac is not None:
            await self.deauthorize(client.mac, "logout")

    # -- servers ------------------------------------------------------------------

    async def _sync_local_services(self) -> None:
        """Start or stop the government-services site to match the config."""
        enabled = self.cfg.local_services.enabled
        if enabled and self.local is None:
            self.local = LocalServices(lambda: self.cfg, self.state_dir)
            await self.local.start()
        elif not enabled and self.local is not None:
            await self.local.stop()
            self.local = None

    async def _start_portal(self) -> None:
        from gateway.portal.app import create_portal_app

        local_hosts = {}
        if self.local is not None:
            local_hosts[self.cfg.local_services.hostname] = self.local.handle
        app = create_portal_app(self.cfg, self, local_hosts=local_hosts)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for port in (self.cfg.portal.http_port, self.cfg.portal.redirect_port):
            try:
                await web.TCPSite(runner, self.cfg.lan_ip, port, reuse_address=True).start()
            except OSError as exc:
                await runner.cleanup()
                raise ServiceError(
                    f"the portal cannot listen on {self.cfg.lan_ip}:{port}: "
                    f"{exc.strerror or exc}; expected a free port on the LAN address, "
                    "choose another portal.http_port / portal.redirect_port or stop "
                    "what uses it"
                ) from exc
        self._portal_runner = runner

    async def _stop_portal(self) -> None:
        if self._portal_runner is not None:
            await self._portal_runner.cleanup()
            self._portal_runner = None

    async def _start_control(self) -> None:
        from gateway.control.server import create_control_app

        path = Path(self.cfg.control.socket)
        prepare_socket_dir(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        runner = web.AppRunner(create_control_app(self), access_log=None)
        await runner.setup()
        # The umask makes the socket 0600 at bind(): no moment with wider
        # permissions, and no chmod by path that a swapped-in symlink could redirect.
        old_umask = os.umask(0o177)
        try:
            # A deep backlog: bursts of CLI/TUI/bench calls wait instead of failing.
            await web.UnixSite(runner, str(path), backlog=1024).start()
        except OSError as exc:
            await runner.cleanup()
            raise ServiceError(
                f"cannot create the control socket {path}: {exc.strerror or exc}; "
                "is another desanet daemon running with the same control.socket?"
            ) from exc
        finally:
            os.umask(old_umask)
        self._control_runner = runner


def prepare_socket_dir(socket_path: Path) -> None:
    """Make sure only root can replace the control socket.

    Anyone who can write to the socket's directory can swap the socket for
    their own between our bind() and a CLI's connect(), and then read or
    answer what root sends (vouchers, auth calls). So the directory is created
    0755 and an existing one must not be writable by group or others.
    """
    parent = socket_path.parent
    parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        st = os.lstat(parent)
    except OSError as exc:
        raise ServiceError(f"cannot inspect {parent}: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ServiceError(
            f"control.socket directory {parent} is not a plain directory (found a symlink or "
            "file); expected a root-owned directory such as /run/desanet"
        )
    if st.st_mode & 0o022 or st.st_uid != os.geteuid():
        raise ServiceError(
            f"control.socket directory {parent} has mode {stat.S_IMODE(st.st_mode):04o}, owner "
            f"uid {st.st_uid}; expected a directory only this user (root) can write to, e.g. "
            "/run/desanet/control.sock, or run chmod go-w on it"
        )


