"""What the gateway publishes, as JSON (pure); the shapes are docs/schemas/*.schema.json.

No personal data leaves the village (UU 27/2022): events are reduced to an
allow-list of fields per type (:data:`EVENT_FIELDS`), so a MAC, an address,
a voucher code or the name of who ran a command never reaches the broker. A
new event type publishes its type and nothing else until it is listed here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.core.events import Event

VERSION = 1  # the "v" of every payload; a change that breaks a consumer raises it
def _keep(value: object) -> object:
    return value


def _paths(changes: object) -> list[str]:
    """Config change lines ("access.trusted_macs: [] -> ['02:..']") cut to their field
    paths: the values may name a device (a trusted MAC) or hold a secret."""
    items = changes if isinstance(changes, list | tuple) else []
    return [str(line).split(": ", 1)[0] for line in items]


# Per event type: output key -> (event field, transform). Anything not listed is dropped.
_F = Callable[[object], object]
EVENT_FIELDS: Mapping[str, Mapping[str, tuple[str, _F]]] = {
    "session_started": {"source": ("source", _keep), "plan": ("plan", _keep),
                        "with_voucher": ("voucher", lambda v: v is not None)},
    "session_ended": {"reason": ("reason", _keep)},
    "plan_changed": {"plan": ("plan", _keep)},
    "config_applied": {"version": ("version", _keep),
                       "previous_version": ("previous_version", _keep),
                       "source": ("source", _keep), "changes": ("changes", _paths),
                       "trial_deadline": ("trial_deadline", _keep)},
    "config_confirmed": {"version": ("version", _keep), "source": ("source", _keep)},
    # Their free-text reasons are left out: they quote config values and file paths.
    "config_rolled_back": {"version": ("version", _keep), "from_version": ("from_version", _keep),
                           "source": ("source", _keep)},
    "config_refused": {"source": ("source", _keep), "step": ("step", _keep)},
    "uplink_changed": {"up": ("up", _keep), "since": ("since", _keep), "reason": ("reason", _keep),
                       "latency_ms": ("latency_ms", _keep)},
    "service_health_changed": {"service": ("service", _keep), "state": ("state", _keep)},
    "voucher_batch_created": {"count": ("count", _keep), "plan": ("plan", _keep),
                              "duration": ("duration", _keep)},
    "voucher_revoked": {"sessions_ended": ("sessions_ended", _keep)},
    "voucher_released": {"sessions_ended": ("sessions_ended", _keep)},
    # the command's arguments are left out: a deauth names a MAC, a revoke a voucher code
    "command_handled": {"id": ("id", _keep), "name": ("name", _keep),
                        "outcome": ("outcome", _keep), "reason": ("reason", _keep)},
}


def event_data(event: Event) -> dict[str, Any]:
    """The publishable part of ``event``: its type and its allow-listed fields."""
    plain = event.to_json()
    data: dict[str, Any] = {"type": event.type}
    for key, (name, transform) in EVENT_FIELDS.get(event.type, {}).items():
        if name in plain:
            data[key] = transform(plain[name])
    return data


@dataclass(frozen=True)
class Identity:
    """What every status names: the software, when it started, its session counter."""

    site: str
    version: str
    boot_time: int
    session: int


def status(who: Identity, config_version: str, online: bool = True,
           dropped: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The retained status; with ``online=False`` it is the Last Will. ``dropped``: the
    backlog's drops per kind, sent only once there was one (a few bytes, once a connect)."""
    body = {"v": VERSION, "online": online, "site": who.site, "version": who.version,
            "config_version": config_version, "boot_time": who.boot_time,
            "session": who.session}
    if dropped and any(dropped.values()):
        body["dropped"] = dict(dropped)
    return body


def historical(seq: int, made_in: int, backlog_top: int, session: int, created: float,
               now: float, interval: float) -> bool:
    """Whether a message is sent from the backlog rather than live: it was queued while
    the gateway was not connected (in the outbox when this connection began, i.e. ``seq``
    up to ``backlog_top``; or made by an earlier run of the daemon), or it is older than
    one telemetry ``interval`` when sent."""
    return seq <= backlog_top or made_in < session or now - created > interval


def message(who: Identity, seq: int, session: int, created: float, data: Mapping[str, Any],
            hist: bool = False) -> dict[str, Any]:
    """An outbox message as sent: ``session`` and ``created`` are those of its making,
    ``seq`` its place in this gateway's sequence (the consumer dedupes by site and seq);
    ``"hist": true`` marks one sent from the backlog (:func:`historical`), absent when live."""
    body = {"v": VERSION, "site": who.site, "session": session, "seq": seq,
            "time": round(created, 3), **data}
    if hist:
        body["hist"] = True
    return body


def encode(payload: Mapping[str, Any]) -> bytes:
    """Compact JSON, UTF-8."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
