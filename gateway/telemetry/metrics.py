"""The periodic telemetry message (pure): readings -> a compact, private report.

Theory of operation
-------------------
Every ``telemetry_sample_interval`` the service takes one :class:`Readings` (the
machine's, from :mod:`gateway.telemetry.sysinfo`, and the gateway's, from the
facade's ``GatewayOps.metrics``) and :func:`sample` reduces it to a flat map of
short keys (:data:`METRICS`; the families ``rx/<interface>``, ``tx/<interface>``
and ``sv/<health state>`` are nested in the message). Every
``telemetry_interval`` :meth:`Reporter.report` folds the samples taken since
the last report (a mean, a maximum or the last value, per metric) and decides
what to send:

- a **gauge** is sent when it moved by more than its deadband since the value
  last sent (or went from a number to unknown and back);
- a **counter** (cumulative at the source: bytes, logins, drops) goes in full
  reports only, as its increase since the previous full report (a counter
  that went down was restarted: its new value is the increase). Counters move
  in nearly every interval; sent by exception they would make every report
  go out, while an hourly sum loses nothing but resolution;
- a **full** report, every ``telemetry_full_every`` intervals and the first
  after a start, carries every metric (``"f": true``), so a consumer that
  missed the exceptions or just subscribed catches up;
- a report with nothing to say is not sent at all.

No personal data (UU 27/2022): only the numbers named in :data:`METRICS` are
read out of the readings, so a MAC, an address, a host name or a voucher code
that they carry never reaches a message. Interface and health-state names are
checked against a pattern (an address is never a name).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.core.lifecycle import FORMS_OUTBOX

Kind = Literal["gauge", "counter", "full"]
Fold = Literal["mean", "max", "last"]
Value = float | int | None
Sample = dict[str, Value]


@dataclass(frozen=True)
class Metric:
    kind: Kind  # "full": sent in full reports only (e.g. uptime, which moves every second)
    deadband: float = 0.0  # a gauge moves by more than this to be sent
    fold: Fold = "last"  # how the samples of one interval become the reported value
    doc: str = ""


# The message's keys (docs/schemas/telemetry.schema.json declares the same set).
METRICS: Mapping[str, Metric] = {
    # system
    "cpu": Metric("gauge", 10, "mean", "CPU use, % of all cores, mean of the interval's samples"),
    "mem": Metric("gauge", 5, "last", "memory in use, %"),
    "dsk": Metric("gauge", 2, "last", "disk in use where the state directory lives, %"),
    "tmp": Metric("gauge", 3, "max", "hottest sensor, degrees C (absent: no sensor)"),
    "upt": Metric("full", 0, "last", "seconds since the machine booted"),
    "ld": Metric("gauge", 0.5, "mean", "1-minute load average, mean of the interval"),
    # network
    "ul": Metric("gauge", 0, "last", "uplink: 1 up, 0 down, null unknown"),
    "lat": Metric("gauge", 100, "mean", "uplink probe latency, ms"),
    "ls": Metric("gauge", 10, "mean", "uplink probe loss: failed rounds among the last 20, %"),
    "rx": Metric("counter", 0, "last", "bytes received per interface"),
    "tx": Metric("counter", 0, "last", "bytes sent per interface"),
    # portal
    "cc": Metric("gauge", 2, "last", "clients connected (DHCP leases)"),
    "ca": Metric("gauge", 2, "last", "clients authorized (active sessions)"),
    "li": Metric("counter", 0, "last", "logins (voucher or terms)"),
    "fv": Metric("counter", 0, "last", "voucher codes refused"),
    # shaping
    "sd": Metric("counter", 0, "last", "packets the shaper dropped"),
    "pu": Metric("counter", 0, "last", "bytes per plan, down and up, of its clients' classes"),
    "pd": Metric("counter", 0, "last", "packets the shaper dropped per plan"),
    # local services
    "hr": Metric("gauge", 0.05, "last", "cache hit ratio since the daemon started, 0-1"),
    "bs": Metric("counter", 0, "last", "bytes served from the cache (saved upstream)"),
    "sv": Metric("gauge", 0, "last", "local services per health state (online, offline, unknown)"),
    "qf": Metric("gauge", 0, "last", "forms waiting to be delivered"),
    # MQTT
    "bl": Metric("gauge", 0, "last", "messages waiting in the outbox (events and telemetry)"),
    "rc": Metric("counter", 0, "last", "connections to the broker"),
    "dr": Metric("counter", 0, "last", "messages dropped from a full outbox (events and telemetry)"),
    "ce": Metric("gauge", 0, "last", "whole days until the MQTT device certificate ends "
                 "(negative: ended; absent: no client certificate)"),
}
FAMILIES = ("rx", "tx", "sv", "pu", "pd")  # nested: {"rx": {"eth0": 1200}}; flat in a sample as "rx/eth0"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.@-]{0,14}$")  # IFNAMSIZ is 16 with the NUL
_STATE = re.compile(r"^[a-z][a-z_]{0,19}$")
_PLAN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_WAITING = tuple(s for s in FORMS_OUTBOX.states if not FORMS_OUTBOX.is_final(s))


@dataclass(frozen=True)
class SystemReadings:
    """The machine's readings (sysinfo.read_system); None where the kernel has none."""

    cpu: float | None = None
    memory: float | None = None
    disk: float | None = None
    temperature: float | None = None
    uptime: int | None = None
    load: float | None = None
    interfaces: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # name -> (rx, tx)


