"""The stored state of one gateway and the rules that merge a message into it (pure).

`desanet fleet serve` (gateway/fleet/serve.py) keeps one :class:`SiteState` per
gateway in its database; gateway/fleet/store.py reads it, hands each new
message to the functions here and writes it back in the same transaction.

Why these rules differ from the watch's table (gateway/fleet/table.py): several
serve instances in one shared-subscription group each get a part of a
gateway's messages, and commit them in whatever order their batches finish. So
"newer" is decided by the message, never by the arrival:

- A numbered message (event, telemetry) is ordered by ``(session, seq)``; the
  gateway never hands out the same pair twice (docs/mqtt.md). Whether one was
  already stored is the store's ledger, not a high-water mark here: seq 9
  committed after seq 10 is not a duplicate.
- Telemetry reports by exception, so each metric keeps the ``(session, seq)``
  of the report that set it (``stamps``): a report committed late changes only
  the metrics no newer report has set.
- Every instance sees every status (they are few and the retained one is
  needed at start, see serve.py), so a lagging instance may apply an older
  status after a newer one of the same session; the last status of a
  session it applies is the newest, so it ends right. One rule keeps a late
  "online" from reviving a session whose Will (offline) was already stored:
  within a session, offline is final.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.fleet.table import METRIC_FIELDS, Rejected

ENVELOPE = frozenset({"v", "site", "session", "seq", "time", "hist", "f"})
# Unknown telemetry keys are kept (a newer gateway's metrics), but a site's set is bounded:
# one gateway sending new names in every report would grow its row, rewritten per batch.
MAX_TELEMETRY_KEYS = 64
Key = tuple[int, int]  # (session, seq)


@dataclass
class SiteState:
    """One row of the ``gateways`` table (docs/fleet.md); None: not (yet) reported."""

    site: str
    online: bool | None = None
    version: str | None = None
    config_version: str | None = None
    session: int | None = None
    boot_time: int | None = None
    status_at: float | None = None  # this consumer's clock when the status was stored
    dropped_events: int | None = None
    dropped_telemetry: int | None = None
    last_seen: float | None = None  # this consumer's clock, live messages only
    last_report: float | None = None  # the gateway's clock: newest event/telemetry "time"
    last_session: int = 0
    last_seq: int = 0  # (last_session, last_seq): the newest numbered message stored
    clients: int | None = None
    authorized: int | None = None
    uplink: bool | None = None
    latency_ms: int | None = None
    queued_forms: int | None = None
    backlog: int | None = None
    events: int = 0
    last_event: str | None = None
    messages: int = 0  # numbered messages stored
    duplicates: int = 0
    stale: int = 0  # statuses older than the stored one, ignored
    rejected: int = 0
    problem: str | None = None
    telemetry: dict[str, Any] = field(default_factory=dict)  # the latest value of every key
    stamps: dict[str, list[int]] = field(default_factory=dict)  # key -> [session, seq] that set it


def _int(body: Mapping[str, Any], key: str, nullable: bool = False) -> int | None:
    value = body.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if value is None and nullable:
        return None
    raise Rejected(f"{key!r} is {json.dumps(value)}, not an integer")


def _text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if isinstance(value, str):
        return value
    raise Rejected(f"{key!r} is {json.dumps(value)}, not a string")


def key_of(body: Mapping[str, Any]) -> Key:
    """The (session, seq) of a numbered message; raises Rejected."""
    session, seq = _int(body, "session"), _int(body, "seq")
    assert session is not None and seq is not None
    if session < 1 or seq < 1:
        raise Rejected(f"session {session} / seq {seq}: both must be at least 1")
    t = body.get("time")
    if not isinstance(t, int | float) or isinstance(t, bool):
        raise Rejected(f"'time' is {json.dumps(t)}, not a number")
    return session, seq


def apply_status(s: SiteState, body: Mapping[str, Any], received: float) -> str:
    """Merge a status; "applied", "stale" (older than the stored one) or "reset" (a later
    start whose counters restarted: the caller forgets the site's numbered keys)."""
    online = body.get("online")
    if not isinstance(online, bool):
        raise Rejected(f"'online' is {json.dumps(online)}, not true or false")
    session, boot_time = _int(body, "session"), _int(body, "boot_time")
    assert session is not None and boot_time is not None
    version, config_version = _text(body, "version"), _text(body, "config_version")
    dropped = body.get("dropped", {})
    if not isinstance(dropped, dict):
        raise Rejected(f"'dropped' is {json.dumps(dropped)}, not an object")
    outcome = "applied"
    if s.session is not None and session < s.session:
        if not online or (s.boot_time is not None and boot_time <= s.boot_time):
            s.stale += 1
            return "stale"
        outcome = "reset"  # both counter files lost on the gateway: its numbers start again
        s.last_session, s.last_seq, s.stamps = 0, 0, {}
    elif s.session == session and s.online is False and online:
        s.stale += 1  # this session's Will is stored: a late "online" copy must not revive it
        return "stale"
    s.online, s.session, s.boot_time = online, session, boot_time
    s.version, s.config_version, s.status_at = version, config_version, received
    if "event" in dropped:
        s.dropped_events = _int(dropped, "event")
    if "telemetry" in dropped:
        s.dropped_telemetry = _int(dropped, "telemetry")
    return outcome


def _newer(s: SiteState, name: str, key: Key) -> bool:
    stamp = s.stamps.get(name)
    return stamp is None or key > (stamp[0], stamp[1])


def apply_numbered(s: SiteState, leaf: str, body: Mapping[str, Any]) -> Key:
    """Merge an event or a telemetry report the ledger has not seen; its key.
    Raises Rejected with nothing changed."""
    key = key_of(body)
    if leaf == "event":
        kind = _text(body, "type")
        up = body.get("up")
        s.events += 1
        if _newer(s, "~event", key):
            s.last_event, s.stamps["~event"] = kind, list(key)
        if kind == "uplink_changed" and isinstance(up, bool) and _newer(s, "ul", key):
            s.uplink, s.stamps["ul"] = up, list(key)
            s.telemetry["ul"] = int(up)
    else:
        _telemetry(s, body, key)
    made = float(body["time"])
    s.last_report = made if s.last_report is None else max(s.last_report, made)
    if key > (s.last_session, s.last_seq):
        s.last_session, s.last_seq = key
    s.messages += 1
    return key


def _telemetry(s: SiteState, body: Mapping[str, Any], key: Key) -> None:
    columns: dict[str, int | None] = {}
    for name, attr in METRIC_FIELDS.items():
        if name in body:
            columns[attr] = _int(body, name, nullable=True)
    ul = body.get("ul")
    if "ul" in body and (ul not in (0, 1, None) or isinstance(ul, bool)):
        raise Rejected(f"'ul' is {json.dumps(ul)}, not 0, 1 or null")
    new = {name for name in body if name not in ENVELOPE and name not in s.telemetry}
    if len(s.telemetry) + len(new) > MAX_TELEMETRY_KEYS:
        raise Rejected(f"more than {MAX_TELEMETRY_KEYS} distinct telemetry keys")
    # Checked first, applied after: a bad report changes nothing.
    for name, value in body.items():
        if name in ENVELOPE or not _newer(s, name, key):
            continue
        s.telemetry[name], s.stamps[name] = value, list(key)
        if name == "ul":
            s.uplink = None if value is None else value == 1
        elif name in METRIC_FIELDS:
            setattr(s, METRIC_FIELDS[name], columns[METRIC_FIELDS[name]])
