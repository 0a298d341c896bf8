"""GatewayOps: the one door into the gateway for every transport.

The control API calls it today; MQTT commands and diagnostics will call the
same methods, so validation and errors exist once. Each method takes plain,
already-parsed values (the transport's typed request), calls the services,
and returns domain objects or read-model dicts. It raises the domain errors
of :mod:`gateway.errors`; each transport maps them in its own table.

Reads change nothing: counters come from the reconcile loop's last samples.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol

from gateway.clock import Clock
from gateway.config.schema import Config
from gateway.core.configuration import ApplyResult, ConfigService
from gateway.core.events import ChangeSource, EndReason, EventBus, Stamped
from gateway.core.office import OfficeService
from gateway.core.sessions import SessionService
from gateway.core.vouchers import VoucherService
from gateway.errors import Conflict, Refused
from gateway.model import Session, Voucher
from gateway.ports import DhcpServerPort, FirewallPort, NeighboursPort
from gateway.shaping.service import ShapingService
from gateway.timefmt import DEFAULT_TIMEZONE, iso

log = logging.getLogger("desanet.ops")


class LocalSitePort(Protocol):
    """The government-services site, when it runs."""

    def status_json(self) -> dict[str, Any]: ...

    async def prefetch(self, only_missing: bool = False) -> dict[str, Any]: ...


class UplinkReadPort(Protocol):
    """The uplink state (core/uplink.py UplinkService)."""

    def status_json(self) -> dict[str, Any]: ...


class RebootPort(Protocol):
    """What reboots the box (daemon/reboot.py: systemd, or a command the lab sets)."""

    def unavailable(self) -> str | None:
        """Why this box cannot be rebooted from here; None when it can."""
        ...

    async def reboot(self) -> None: ...


class TelemetryReadPort(Protocol):
    """Reports to the region's broker (telemetry/service.py TelemetryService)."""

    def status_json(self) -> dict[str, Any]: ...


def session_json(s: Session, now: int) -> dict[str, Any]:
    data = asdict(s)
    data["remaining"] = s.remaining(now)
    data["authorized"] = True
    return data


def used_up(v: Voucher, cfg: Config) -> bool:
    """Has the voucher spent its plan's time of use, or been cut for its quota? (Its
    validity may still run: `state` says "used_up" then, not "active".)"""
    if v.quota_state == "cut":
        return True
    plan = cfg.shaping.plans.get(v.plan) if v.plan else None
    limit = plan.time_of_use if plan is not None else None
    return limit is not None and v.used_seconds >= limit


def voucher_json(v: Voucher, now: int, tz: str = DEFAULT_TIMEZONE) -> dict[str, Any]:
    """Epoch seconds as stored, plus ``expires`` (None until first use) and each time in
    ISO 8601 with the site's offset."""
    data = asdict(v)
    data["devices"] = list(v.devices)
    data["state"] = v.state(now)
    data["expires"] = None if v.first_used is None else v.first_used + v.duration
    for key in ("created", "first_used", "expires"):
        data[f"{key}_iso"] = iso(data[key], tz)
    return data


