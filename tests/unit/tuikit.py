"""Fixed data for the TUI's snapshot tests: a fake control API, host and diagnostics.

Only the snapshots use these (their pictures must not change from run to run);
the Pilot tests of actions talk to the real control API (test_tui_actions.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from gateway.control.client import unreachable
from gateway.control.schema import ConfigShowOut, EventsOut
from gateway.tui.app import Diagnostics
from gateway.tui.host import HostStats

T0 = 1_780_000_000  # a fixed clock: 2026-05-28 in Asia/Jakarta
MACS = [f"02:00:00:00:00:{i:02x}" for i in range(1, 8)]


def _client(i: int, authorized: bool, down: int = 0, up: int = 0, plan: str | None = None,
            voucher: str | None = None, hostname: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"mac": MACS[i], "ip": f"10.42.0.{101 + i}", "authorized": authorized}
    if hostname:
        row["hostname"] = hostname
    if authorized:
        row.update(started=T0 - 600, expires=T0 + 3000 + i * 600, remaining=3000 + i * 600,
                   source="voucher" if voucher else "manual", voucher=voucher, plan=plan,
                   idle_left=1700, shaping={
                       "class": f"1:{101 + i:x}", "plan": plan or "default",
                       "down": {"rate": 1, "ceil": 1, "stats": {"bytes": down}},
                       "up": {"rate": 1, "ceil": 1, "stats": {"bytes": up}}})
    return row


CLIENTS = [
    _client(0, True, 512 * 1024 * 1024, 40 * 1024 * 1024, "school", hostname="hp-siti"),
    _client(1, True, 90 * 1024 * 1024, 9 * 1024 * 1024, voucher="K7MQX-3PAR9"),
    _client(2, True, 300 * 1024 * 1024, 30 * 1024 * 1024),
    _client(3, True, 2 * 1024 * 1024, 1024 * 1024),
    _client(4, False),
]

STATUS: dict[str, Any] = {
    "ready": True, "site": "Desa Sukamaju", "village": "Sukamaju", "uptime": 7200,
    "portal_url": "http://10.42.0.1/", "lan_ip": "10.42.0.1", "portal_mode": "voucher",
    "sessions_active": 4, "timezone": "Asia/Jakarta", "degraded": [],
    "uplink": {"state": "up", "since": T0 - 3600, "latency_ms": 42.4, "reason": "probes"},
    "telemetry": {"enabled": True, "connected": True, "backlog": 3, "broker": "mqtt.kab.id"},
    "config": {"version": "c0ffee12", "path": "/etc/desanet/gateway.toml",
               "last_change": {"seq": 9, "time": T0 - 900, "type": "config_applied",
                               "version": "c0ffee12", "by": "budi"},
               "trial": {"started": T0 - 60, "deadline": T0 + 240,
                         "previous_version": "0badcafe", "by": "budi"}},
}

SERVICES: dict[str, Any] = {
    "enabled": True, "hostname": "layanan.desa",
    "cache": {"hit_ratio": 0.82, "entries": 120, "bytes": 1 << 20, "max_bytes": 1 << 30},
    "services": {
        "dukcapil": {"state": "online", "last_ok": T0 - 120, "requests": 40, "errors": 1,
                     "last_error_text": None,
                     "cache": {"hits": 30, "misses": 10, "hit_ratio": 0.75}},
        "bpjs": {"state": "offline", "last_ok": T0 - 7200, "requests": 12, "errors": 5,
                 "last_error_text": "connect timeout",
                 "cache": {"hits": 0, "misses": 0, "hit_ratio": None}},
    },
    "outbox": {"queued": 2, "delivered": 7, "failed": 0},
    "prefetch": {"runs": 1, "started": T0 - 4000, "finished": T0 - 3900,
                 "results": {"a": "ok", "b": "ok", "c": "error"}},
}

VOUCHERS = [
    {"code": f"AB{i}CD-EFGH{i}", "duration": 86400, "plan": None, "created": T0 - 86400,
     "batch": "b-20260527", "batch_name": "Posyandu Mei", "serial": i + 1, "max_devices": 1,
     "first_used": T0 - 600 if i == 0 else None, "revoked": i == 2, "devices": [],
     "state": ["active", "unused", "revoked", "unused"][i]}
    for i in range(4)
]

EVENTS = [
    {"seq": 7, "time": T0 - 1200, "type": "session_started"},
    {"seq": 8, "time": T0 - 1000, "type": "uplink_changed"},
    {"seq": 9, "time": T0 - 900, "type": "config_applied"},
]

CONFIG = {"network": {"wan_interface": "wan0"}, "shaping": {"plans": {"school": {}}}}


@dataclass
class FakeApi:
    """The control API with fixed answers; ``down`` makes every call unreachable."""

    down: bool = False
    socket_path: str = "/run/desanet/control.sock"
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def _check(self) -> None:
        if self.down:
            raise unreachable(self.socket_path, ConnectionRefusedError(111, "Connection refused"))

    async def status(self) -> dict[str, Any]:
        self._check()
        return STATUS

    async def clients(self) -> list[dict[str, Any]]:
        self._check()
        return CLIENTS

    async def config_show(self) -> ConfigShowOut:
        self._check()
        return ConfigShowOut(version="c0ffee12", config=CONFIG, text="")

    async def services(self) -> dict[str, Any]:
        self._check()
        return SERVICES

    async def vouchers(self, batch: str | None = None) -> list[dict[str, Any]]:
        self._check()
        return VOUCHERS

    async def events(self, since: int, timeout: float) -> EventsOut:
        self._check()
        if since == 0:
            return EventsOut(events=EVENTS, next=9)
        await asyncio.Event().wait()  # nothing new, ever
        raise AssertionError

    async def _record(self, name: str, *args: Any) -> dict[str, Any]:
        self._check()
        self.calls.append((name, args))
        return {}

    async def authorize(self, mac: str, duration: str | None, plan: str | None,
                        force: bool = False) -> dict[str, Any]:
        return await self._record("authorize", mac, duration, plan)

    async def deauthorize(self, mac: str) -> dict[str, Any]:
        return await self._record("deauthorize", mac)

    async def change_plan(self, mac: str, plan: str | None) -> dict[str, Any]:
        return await self._record("change_plan", mac, plan)

    async def create_vouchers(self, count: int, duration: str, plan: str | None,
                              name: str | None, seller: str | None = None) -> dict[str, Any]:
        return await self._record("create_vouchers", count, duration, plan, name, seller)

    async def revoke_voucher(self, code: str) -> dict[str, Any]:
        return await self._record("revoke_voucher", code)

    async def release_voucher(self, code: str, mac: str | None) -> dict[str, Any]:
        return await self._record("release_voucher", code, mac)

    async def prefetch(self) -> dict[str, Any]:
        return await self._record("prefetch")

    async def close(self) -> None:
        pass


class FakeHost:
    """Counters that grow by a fixed pattern: a deterministic sparkline."""

    def __init__(self) -> None:
        self.reads = 0
        self.rx = self.tx = 0

    async def read(self, wan_interface: str | None) -> HostStats:
        self.reads += 1
        self.rx += 125_000 * (2 + self.reads % 5)  # 2..6 Mbit/s over a 1 s step
        self.tx += 25_000 * (1 + self.reads % 3)
        return HostStats(float(self.reads), 23.0, 41.0, 52.0, 37.0, self.rx, self.tx)


@dataclass
class CheckResult:
    """The shape of gateway.diag's result, for the stand-in runner."""

    name: str
    status: str
    summary_id: str
    summary_en: str
    advice_id: str = ""
    advice_en: str = ""
    details: dict[str, Any] = field(default_factory=dict)


