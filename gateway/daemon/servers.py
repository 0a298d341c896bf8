"""What the daemon hosts: the portal listeners, the control socket, the local site.

Implements :class:`gateway.core.reconcile.ServersPort`: the reconciler asks
to (re)start the portal only when its address or ports change, and to
start or stop the government-services site when it is switched on or off.
The portal app reads the running config per request, so any other change
reaches villagers without dropping their connections or resetting the
voucher rate limiter (one limiter lives here for the daemon's lifetime).

Slow or many connections (portalsec, Step 6): the portal's server closes a
connection whose request headers have not all come within
``portal.header_timeout`` (aiohttp's keep-alive timer, which runs from the
connect), a stalled body is cut (:mod:`gateway.portal.guard`), nftables caps
each client's open connections (``portal.max_connections_per_client``), and
:class:`CappedRunner` closes new portal connections at accept above
``portal.max_connections`` — which is itself kept under half of the file-handle
limit less a reserve (a portal connection may open an upstream one), so the
control socket, the store and dnsmasq's pipes always find a handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import ssl
import stat
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.cache.service import LocalServices
from gateway.config.schema import Config
from gateway.core.reconcile import local_site_settings, portal_listen
from gateway.errors import ServiceError
from gateway.portal.app import Handler, create_portal_app
from gateway.portal.backend import PortalBackend
from gateway.portal.csrf import FormTokens
from gateway.portal.passthrough import Passthrough
from gateway.portal.ratelimit import RateLimiter
from gateway.portal.tls import TlsError, server_context, tls_problems, warnings_for

log = logging.getLogger("desanet.servers")

PORTAL_BACKLOG = 1024  # pending connections per portal port (somaxconn is 4096)
FILE_LIMIT = 65536  # RLIMIT_NOFILE the daemon raises its soft limit to (within the hard one)
FILE_RESERVE = 512  # handles never given to portal connections: control socket, store, dnsmasq
LINGER = 2.0  # seconds aiohttp reads the unread rest of a body before closing


def raise_file_limit(target: int = FILE_LIMIT) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``target`` (never above the hard limit,
    never lower); return the soft limit in force. Does not block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, want, exc)
    return soft


def connection_cap(cfg: Config, soft_limit: int | None = None) -> int:
    """Portal connections served at once: the config's cap, kept under half of what
    the file-handle limit leaves after the reserve (each may proxy one upstream)."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY:
        return cfg.portal.max_connections
    return max(16, min(cfg.portal.max_connections, (soft_limit - FILE_RESERVE) // 2))


class _Counted(asyncio.Protocol):
    """Passes everything to aiohttp's handler; leaves the live set when the connection ends."""

    def __init__(self, inner: asyncio.Protocol, live: weakref.WeakSet[_Counted]) -> None:
        self.inner = inner
        self.live = live
        live.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self)
        self.inner.connection_lost(exc)


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A reset at once: the handle is free again before the next accept. (uvloop's
        # transports are not asyncio.Transport subclasses: ask for abort, not the type.)
        abort = getattr(transport, "abort", None)
        if abort is not None:
            abort()


class CappedFactory:
    """The protocol factory the portal's sites listen with: aiohttp's server while
    fewer than ``cap()`` connections are open (a weak set, so a connection whose TLS
    handshake failed never stays counted), else a protocol that resets the connection."""

    def __init__(self, server: web.Server, cap: Callable[[], int]) -> None:
        self.server = server
        self.cap = cap
        self.live: weakref.WeakSet[_Counted] = weakref.WeakSet()
        self.refused = 0

    @property
    def open(self) -> int:
        return len(self.live)

    def __call__(self) -> asyncio.Protocol:
        if len(self.live) >= self.cap():
            self.refused += 1
            log.warning("portal connection refused: %d open, the cap (portal.max_connections "
                        "and the open-files limit) is %d", len(self.live), self.cap())
            return _Refused()
        return _Counted(self.server(), self.live)


class CappedRunner(web.AppRunner):
    """An AppRunner whose sites accept through one :class:`CappedFactory`."""

    def __init__(self, app: web.Application, cap: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._cap = cap
        self.factory: CappedFactory | None = None

    @property
    def server(self) -> web.Server | None:
        inner = super().server
        if inner is None:
            return None
        if self.factory is None or self.factory.server is not inner:
            self.factory = CappedFactory(inner, self._cap)
        # Sites only call it to create connections: the wrapper stands in for the Server.
        return self.factory  # type: ignore[return-value]


def enable_ipv4_forwarding() -> None:
    try:
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    except OSError as exc:
        raise ServiceError(f"cannot enable IPv4 forwarding: {exc}; run as root") from exc


class DaemonServers:
    def __init__(self, config: Callable[[], Config], backend: PortalBackend,
                 state_dir: Path) -> None:
        self._config = config
        self._backend = backend
        self._state_dir = state_dir
        self.local: LocalServices | None = None
        self._local_settings: tuple[object, ...] | None = None
        self._portal: web.AppRunner | None = None
        self._control: web.AppRunner | None = None
        self._limiter: RateLimiter | None = None
        self._village: RateLimiter | None = None
        self._tokens = FormTokens()  # one secret per daemon run: pages keep working on reload
        self.file_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # set by the daemon
        self.uplink_down: Callable[[], bool] = lambda: False  # set by the daemon (uplink)

    # -- ServersPort --------------------------------------------------------------------

    def enable_forwarding(self) -> None:
        enable_ipv4_forwarding()

    async def sync_local_services(self, cfg: Config) -> None:
        wanted = local_site_settings(cfg) if cfg.local_services.enabled else None
        if self.local is not None and wanted == self._local_settings:
            return
        await self.stop_local_services()
        if wanted is not None:
            local = await asyncio.to_thread(LocalServices, self._config, self._state_dir, cfg)
            await local.start()
            self.local, self._local_settings = local, wanted

    def check_network(self, cfg: Config) -> list[tuple[str, Any, str]]:
        """Interfaces and the LAN address the config names, as this box has them.

        Blocks briefly (getifaddrs): call it on a thread. Each problem is
        (field, found, expected) for an Invalid error.
        """
        import netifaces

        present = set(netifaces.interfaces())
        problems: list[tuple[str, Any, str]] = []
        net = cfg.network
        for field, name in (("network.lan_interface", net.lan_interface),
                            ("network.wan_interface", net.wan_interface)):
            if name not in present:
                problems.append((field, name, "an interface this gateway has: "
                                 + ", ".join(sorted(present))))
        if net.lan_interface in present:
            addrs = {a.get("addr") for a in
                     netifaces.ifaddresses(net.lan_interface).get(netifaces.AF_INET, [])}
            if cfg.lan_ip not in addrs:
                problems.append(("network.lan_address", str(net.lan_address),
                                 f"an address {net.lan_interface} has "
                                 f"({', '.join(sorted(a for a in addrs if a)) or 'none'})"))
        # The certificate and key files, as this box has them (readable, PEM, matching).
        problems += tls_problems(cfg.portal)
        return problems

    async def sync_portal(self, cfg: Config, previous: Config | None) -> None:
        if self._portal is not None and previous is not None \
                and portal_listen(previous) == portal_listen(cfg):
            return
        await self.stop_portal()
        if self._limiter is None:
            self._limiter = RateLimiter(limit=cfg.portal.voucher_attempts_per_minute, window=60.0)
        if self._village is None:
            self._village = RateLimiter(limit=cfg.portal.voucher_failures_per_minute,
                                        window=60.0, max_keys=1)
        app = create_portal_app(self._config, self._backend, limiter=self._limiter,
                                village=self._village, tokens=self._tokens,
                                local_hosts=self.local_hosts,
                                uplink_down=lambda: self.uplink_down(),
                                passthrough=self._passthrough())
        try:
            ssl_context = await self._tls_context(cfg)
        except ServiceError as exc:
            if previous is not None:
                raise  # an apply: refused, the running portal stays
            # At start HTTPS is optional, the portal is not: a certificate file that went
            # missing since it last ran must not lock the village out of the http portal.
            log.error("%s; serving the portal over http only", exc)
            ssl_context = None
        # keepalive_timeout also bounds the wait for a request's headers (see the docstring).
        runner = CappedRunner(app, lambda: connection_cap(self._config(), self.file_limit),
                              access_log=None, keepalive_timeout=float(cfg.portal.header_timeout),
                              lingering_time=LINGER)
        await runner.setup()
        listeners: list[tuple[int, ssl.SSLContext | None]] = [
            (cfg.portal.http_port, None), (cfg.portal.redirect_port, None)]
        if ssl_context is not None:
            listeners.append((cfg.portal.https_port, ssl_context))
        for port, context in listeners:
            try:
                # backlog: phones arrive together (a bus, a meeting); aiohttp's default of 128
                # drops the rest's SYNs and they wait 1 s for the retransmission.
                await web.TCPSite(runner, cfg.lan_ip, port, reuse_address=True,
                                  ssl_context=context, backlog=PORTAL_BACKLOG).start()
            except OSError as exc:
                await runner.cleanup()
                raise ServiceError(
                    f"the portal cannot listen on {cfg.lan_ip}:{port}: "
                    f"{exc.strerror or exc}; expected a free port on the LAN address, "
                    "choose another portal.http_port / portal.redirect_port / "
                    "portal.https_port or stop what uses it"
                ) from exc
        self._portal = runner

    @staticmethod
    async def _tls_context(cfg: Config) -> ssl.SSLContext | None:
        """The HTTPS listener's context when portal.tls_* are set (files read on a thread).

        Raises ServiceError naming the field; a certificate for another name only warns.
        """
        if not cfg.portal.https:
            return None
        try:
            context = await asyncio.to_thread(server_context, cfg.portal)
            for warning in await asyncio.to_thread(warnings_for, cfg.portal):
                log.warning("%s", warning)
        except TlsError as exc:
            raise ServiceError(f"the portal cannot serve HTTPS: {exc}") from exc
        log.info("portal HTTPS on %s:%d with %s", cfg.lan_ip, cfg.portal.https_port,
                 cfg.portal.tls_certificate)
        return context

    def update_limits(self, cfg: Config) -> None:
        """Settings the portal reads from objects it keeps (applied without restarts)."""
        if self._limiter is not None:
            self._limiter.limit = cfg.portal.voucher_attempts_per_minute
        if self._village is not None:
            self._village.limit = cfg.portal.voucher_failures_per_minute

    def local_hosts(self) -> Mapping[str, Handler]:
        local = self.local
        if local is None:
            return {}
        return {self._config().local_services.hostname.lower(): local.handle}

    def _passthrough(self) -> Passthrough:
        """stale: the relay for requests a stale pre-login DNS answer sent to the portal;
        names resolved by the full LAN resolver, as the walled garden's are."""
        from gateway.services.garden_dns import GardenResolver

        return Passthrough(GardenResolver(lambda: (self._config().lan_ip, 53)),
                           lan=lambda: self._config().network.lan_address.network,
                           own_addresses=own_addresses,
                           test_networks=lambda: self._config().portal.relay_test_networks)

    # -- life cycle -------------------------------------------------------------------------

    async def stop_portal(self) -> None:
        if self._portal is not None:
            runner, self._portal = self._portal, None
            await runner.cleanup()

    async def stop_local_services(self) -> None:
        if self.local is not None:
            local, self.local, self._local_settings = self.local, None, None
            await local.stop()

    async def start_control(self, app: web.Application, socket_path: str) -> None:
        path = Path(socket_path)
        prepare_socket_dir(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        runner = web.AppRunner(app, access_log=None)
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
        self._control = runner

    async def stop_control(self) -> None:
        if self._control is not None:
            runner, self._control = self._control, None
            await runner.cleanup()


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


_OWN_FOR = 30.0  # seconds a list of the gateway's own addresses is reused
_own: tuple[float, frozenset[str]] = (-_OWN_FOR, frozenset())


def own_addresses() -> frozenset[str]:
    """stale: every IPv4 address of this box (the relay never connects to one of them);
    getifaddrs is quick, and read at most every ``_OWN_FOR`` seconds."""
    import time

    import netifaces

    global _own
    now = time.monotonic()
    if now - _own[0] >= _OWN_FOR:
        found = {a["addr"] for i in netifaces.interfaces()
                 for a in netifaces.ifaddresses(i).get(netifaces.AF_INET, []) if a.get("addr")}
        _own = (now, frozenset(found))
    return _own[1]
