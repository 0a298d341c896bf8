"""The fleet table (pure): the messages of the MQTT tree in, one row per gateway out.

Theory of operation
-------------------
`desanet fleet watch` hands every message it receives to :meth:`FleetTable.apply`
with the time it arrived; nothing here does I/O or reads a clock, so the rules
below are tested as tables of messages (tests/unit/test_fleet_table.py).

- The topic names the gateway: ``<prefix>/<site>/<leaf>``. The broker's ACL
  confines each device certificate to its own subtree, so the topic, not the
  payload, is what can be trusted; a payload naming another site is rejected.
- ``status`` (retained) says online or offline, the software and config
  versions and the session counter. An offline status whose session is below
  the last one seen is a stale Will of an older run (docs/mqtt.md): ignored.
- ``telemetry`` reports by exception: a metric absent from a report did not
  move, so every row keeps the last value it was given; ``null`` means the
  gateway does not know it (e.g. the uplink before its first probe).
- ``event``: counted, the last type kept; ``uplink_changed`` updates the uplink.
- Events and telemetry share one sequence number per gateway and leave its
  outbox in order; one at or below the last applied is a duplicate (QoS 1
  after a crash) or a late copy and changes nothing.
- ``last_seen`` is when this watcher received a live (not retained) message
  of the gateway, on its own clock, even an unreadable one (the ACL lets only
  that gateway publish there); a retained status says nothing about when.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PAYLOAD_VERSION = 1
BATCH_VERSION = 2  # telemetry only: several reports in one PUBLISH
LEAVES = ("status", "telemetry", "event")
# telemetry key (docs/schemas/telemetry.schema.json) -> Row attribute
METRIC_FIELDS: Mapping[str, str] = {
    "cc": "clients", "ca": "authorized", "lat": "latency_ms", "qf": "queued_forms", "bl": "backlog",
}


class Rejected(ValueError):
    """A payload this watcher cannot use; the message says why."""


@dataclass
class Row:
    """What the fleet knows of one gateway; None: not (yet) reported."""

    site: str
    online: bool | None = None
    version: str | None = None
    config_version: str | None = None
    session: int | None = None
    boot_time: int | None = None
    last_seen: float | None = None  # this watcher's clock, live messages only
    last_report: float | None = None  # the gateway's clock: "time" of its newest event/telemetry
    clients: int | None = None
    authorized: int | None = None
    uplink: bool | None = None
    latency_ms: int | None = None
    queued_forms: int | None = None
    backlog: int | None = None
    events: int = 0
    last_event: str | None = None
    seq: int = 0  # the highest sequence number applied
    duplicates: int = 0
    stale: int = 0  # Wills of older sessions, ignored
    rejected: int = 0
    problem: str | None = None  # why the last rejected payload was

    def to_json(self) -> dict[str, Any]:
        return {
            "site": self.site, "online": self.online, "version": self.version,
            "config_version": self.config_version, "session": self.session,
            "boot_time": self.boot_time, "last_seen": self.last_seen,
            "last_report": self.last_report, "clients": self.clients,
            "authorized": self.authorized,
            "uplink": None if self.uplink is None else ("up" if self.uplink else "down"),
            "latency_ms": self.latency_ms, "queued_forms": self.queued_forms,
            "backlog": self.backlog, "events": self.events, "last_event": self.last_event,
            "seq": self.seq, "duplicates": self.duplicates, "stale": self.stale,
            "rejected": self.rejected, "problem": self.problem,
        }


def _int(body: Mapping[str, Any], key: str, required: bool = True) -> int | None:
    value = body.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if value is None and not required:
        return None
    raise Rejected(f"{key!r} is {json.dumps(value)}, not an integer")


def _number(body: Mapping[str, Any], key: str) -> float:
    value = body.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise Rejected(f"{key!r} is {json.dumps(value)}, not a number")


def _text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if isinstance(value, str):
        return value
    raise Rejected(f"{key!r} is {json.dumps(value)}, not a string")


MAX_INFLATED = 1024 * 1024  # a compressed batch may unpack to at most this (a bomb is refused)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: inf, which SQLite and the ordering cannot take
        raise ValueError(f"number {text} out of range")
    return value


def _int64(text: str) -> int:
    value = int(text)
    if not -(1 << 63) <= value < 1 << 63:  # what SQLite's INTEGER and PostgreSQL's BIGINT hold
        raise ValueError(f"integer {text[:20]}... out of range")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")  # Python's json reads NaN and Infinity


def _object(payload: bytes) -> dict[str, Any]:
    # Every failure is Rejected: any other exception from one gateway's payload would be
    # taken for a database failure by serve, which then retries the batch for ever.
    try:
        body = json.loads(payload, parse_float=_finite, parse_int=_int64,
                          parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected(f"not JSON ({exc})") from None
    except RecursionError:
        raise Rejected("JSON nested too deep") from None
    if not isinstance(body, dict):
        raise Rejected("not a JSON object")
    return body


def _site(body: Mapping[str, Any], site: str) -> None:
    if body.get("site") != site:
        raise Rejected(f"names site {json.dumps(body.get('site'))} on the topic of {site!r}")


def decode(payload: bytes, site: str) -> dict[str, Any]:
    """The JSON object of a version 1 payload of ``site``, version checked; raises Rejected."""
    body = _object(payload)
    if body.get("v") != PAYLOAD_VERSION:
        raise Rejected(f"payload version {json.dumps(body.get('v'))}; this watcher reads "
                       f"version {PAYLOAD_VERSION} (and {BATCH_VERSION}, a batch, on telemetry)")
    _site(body, site)
    return body


def inflate(payload: bytes) -> bytes:
    """A compressed telemetry payload (zlib, RFC 1950) back to its JSON; raises Rejected."""
    unzip = zlib.decompressobj()
    try:
        out = unzip.decompress(payload, MAX_INFLATED)
    except zlib.error as exc:
        raise Rejected(f"neither JSON nor zlib-compressed JSON ({exc})") from None
    if unzip.unconsumed_tail:
        raise Rejected(f"a compressed payload larger than {MAX_INFLATED} bytes unpacked")
    if not unzip.eof:
        raise Rejected("a compressed payload cut short")
    return out


def _batch(body: Mapping[str, Any], site: str) -> list[dict[str, Any]]:
    """A version 2 telemetry batch as its reports, each in the version 1 form."""
    _site(body, site)
    session = _int(body, "session")
    reports = body.get("reports")
    if not isinstance(reports, list) or not all(isinstance(r, dict) for r in reports):
        raise Rejected("'reports' is not a list of JSON objects")
    extra = set(body) - {"v", "site", "session", "reports"}
    if extra:
        raise Rejected(f"unknown key(s) {sorted(extra)} in a batch")
    out = []
    for item in reports:
        if {"v", "site", "session"} & set(item):
            raise Rejected("a report in a batch repeats the batch's envelope")
        out.append({"v": PAYLOAD_VERSION, "site": site, "session": session, **item})
    return out


def unpack(payload: bytes, site: str, leaf: str) -> list[dict[str, Any]]:
    """The messages one PUBLISH of ``site`` on ``leaf`` carries, each version checked and in
    the version 1 form (the envelope ``v``, ``site``, ``session`` in each); raises Rejected.
    Every consumer (watch, serve) reads payloads through here, so a new wire form is
    decoded in one place. Telemetry may come as a batch (``"v": 2``, docs/mqtt.md
    "Batches"), zlib-compressed (a payload that does not start with ``{``)."""
    if len(payload) > MAX_INFLATED:  # a gateway's batch is ~17 kB; the broker may allow 256 MB
        raise Rejected(f"a payload of {len(payload)} bytes; at most {MAX_INFLATED}")
    if leaf != "telemetry":
        return [decode(payload, site)]
    if payload.lstrip()[:1] != b"{":
        payload = inflate(payload)
    body = _object(payload)
    if body.get("v") == BATCH_VERSION:
        return _batch(body, site)
    return [decode(payload, site)]


@dataclass
class FleetTable:
    """Every gateway under ``prefix`` (see the module docstring)."""

    prefix: str = "desanet/v1"
    sites: dict[str, Row] = field(default_factory=dict)
    ignored: int = 0  # messages on topics outside <prefix>/<site>/{status,telemetry,event}

    def split(self, topic: str) -> tuple[str, str] | None:
        """(site, leaf) of a topic of the tree, else None."""
        head = self.prefix + "/"
        if not topic.startswith(head):
            return None
        site, _, leaf = topic[len(head):].partition("/")
        if not site or leaf not in LEAVES:
            return None
        return site, leaf

    def apply(self, topic: str, payload: bytes, retained: bool, received: float) -> bool:
        """Take one message in; True when a row changed."""
        where = self.split(topic)
        if where is None:
            self.ignored += 1
            return False
        site, leaf = where
        row = self.sites.setdefault(site, Row(site))
        if not payload and leaf == "status" and retained:
            # An empty retained message deletes the retained status: the gateway was retired.
            del self.sites[site]
            return True
        try:
            changed = False
            for body in unpack(payload, site, leaf):
                changed |= (self._status(row, body) if leaf == "status"
                            else self._numbered(row, leaf, body))
        except Rejected as exc:
            row.rejected += 1
            row.problem = f"{leaf}: {exc}"
            changed = True
        if not retained:  # unreadable or not, it came from the gateway just now
            row.last_seen = received if row.last_seen is None else max(row.last_seen, received)
            changed = True
        return changed

    def _status(self, row: Row, body: Mapping[str, Any]) -> bool:
        online = body.get("online")
        if not isinstance(online, bool):
            raise Rejected(f"'online' is {json.dumps(online)}, not true or false")
        session = _int(body, "session")
        boot_time = _int(body, "boot_time")
        assert session is not None and boot_time is not None
        version, config_version = _text(body, "version"), _text(body, "config_version")
        if row.session is not None and session < row.session:
            if not online:
                row.stale += 1  # the Will of an older run, published after the new one's status
                return True
            if row.boot_time is not None and boot_time <= row.boot_time:
                row.stale += 1
                return True
            row.seq = 0  # a later start with a lower counter: its state directory was wiped
        row.online, row.session, row.boot_time = online, session, boot_time
        row.version, row.config_version = version, config_version
        return True

    def _numbered(self, row: Row, leaf: str, body: Mapping[str, Any]) -> bool:
        seq = _int(body, "seq")
        _int(body, "session")
        made = _number(body, "time")
        assert seq is not None
        if seq <= row.seq:
            row.duplicates += 1
            return True
        if leaf == "event":
            self._event(row, body)
        else:
            self._telemetry(row, body)
        row.seq = seq
        row.last_report = made if row.last_report is None else max(row.last_report, made)
        return True

    @staticmethod
    def _event(row: Row, body: Mapping[str, Any]) -> None:
        kind = _text(body, "type")
        if kind == "uplink_changed" and isinstance(body.get("up"), bool):
            row.uplink = body["up"]
        row.events += 1
        row.last_event = kind

    @staticmethod
    def _telemetry(row: Row, body: Mapping[str, Any]) -> None:
        updates: dict[str, int | None] = {}
        for key, attr in METRIC_FIELDS.items():
            if key in body:  # absent: did not move; null: unknown
                updates[attr] = _int(body, key, required=False)
        uplink: bool | None = row.uplink
        if "ul" in body:
            if body["ul"] not in (0, 1, None) or isinstance(body["ul"], bool):
                raise Rejected(f"'ul' is {json.dumps(body['ul'])}, not 0, 1 or null")
            uplink = None if body["ul"] is None else body["ul"] == 1
        for attr, value in updates.items():  # all checked first: a bad report changes nothing
            setattr(row, attr, value)
        row.uplink = uplink

    def rows(self) -> list[Row]:
        return [self.sites[s] for s in sorted(self.sites)]

    def summary(self) -> dict[str, int]:
        rows = self.rows()
        return {"gateways": len(rows), "online": sum(r.online is True for r in rows),
                "offline": sum(r.online is False for r in rows),
                "unknown": sum(r.online is None for r in rows)}

    def to_json(self) -> dict[str, Any]:
        return {"prefix": self.prefix, **self.summary(), "ignored": self.ignored,
                "sites": [r.to_json() for r in self.rows()]}


# -- the text table ----------------------------------------------------------------------

COLUMNS = ("SITE", "STATE", "VERSION", "SESSION", "SEEN", "CLIENTS", "AUTH", "UPLINK", "FORMS",
           "BACKLOG")


def age(seconds: float) -> str:
    """A short age: "4s", "12m", "3h", "2d"."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


# C0 (newline and tab too: a cell is one line), DEL and C1: a gateway's version string or
# event type must not drive the operator's terminal (clear it, set its clipboard: OSC 52).
_CONTROLS = {c: "\ufffd" for c in [*range(0x00, 0x20), *range(0x7f, 0xa0)]}


def _cell(value: object) -> str:
    return "-" if value is None else str(value).translate(_CONTROLS)


def cells(row: Row, now: float) -> tuple[str, ...]:
    state = {True: "online", False: "OFFLINE", None: "?"}[row.online]
    uplink = {True: "up", False: "DOWN", None: "-"}[row.uplink]
    if row.uplink and row.latency_ms is not None:
        uplink = f"up {row.latency_ms}ms"
    seen = "-" if row.last_seen is None else age(now - row.last_seen)
    return (_cell(row.site), state, _cell(row.version), _cell(row.session), seen,
            _cell(row.clients), _cell(row.authorized), uplink, _cell(row.queued_forms), _cell(row.backlog))


def render(table: FleetTable, now: float) -> list[str]:
    """The table as text lines, columns padded to their widest cell."""
    body = [cells(r, now) for r in table.rows()]
    widths = [max(len(c[i]) for c in [COLUMNS, *body]) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [COLUMNS, *body]]
    problems = [f"  {_cell(r.site)}: {r.rejected} unreadable message(s), "
                f"last: {_cell(r.problem)}"
                for r in table.rows() if r.rejected]
    return lines + problems