@dataclass(frozen=True)
class Readings:
    system: SystemReadings
    gateway: Mapping[str, Any]  # GatewayOps.metrics(): its status plus the counts telemetry reads


def _name_ok(name: str, pattern: re.Pattern[str]) -> bool:
    if not pattern.match(name):
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False


def _num(value: object) -> float | int | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _get(data: Mapping[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)  # type: ignore[assignment]
    return data


def _round(value: float | None, digits: int = 0) -> Value:
    if value is None:
        return None
    return round(value) if digits == 0 else round(value, digits)


def sample(r: Readings) -> Sample:
    """One sample: the numbers of :data:`METRICS`, rounded to what a dashboard shows."""
    s, g = r.system, r.gateway
    out: Sample = {
        "cpu": _round(s.cpu), "mem": _round(s.memory), "dsk": _round(s.disk),
        "tmp": _round(s.temperature), "upt": s.uptime, "ld": _round(s.load, 2),
    }
    for name, (rx, tx) in sorted(s.interfaces.items()):
        if _name_ok(name, _NAME):
            out[f"rx/{name}"], out[f"tx/{name}"] = int(rx), int(tx)
    state = _get(g, "uplink", "state")
    out["ul"] = {"up": 1, "down": 0}.get(state) if isinstance(state, str) else None
    out["lat"] = _round(_num(_get(g, "uplink", "latency_ms")))
    out["ls"] = _round(_num(_get(g, "uplink", "loss_pct")))
    out["cc"] = _num(g.get("clients_connected"))
    out["ca"] = _num(g.get("sessions_active"))
    out["li"] = _num(_get(g, "portal", "logins"))
    out["fv"] = _num(_get(g, "portal", "voucher_failures"))
    out["sd"] = _shaper_drops(g.get("shaping"))
    for plan, use in _plan_use(g.get("shaping")):
        out[f"pu/{plan}"] = int(_num(use.get("down_bytes")) or 0) + int(_num(use.get("up_bytes")) or 0)
        out[f"pd/{plan}"] = int(_num(use.get("drops")) or 0)
    services = g.get("services")
    if isinstance(services, Mapping) and services.get("enabled"):
        ratio = _num(_get(services, "cache", "hit_ratio"))
        out["hr"] = None if ratio is None else round(ratio, 3)
        out["bs"] = _num(_get(services, "cache", "bytes_from_cache"))
        for st in _health_states(services.get("services")):
            out[f"sv/{st}"] = int(out.get(f"sv/{st}") or 0) + 1
        forms = services.get("outbox")
        out["qf"] = (sum(int(_num(forms.get(x)) or 0) for x in _WAITING)
                     if isinstance(forms, Mapping) else None)
    tel = g.get("telemetry")
    if isinstance(tel, Mapping) and tel.get("enabled"):
        out["bl"] = _num(tel.get("backlog"))
        out["rc"] = _num(tel.get("connects"))
        dropped = tel.get("dropped")
        if isinstance(dropped, Mapping):
            out["dr"] = sum(int(_num(n) or 0) for n in dropped.values())
        if _num(tel.get("cert_days")) is not None:
            out["ce"] = _num(tel.get("cert_days"))
    return out


def _shaper_drops(shaping: object) -> int | None:
    if not isinstance(shaping, Mapping) or not shaping.get("enabled"):
        return None
    total = 0
    for direction in (shaping.get("directions") or {}).values():
        for cls in (_get(direction, "classes") or {}).values():
            total += int(_num(_get(cls, "drops")) or 0)
    return total


def _plan_use(shaping: object) -> list[tuple[str, Mapping[str, Any]]]:
    plans = _get(shaping, "plans") if isinstance(shaping, Mapping) and shaping.get("enabled") else None
    if not isinstance(plans, Mapping):
        return []
    return [(name, use) for name, use in sorted(plans.items())
            if isinstance(name, str) and _name_ok(name, _PLAN) and isinstance(use, Mapping)]


def _health_states(services: object) -> list[str]:
    if not isinstance(services, Mapping):
        return []
    found = [_get(h, "state") for h in services.values()]
    return [st for st in found if isinstance(st, str) and _name_ok(st, _STATE)]


def _spec(key: str) -> Metric:
    return METRICS[key.split("/", 1)[0]]


def fold(samples: Sequence[Sample]) -> Sample:
    """The interval's samples as one: per metric its mean, maximum or last value (over
    the samples that had one); the keys are those of the last sample."""
    if not samples:
        return {}
    out: Sample = {}
    for key in samples[-1]:
        how = _spec(key).fold
        values = [v for s in samples if (v := s.get(key)) is not None]
        if how == "last" or not values:
            out[key] = samples[-1][key]
        elif how == "max":
            out[key] = max(values)
        else:
            mean = sum(values) / len(values)
            out[key] = round(mean, 2) if isinstance(values[0], float) else round(mean)
    return out


class Reporter:
    """Deadbands and the full-report cadence; one per daemon run (loop-thread only)."""

    def __init__(self, full_every: int) -> None:
        self.full_every = max(1, full_every)
        self.intervals = 0
        self._sent: Sample = {}  # gauges: the value last sent
        self._base: dict[str, float | int] = {}  # counters: the source's value at the last send
        self._samples: list[Sample] = []

    def add(self, one: Sample) -> None:
        """One sample; a counter seen for the first time counts from here."""
        for key, value in one.items():
            if value is not None and _spec(key).kind == "counter":
                self._base.setdefault(key, value)
        self._samples.append(one)

    def report(self) -> dict[str, Any] | None:
        """The message body for the interval that ends now (None: nothing to say).
        The samples of the interval are used up either way."""
        now, self._samples = fold(self._samples), []
        full = self.intervals % self.full_every == 0
        self.intervals += 1
        body: dict[str, Any] = {"f": True} if full else {}
        for key, value in now.items():
            spec = _spec(key)
            if spec.kind == "full":
                if full and value is not None:
                    _put(body, key, value)
            elif spec.kind == "counter":
                if value is None:
                    continue
                if full:
                    base = self._base.get(key, value)
                    _put(body, key, value - base if value >= base else value)  # below: restarted
                    self._base[key] = value
            else:
                last = self._sent.get(key)
                moved = (key not in self._sent or (value is None) != (last is None)
                         or (value is not None and last is not None
                             and abs(value - last) > spec.deadband))
                if (full and value is not None) or (not full and moved):
                    _put(body, key, value)
                if full or moved:
                    self._sent[key] = value
        for key in [k for k in (*self._sent, *self._base) if "/" in k and k not in now]:
            # an interface or a health state that went away: a state's count is now 0
            if key in self._sent and self._sent.pop(key):
                _put(body, key, 0)
            self._base.pop(key, None)
        return body or None


def _put(body: dict[str, Any], key: str, value: Value) -> None:
    family, _, member = key.partition("/")
    if member:
        body.setdefault(family, {})[member] = value
    else:
        body[family] = value