class GatewayOps:
    def __init__(
        self,
        sessions: SessionService,
        vouchers: VoucherService,
        shaping: ShapingService,
        config: ConfigService,
        bus: EventBus,
        clock: Clock,
        firewall: FirewallPort,
        dhcp: DhcpServerPort,
        neighbours: NeighboursPort,
        local_site: Callable[[], LocalSitePort | None],
    ) -> None:
        self.sessions = sessions
        self.vouchers_svc = vouchers
        self.shaping = shaping
        self.config = config
        self.bus = bus
        self.clock = clock
        self._firewall = firewall
        self._dhcp = dhcp
        self._neighbours = neighbours
        self._local_site = local_site
        self.ready = False
        self.started_at = clock.now()
        self.uplink: UplinkReadPort | None = None  # uplink: set by the daemon
        self.telemetry: TelemetryReadPort | None = None  # set by the daemon when enabled
        self.reboot_action: RebootPort | None = None  # set by the daemon
        self.office: OfficeService | None = None  # office: report and import, set by the daemon
        # heals: what the daemon runs without (store/health.py DEGRADED), set by the daemon
        self.degraded: Callable[[], list[dict[str, Any]]] = list

    def now(self) -> int:
        return self.clock.now()

    # -- reads ------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        cfg = self.config.current
        now = self.now()
        return {
            "ready": self.ready,
            "site": cfg.site.name,
            "village": cfg.site.village,
            "uptime": now - self.started_at,
            "portal_url": cfg.portal_url,
            "lan_ip": cfg.lan_ip,
            "portal_mode": cfg.portal.mode,
            "sessions_active": await self.sessions.count_active(),
            "firewall": {"backend": self._firewall.backend},
            "dnsmasq": {"running": self._dhcp.running, "pid": self._dhcp.pid,
                        "restarts": self._dhcp.restarts},
            "config_path": self.config.path,
            "config": self.config.status_json(),
            "shaping": self.shaping.status_json(),
            "timezone": cfg.site.timezone,
            "uplink": self.uplink.status_json() if self.uplink is not None
            else {"state": "unknown", "since": None, "since_iso": None, "latency_ms": None},
            "telemetry": self.telemetry.status_json() if self.telemetry is not None
            else {"enabled": False},
            # What the daemon runs without (a damaged database healed around); [] when well.
            "degraded": [{**p, "since_iso": iso(p["since"], cfg.site.timezone)}
                         for p in self.degraded()],
        }

    async def metrics(self) -> dict[str, Any]:
        """What periodic telemetry reads (gateway/telemetry/metrics.py picks the counts out of
        it): the status, the local services' status, the number of DHCP leases and the
        portal's counters since the daemon started. It holds personal data (the services'
        failing URLs, ...): only the telemetry's allow-list of numbers leaves the gateway."""
        return {**await self.status(), "services": self.services_status(),
                "clients_connected": len(await self._neighbours.leases()),
                "portal": {"logins": self.sessions.logins,
                           "voucher_failures": self.sessions.voucher_failures}}

    async def clients(self) -> list[dict[str, Any]]:
        """Authorized sessions (with idle time left and shaping), then DHCP-only clients."""
        now = self.now()
        sessions = await self.sessions.active()
        active = await self._firewall.active_clients()  # idle = the client's own silence
        names = await self._neighbours.host_names()
        out = []
        for s in sessions:
            row = session_json(s, now)
            row["idle_left"] = active.get((s.mac, s.ip), 0)
            row["shaping"] = self.shaping.client_json(s)
            row["hostname"] = names.get(s.ip)
            out.append(row)
        known = {s.mac for s in sessions}
        for ip, mac in sorted((await self._neighbours.leases()).items()):
            if mac not in known:
                out.append({"mac": mac, "ip": ip, "authorized": False, "hostname": names.get(ip)})
        return out

    def shaping_status(self) -> dict[str, Any]:
        return self.shaping.status_json()

    def services_status(self) -> dict[str, Any]:
        site = self._local_site()
        return site.status_json() if site is not None else {"enabled": False}

    async def vouchers(self, batch: str | None = None) -> list[Voucher]:
        return await self.vouchers_svc.list(batch)

    def events_since(self, seq: int) -> list[Stamped]:
        return self.bus.since(seq)

    async def wait_events(self, seq: int, timeout: float) -> list[Stamped]:
        return await self.bus.wait_since(seq, timeout)

    # -- clients ---------------------------------------------------------------------------

    async def authorize(self, mac: str, ip: str | None, duration: int | None,
                        plan: str | None, force: bool = False) -> Session:
        """Raises Invalid, NotFound, PortalDenied, FirewallError/ShapingError, and
        Refused("voucher_session") when ``mac`` is online on a voucher and not ``force``:
        an operator's grant must not silently cut short the time a villager paid for."""
        return await self.sessions.authorize(mac, ip, "manual", duration=duration, plan=plan,
                                             keep_voucher=not force)

    async def deauthorize(self, mac: str) -> Session:
        """Raises NotFound."""
        return await self.sessions.end(mac, EndReason.DEAUTH)

    async def change_plan(self, mac: str, plan: str | None) -> Session:
        """Raises Invalid, NotFound."""
        return await self.sessions.change_plan(mac, plan)

    # -- vouchers --------------------------------------------------------------------------

    async def create_vouchers(self, count: int, duration: int, max_devices: int,
                              plan: str | None, batch: str | None, name: str | None = None,
                              seller: str | None = None) -> tuple[str, list[Voucher]]:
        return await self.vouchers_svc.create_batch(count, duration, max_devices, plan, batch,
                                                    name, seller)

    async def revoke_voucher(self, code: str) -> Voucher:
        """Raises VoucherError("unknown")."""
        return await self.vouchers_svc.revoke(code)

    async def release_voucher(self, code: str, mac: str | None) -> Voucher:
        """Raises VoucherError("unknown")."""
        return await self.vouchers_svc.release(code, mac)

    # -- local services ----------------------------------------------------------------------

    async def prefetch(self) -> dict[str, Any]:
        site = self._local_site()
        if site is None:
            raise Conflict("local_services.enabled is false; nothing to prefetch")
        return await site.prefetch()

    # -- config ------------------------------------------------------------------------------

    def config_show(self) -> dict[str, Any]:
        return {"version": self.config.version, "path": self.config.path,
                "config": self.config.current.model_dump(mode="json"),
                "text": self.config.text or ""}

    def config_diff(self, text: str) -> list[dict[str, Any]]:
        return self.config.diff(text)

    async def config_apply(self, text: str, confirm: int | None, by: str,
                           connection: object | None = None,
                           source: ChangeSource = ChangeSource.CLI,
                           expected_version: str | None = None) -> ApplyResult:
        """Raises Conflict when ``expected_version`` is given and the running config is
        another (an edit made on a stale copy), and whatever ConfigService.apply raises."""
        if expected_version is not None and expected_version != self.config.version:
            raise Conflict(f"the running config is version {self.config.version}, not "
                           f"{expected_version} as expected; nothing was changed (read the "
                           "config again and edit that)")
        return await self.config.apply(text, confirm, by, source, connection)

    async def config_confirm(self, by: str, connection: object | None = None,
                             source: ChangeSource = ChangeSource.CLI,
                             terminal_proof: bool = False) -> str:
        return await self.config.confirm(by, connection, source, terminal_proof)

    async def config_rollback(self, by: str) -> str:
        return await self.config.rollback(by, ChangeSource.CLI, "asked by an operator")

    async def reload(self, source: ChangeSource = ChangeSource.CLI, by: str = "") -> ApplyResult:
        return await self.config.reload(source, by)

    # -- the box ---------------------------------------------------------------------------

    def reboot_check(self) -> None:
        """Raises Refused("reboot_unavailable") when nothing can reboot this box."""
        why = "the daemon was started without a way to reboot" if self.reboot_action is None \
            else self.reboot_action.unavailable()
        if why is not None:
            raise Refused("reboot_unavailable", f"cannot reboot: {why}")

    async def reboot(self, by: str) -> None:
        """Reboot the box now (a transport answers its caller first). Raises Refused."""
        self.reboot_check()
        assert self.reboot_action is not None
        log.warning("rebooting the box, asked by %s", by or "?")
        await self.reboot_action.reboot()
