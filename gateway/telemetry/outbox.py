"""What the telemetry service needs of its durable outbox: the message types, the
backlog bound, the in-flight bookkeeping and the port (a Protocol). Pure: the
SQLite implementation is an adapter, gateway/store/telemetry_outbox.py, which
explains how messages are kept, numbered, bounded and acknowledged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from gateway.config.telemetry import Telemetry
from gateway.core.lifecycle import TELEMETRY_OUTBOX, TelemetryState

Kind = Literal["event", "telemetry"]
KINDS: tuple[Kind, ...] = ("event", "telemetry")

@dataclass(frozen=True)
class Bound:
    """The most the backlog may hold: messages, and bytes of their bodies (UTF-8)."""

    max_messages: int = 10_000
    max_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_messages < 1 or self.max_bytes < 1:
            raise ValueError(f"a backlog bound must be positive: {self}")


def backlog_bound(cfg: Telemetry) -> Bound:
    return Bound(cfg.backlog_max_messages, cfg.backlog_max_bytes)


@dataclass(frozen=True)
class Totals:
    """The backlog now (per kind) and the drops since the outbox file was made."""

    messages: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    last_seq: int = 0  # the highest seq handed out

    @property
    def count(self) -> int:
        return sum(self.messages.values())

    @property
    def size(self) -> int:
        return sum(self.bytes.values())


@dataclass(frozen=True)
class Message:
    seq: int
    kind: Kind
    session: int
    created: float
    body: str  # JSON of the message's data (payloads.event_data); the envelope is added at send


@dataclass(frozen=True)
class NewMessage:
    kind: Kind
    created: float
    body: str


class InFlight:
    """Published messages awaiting their PUBACK, by paho's message id (``mid``), in memory;
    one PUBLISH may carry several (a telemetry batch, gateway/telemetry/batch.py).

    Each move asks ``TELEMETRY_OUTBOX`` first; an illegal one (a PUBACK for a message
    already acknowledged, say) raises ``IllegalTransition``. Loop-thread only."""

    def __init__(self) -> None:
        self._by_mid: dict[int, tuple[int, ...]] = {}
        self._state: dict[int, TelemetryState] = {}

    def __len__(self) -> int:
        """PUBLISHes in flight."""
        return len(self._by_mid)

    def published(self, seqs: int | Sequence[int], mid: int) -> None:
        group = (seqs,) if isinstance(seqs, int) else tuple(seqs)
        for seq in group:
            self._state[seq] = TELEMETRY_OUTBOX.next(self._state.get(seq, "queued"), "publish")
        self._by_mid[mid] = group

    def acked(self, mid: int) -> list[int]:
        """The seqs the PUBACK of ``mid`` acknowledges (none: not ours, e.g. the status)."""
        group = self._by_mid.pop(mid, ())
        for seq in group:
            TELEMETRY_OUTBOX.next(self._state.pop(seq), "puback")
        return list(group)

    def refused(self, mid: int) -> list[int]:
        """The broker answered ``mid`` with an error: back to queued, sent again later."""
        group = self._by_mid.pop(mid, ())
        for seq in group:
            TELEMETRY_OUTBOX.next(self._state.pop(seq), "refused")
        return list(group)

    def lost(self) -> list[int]:
        """The connection is gone: every message in flight is queued again; their seqs."""
        seqs = sorted(seq for group in self._by_mid.values() for seq in group)
        for seq in seqs:
            TELEMETRY_OUTBOX.next(self._state.pop(seq), "connection_lost")
        self._by_mid.clear()
        return seqs


class OutboxPort(Protocol):
    """What the telemetry service needs of the outbox; every method may await the disk."""

    async def next_session(self) -> int: ...
    async def add(self, session: int, items: Sequence[NewMessage]) -> list[int]: ...
    async def pending(self, after: int = 0, limit: int = 100) -> list[Message]: ...
    async def ack(self, seqs: Iterable[int]) -> int: ...
    async def count(self) -> int: ...
    async def close(self) -> None: ...
    def totals(self) -> Totals:
        """The backlog and drop counts as of the last transaction; never blocks."""
        ...
