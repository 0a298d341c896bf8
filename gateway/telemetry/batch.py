"""Telemetry batches (pure): which queued messages go now, and how they share a PUBLISH.

Theory of operation
-------------------
Every PUBLISH costs more on the wire than a small report's JSON (the topic, a
TLS record each way for it and its PUBACK, two TCP/IP segments: ~200 bytes),
so telemetry reports wait in the outbox up to ``telemetry_send_interval`` and
leave together (docs/mqtt.md "Batches"). The outbox keeps one sequence for
events and telemetry, and a consumer may keep just the highest ``seq`` it has
per site, so messages still leave in ``seq`` order:

- :func:`held_until` says whether the queued messages may wait: only when they
  are all live telemetry, fewer than :data:`MAX_REPORTS`, the oldest younger
  than the send interval. An event (an operator waits for it) or a message from
  the backlog sends everything queued before it at once.
- :func:`groups` cuts the messages, in order, into PUBLISHes: an event alone;
  a run of telemetry reports of one session together, up to
  :data:`MAX_REPORTS`.
- :func:`encode` makes the payload: an event or a lone report as before
  (version 1); two or more reports as a batch (version 2, one envelope,
  docs/schemas/telemetry-batch.schema.json), zlib-compressed when
  ``telemetry_compress`` is on and that is smaller. A compressed payload is the
  one that does not start with ``{``; every consumer decodes it through
  :func:`gateway.fleet.table.unpack`.

Each report in a batch keeps its own ``seq`` (and ``hist`` mark), so a consumer
dedupes per report as before; a batch acknowledged by one PUBACK removes all
its reports from the outbox, and one not acknowledged is sent again whole.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.telemetry import payloads
from gateway.telemetry.outbox import Message

BATCH_VERSION = 2
MAX_REPORTS = 50  # reports in one PUBLISH (a full report is ~350 bytes of JSON: ~17 kB)
LEVEL = 9  # zlib: the payloads are small, the CPU time is not worth saving


def held_until(rows: Sequence[Message], hist: Mapping[int, bool], now: float,
               send_interval: float) -> float | None:
    """When the queued ``rows`` must go (``hist``: each one's backlog mark), or None: now."""
    if not rows or send_interval <= 0 or len(rows) >= MAX_REPORTS:
        return None
    if any(r.kind != "telemetry" or hist.get(r.seq) for r in rows):
        return None
    due = min(r.created for r in rows) + send_interval
    return None if due <= now else due


def groups(rows: Sequence[Message]) -> list[list[Message]]:
    """``rows`` (in seq order) cut into PUBLISHes: events alone, runs of reports together."""
    out: list[list[Message]] = []
    for row in rows:
        last = out[-1] if out else None
        if (row.kind == "telemetry" and last is not None and last[-1].kind == "telemetry"
                and last[-1].session == row.session and len(last) < MAX_REPORTS):
            last.append(row)
        else:
            out.append([row])
    return out


def batch(who: payloads.Identity, session: int, reports: Sequence[Mapping[str, Any]]
          ) -> dict[str, Any]:
    """A version 2 telemetry message: one envelope, the reports (each with ``seq``, ``time``
    in whole seconds, ``hist`` when true, and its metrics)."""
    return {"v": BATCH_VERSION, "site": who.site, "session": session, "reports": list(reports)}


def report(seq: int, created: float, data: Mapping[str, Any], hist: bool) -> dict[str, Any]:
    body = {"seq": seq, "time": round(created), **data}
    if hist:
        body["hist"] = True
    return body


def encode(who: payloads.Identity, group: Sequence[Message], hist: Mapping[int, bool],
           compress: bool) -> bytes:
    """The payload of one group (see the module docstring)."""
    if len(group) == 1:
        row = group[0]
        return payloads.encode(payloads.message(who, row.seq, row.session, row.created,
                                                json.loads(row.body), hist.get(row.seq, False)))
    raw = payloads.encode(batch(who, group[0].session,
                                [report(r.seq, r.created, json.loads(r.body), hist.get(r.seq, False))
                                 for r in group]))
    if compress:
        packed = zlib.compress(raw, LEVEL)
        if len(packed) < len(raw):
            return packed
    return raw
