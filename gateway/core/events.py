"""Typed events inside the daemon, and the bus that carries them.

Theory of operation
-------------------
Services publish what happened (a session started, a config was applied)
as small frozen dataclasses. The bus stamps each with a sequence number and
the wall-clock time and keeps the last ``capacity`` in a ring, so a reader
that was away (the control API's long-poll, the TUI after a reconnect, the
MQTT outbox later) asks "everything after seq N" and misses nothing that is
still in the ring. Publishing never blocks and never fails: subscribers are
woken, not called, so a slow reader cannot stall a login.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from gateway.clock import Clock


class EndReason(enum.StrEnum):
    """Why a session ended (stored in SQLite, shown in events and the CLI)."""

    LOGOUT = "logout"
    DEAUTH = "deauth"
    EXPIRED = "expired"
    IDLE = "idle"
    REPLACED = "replaced"
    VOUCHER_REVOKED = "voucher_revoked"
    VOUCHER_RELEASED = "voucher_released"
    KERNEL_REFUSED = "kernel_refused"
    TIME_USED = "time_used"  # the voucher's time of use (its plan's time_of_use) ran out
    QUOTA = "quota"  # the voucher's data quota ran out (after_quota = "cut")


class ChangeSource(enum.StrEnum):
    """Where a config change came from."""

    START = "start"
    CLI = "cli"
    SIGHUP = "sighup"
    TIMER = "timer"  # a confirm window ran out
    MQTT = "mqtt"


@dataclass(frozen=True, slots=True)
class Event:
    type: ClassVar[str] = "event"

    def to_json(self) -> dict[str, Any]:
        data = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        data["type"] = self.type
        return data


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True, slots=True)
class SessionStarted(Event):
    type: ClassVar[str] = "session_started"
    mac: str
    ip: str
    source: str
    plan: str | None = None
    voucher: str | None = None
    expires: int = 0


@dataclass(frozen=True, slots=True)
class SessionEnded(Event):
    type: ClassVar[str] = "session_ended"
    mac: str
    ip: str
    reason: EndReason


@dataclass(frozen=True, slots=True)
class PlanChanged(Event):
    type: ClassVar[str] = "plan_changed"
    mac: str
    plan: str | None


@dataclass(frozen=True, slots=True)
class ConfigApplied(Event):
    type: ClassVar[str] = "config_applied"
    version: str
    previous_version: str
    source: ChangeSource
    by: str = ""
    changes: tuple[str, ...] = ()
    trial_deadline: int | None = None


@dataclass(frozen=True, slots=True)
class ConfigConfirmed(Event):
    type: ClassVar[str] = "config_confirmed"
    version: str
    source: ChangeSource
    by: str = ""


@dataclass(frozen=True, slots=True)
class ConfigRolledBack(Event):
    type: ClassVar[str] = "config_rolled_back"
    version: str  # the config running again
    from_version: str
    source: ChangeSource
    reason: str
    by: str = ""


@dataclass(frozen=True, slots=True)
class ConfigRefused(Event):
    type: ClassVar[str] = "config_refused"
    source: ChangeSource
    reason: str
    step: str = ""
    by: str = ""


@dataclass(frozen=True, slots=True)
class UplinkChanged(Event):
    type: ClassVar[str] = "uplink_changed"
    up: bool
    since: int = 0  # when it changed (epoch seconds)
    reason: str = ""  # "link" (carrier or default route gone) or "probes"
    latency_ms: float | None = None  # of the probe round that brought it up


@dataclass(frozen=True, slots=True)
class ServiceHealthChanged(Event):
    type: ClassVar[str] = "service_health_changed"
    service: str
    state: str


@dataclass(frozen=True, slots=True)
class VoucherBatchCreated(Event):
    type: ClassVar[str] = "voucher_batch_created"
    batch: str
    count: int
    plan: str | None
    duration: int


@dataclass(frozen=True, slots=True)
class VoucherRevoked(Event):
    type: ClassVar[str] = "voucher_revoked"
    code: str
    sessions_ended: int


@dataclass(frozen=True, slots=True)
class VoucherReleased(Event):
    type: ClassVar[str] = "voucher_released"
    code: str
    mac: str | None
    sessions_ended: int


@dataclass(frozen=True, slots=True)
class CommandHandled(Event):
    """A remote command (MQTT, telemetry/dispatch.py) and its outcome: "ok", "refused"
    (not carried out; ``reason`` says why) or "failed" (the facade raised; ``reason`` is
    the error's kind). ``id``/``name`` are None when the request did not say them."""

    type: ClassVar[str] = "command_handled"
    id: str | None
    name: str | None
    outcome: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class Stamped:
    seq: int
    time: float
    event: Event

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, **self.event.to_json()}


@dataclass
class EventBus:
    """In-process publish/subscribe with a replay ring (see the module docstring)."""

    clock: Clock
    capacity: int = 1000
    _ring: deque[Stamped] = field(init=False)
    _seq: int = field(default=0, init=False)
    _changed: asyncio.Condition | None = field(default=None, init=False)
    _wakers: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self._ring = deque(maxlen=self.capacity)

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def oldest_seq(self) -> int:
        """The sequence number of the oldest event still in the ring (last + 1 if empty)."""
        return self._ring[0].seq if self._ring else self._seq + 1

    def publish(self, event: Event) -> Stamped:
        self._seq += 1
        stamped = Stamped(self._seq, self.clock.time(), event)
        self._ring.append(stamped)
        if self._changed is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop, so nobody can be waiting: nothing to wake
                return stamped
            task = loop.create_task(_notify(self._changed))
            self._wakers.add(task)
            task.add_done_callback(self._wakers.discard)
        return stamped

    def since(self, seq: int) -> list[Stamped]:
        """Every event still in the ring with a sequence number above ``seq``."""
        return [s for s in self._ring if s.seq > seq]

    def last(self, *types: type[Event]) -> Stamped | None:
        for stamped in reversed(self._ring):
            if isinstance(stamped.event, types):
                return stamped
        return None

    async def wait_since(self, seq: int, timeout: float) -> list[Stamped]:
        """Events after ``seq``; waits up to ``timeout`` seconds for the first one."""
        found = self.since(seq)
        if found or timeout <= 0:
            return found
        if self._changed is None:
            self._changed = asyncio.Condition()
        cond = self._changed
        async with cond:
            try:  # asyncio.timeout, not wait_for: never loses a caller's cancel (asynctools)
                async with asyncio.timeout(timeout):
                    await cond.wait_for(lambda: self._seq > seq)
            except TimeoutError:
                return []
        return self.since(seq)


async def _notify(cond: asyncio.Condition) -> None:
    async with cond:
        cond.notify_all()


def event_json(stamped: Stamped) -> dict[str, Any]:
    return stamped.to_json()


__all__ = [
    "ChangeSource", "CommandHandled", "ConfigApplied", "ConfigConfirmed", "ConfigRefused", "ConfigRolledBack",
    "EndReason", "Event", "EventBus", "PlanChanged", "ServiceHealthChanged", "SessionEnded",
    "SessionStarted", "Stamped", "UplinkChanged", "VoucherBatchCreated", "VoucherReleased", "VoucherRevoked",
]