CHECK_NAMES = ["dns", "dhcp_rogue", "mqtt", "clock", "disk"]
RESULTS = {
    "dns": CheckResult("dns", "ok", "DNS menjawab lewat gateway dan hulu",
                       "DNS answers through the gateway and upstream"),
    "dhcp_rogue": CheckResult("dhcp_rogue", "fail", "Server DHCP lain menjawab: 10.42.0.9",
                              "Another DHCP server answers: 10.42.0.9",
                              "Cabut router lain dari LAN.", "Unplug the other router from the LAN."),
    "mqtt": CheckResult("mqtt", "warn", "Sertifikat broker habis dalam 5 hari",
                        "The broker's certificate expires in 5 days",
                        "Minta sertifikat baru ke kabupaten.", "Ask the district for a new one."),
    "clock": CheckResult("clock", "ok", "Jam tersinkron (NTP)", "Clock synchronised (NTP)"),
    "disk": CheckResult("disk", "skip", "Tidak diperiksa", "Not checked"),
}


class StandInDiag:
    """Runs the fixed results; counts the calls."""

    def __init__(self) -> None:
        self.calls: list[list[str] | None] = []

    async def __call__(self, names: list[str] | None) -> list[CheckResult]:
        self.calls.append(names)
        return [RESULTS[n] for n in (names or CHECK_NAMES)]

    def pair(self) -> Diagnostics:
        return Diagnostics(list(CHECK_NAMES), self, {"dhcp_rogue": ("Server DHCP liar",
                                                                     "Rogue DHCP server")})
