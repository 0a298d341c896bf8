"""One builder for the core's unit tests: every service wired to the fakes.

``build_core(tmp_path)`` composes what ``gateway/daemon/main.py`` composes,
with the fakes beside the adapters instead of the kernel, SQLite and
dnsmasq, a :class:`FakeClock`, and a real config file in ``tmp_path`` (so
apply, rollback and reload read and write a file like the daemon does).
Any part can be passed in (``build_core(tmp_path, cfg, firewall=MyFirewall())``)
to observe or break it; :class:`FakeServers` stands in for what the daemon
hosts (portal listeners, local services, forwarding).

Nothing here touches the kernel; ``await core.start()`` runs the start-up
converge against the fakes.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from aiohttp import web
from pydantic import BaseModel, BeforeValidator
from pydantic.fields import FieldInfo

from gateway.clock import FakeClock
from gateway.config import Config
from gateway.config.loader import parse_config_text
from gateway.config.units import format_rate
from gateway.control.api import create_control_app
from gateway.core.configuration import ConfigService
from gateway.core.events import EventBus, Stamped
from gateway.core.ops import GatewayOps, LocalSitePort
from gateway.core.reconcile import ConfigHolder, Reconciler, ServersPort
from gateway.core.sessions import SessionService
from gateway.core.vouchers import VoucherService
from gateway.faults import FaultInjection
from gateway.firewall.fake import FakeFirewall
from gateway.model import Session
from gateway.netinfo.fake import FakeNeighbours
from gateway.services.fake import FakeDhcpServer
from gateway.shaping.fake import FakeShaper
from gateway.shaping.service import ShapingService
from gateway.store.fake import MemoryStore
from tests.unit.conftest import make_config

NOW = 1_700_000_000


# Rates and sizes are written as an operator writes them ("2mbit", "2147483648b"):
# the schema does not read back the bare integers model_dump gives.
_UNIT_FORMATS: dict[str, Callable[[int], str]] = {
    "_rate": format_rate, "_optional_rate": format_rate, "_size": lambda n: f"{n}b",
}


def _unit_format(info: FieldInfo) -> Callable[[int], str] | None:
    for meta in info.metadata:
        if isinstance(meta, BeforeValidator):
            found = _UNIT_FORMATS.get(getattr(meta.func, "__name__", ""))
            if found is not None:
                return found
    return None


def config_data(model: BaseModel) -> dict[str, Any]:
    """``model`` as the plain data of a TOML file that parses back to it."""
    dumped = model.model_dump(mode="json")
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        fmt = _unit_format(info)
        if value is None:
            continue
        if fmt is not None:
            out[name] = fmt(value)
        elif isinstance(value, BaseModel):
            out[name] = config_data(value)
        elif isinstance(value, dict):
            out[name] = {k: config_data(v) if isinstance(v, BaseModel) else dumped[name][k]
                         for k, v in value.items()}
        elif isinstance(value, list):
            out[name] = [config_data(v) if isinstance(v, BaseModel) else d
                         for v, d in zip(value, dumped[name], strict=True)]
        else:
            out[name] = dumped[name]
    return out


def config_text(cfg: Config) -> str:
    """The TOML text of ``cfg`` (what an operator could have written)."""
    return tomli_w.dumps(config_data(cfg))


def edited(text: str, **sections: dict[str, Any]) -> str:
    """``text`` with some values of some sections changed, as TOML again."""
    data = tomllib.loads(text)
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return tomli_w.dumps(data)


class FakeServers(FaultInjection):
    """ServersPort in memory: records every call in ``calls``; ``fail_on[name]`` breaks one.

    ``sync_portal`` keeps the config whose listeners are "up" in ``portal``;
    ``local`` is what ``GatewayOps.services_status`` sees (None: not running).
    """

    def __init__(self, journal: list[str] | None = None) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.journal = journal if journal is not None else self.calls
        self.forwarding = False
        self.portal: Config | None = None
        self.local_enabled = False
        self.limit: int | None = None
        self.local: LocalSitePort | None = None

    def _record(self, name: str) -> None:
        self.calls.append(name)
        if self.journal is not self.calls:
            self.journal.append(name)

    def enable_forwarding(self) -> None:
        self._fault("enable_forwarding")
        self._record("enable_forwarding")
        self.forwarding = True

    async def sync_local_services(self, cfg: Config) -> None:
        self._fault("sync_local_services")
        self._record("sync_local_services")
        self.local_enabled = cfg.local_services.enabled

    def update_limits(self, cfg: Config) -> None:
        self._fault("update_limits")
        self._record("update_limits")
        self.limit = cfg.portal.voucher_attempts_per_minute

    async def sync_portal(self, cfg: Config, previous: Config | None) -> None:
        self._fault("sync_portal")
        self._record("sync_portal")
        self.portal = cfg

    async def stop_portal(self) -> None:
        self._record("stop_portal")
        self.portal = None

    async def stop_local_services(self) -> None:
        self._record("stop_local_services")
        self.local_enabled = False


def _check(x: FakeServers) -> ServersPort:  # mypy: the fake satisfies the port
    return x


@dataclass
class Core:
    tmp_path: Path
    clock: FakeClock
    bus: EventBus
    holder: ConfigHolder
    store: MemoryStore
    firewall: FakeFirewall
    shaper: FakeShaper
    neighbours: FakeNeighbours
    dhcp: FakeDhcpServer
    servers: FakeServers
    shaping: ShapingService
    sessions: SessionService
    vouchers: VoucherService
    reconciler: Reconciler
    config: ConfigService
    ops: GatewayOps
    config_path: Path
    state_dir: Path
    started: list[str] = field(default_factory=list)

    @property
    def cfg(self) -> Config:
        return self.holder.current

    async def start(self) -> list[str]:
        """The daemon's start-up converge, against the fakes; returns the steps run."""
        self.started = await self.reconciler.converge(self.holder.current, None)
        return self.started

    def events(self, since: int = 0) -> list[Stamped]:
        return self.bus.since(since)

    def event_types(self, since: int = 0) -> list[str]:
        return [s.event.type for s in self.bus.since(since)]

    async def snapshot(self) -> tuple[Any, ...]:
        """Everything a bad request must leave alone: store rows, vouchers, kernel sets."""
        rows = sorted((r.id, r.session, r.ended, r.end_reason) for r in self.store.rows.values())
        vouchers = await self.store.vouchers()
        return (rows, vouchers, dict(self.firewall.authorized), dict(self.firewall.active),
                dict(self.firewall.classes), {d: dict(c) for d, c in self.shaper.classes.items()},
                self.bus.last_seq)

    def control_app(self) -> web.Application:
        return create_control_app(self.ops)


def build_core(
    tmp_path: Path,
    cfg: Config | None = None,
    *,
    text: str | None = None,
    clock: FakeClock | None = None,
    store: MemoryStore | None = None,
    firewall: FakeFirewall | None = None,
    shaper: FakeShaper | None = None,
    neighbours: FakeNeighbours | None = None,
    dhcp: FakeDhcpServer | None = None,
    servers: FakeServers | None = None,
    config_file: bool = True,
) -> Core:
    """Compose the core on fakes, as ``Daemon.start`` composes it on adapters.

    ``cfg`` (default :func:`make_config`) or ``text`` (TOML) is the running
    config; it is written to ``tmp_path/gateway.toml`` unless ``config_file``
    is False (a daemon started from an object, without a file).
    """
    if text is None:
        cfg = cfg or make_config()
        text = config_text(cfg)
    parsed = parse_config_text(text)
    clock = clock or FakeClock(NOW)
    bus = EventBus(clock)
    holder = ConfigHolder(parsed)
    store = store or MemoryStore()
    firewall = firewall or FakeFirewall()
    shaper = shaper or FakeShaper()
    neighbours = neighbours or FakeNeighbours()
    dhcp = dhcp or FakeDhcpServer()
    servers = servers or FakeServers()
    state_dir = tmp_path / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    config_path = tmp_path / "gateway.toml"
    if config_file:
        config_path.write_text(text, encoding="utf-8")

    shaping = ShapingService(holder.get, shaper, clock)
    sessions = SessionService(holder.get, store, firewall, shaping, neighbours, clock, bus)
    vouchers = VoucherService(holder.get, store, sessions, clock, bus)
    reconciler = Reconciler(holder, sessions, shaping, firewall, dhcp, servers, clock)
    config = ConfigService(holder, reconciler, bus, clock, state_dir,
                           str(config_path) if config_file else None,
                           text if config_file else None)
    ops = GatewayOps(sessions, vouchers, shaping, config, bus, clock, firewall, dhcp,
                     neighbours, lambda: servers.local)
    return Core(tmp_path, clock, bus, holder, store, firewall, shaper, neighbours, dhcp,
                servers, shaping, sessions, vouchers, reconciler, config, ops, config_path,
                state_dir)


def session(mac: str, ip: str, started: int = NOW - 100, expires: int = NOW + 3600,
            idle: int = 1800, voucher: str | None = None, plan: str | None = None) -> Session:
    return Session(mac, ip, started, expires, idle, "terms", voucher, plan)


__all__ = ["NOW", "Core", "FakeServers", "build_core", "config_text", "edited", "session"]
