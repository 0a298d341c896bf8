"""Per-service upstream health, as the catalog page and telemetry show it.

Pure bookkeeping: the proxy reports each upstream outcome; nothing here does
I/O. A service is "online" after a success, "offline" after a connection
error, timeout or 5xx, and "unknown" until its upstream was first tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

HealthState = Literal["unknown", "online", "offline"]


@dataclass
class ServiceHealth:
    slug: str
    state: HealthState = "unknown"
    last_ok: float | None = None
    last_error: float | None = None
    last_error_text: str = ""
    consecutive_errors: int = 0
    requests: int = 0
    errors: int = 0

    def record_ok(self, now: float) -> bool:
        """Note a success; return True when the service just came back."""
        came_back = self.state == "offline"
        self.state = "online"
        self.last_ok = now
        self.consecutive_errors = 0
        self.requests += 1
        return came_back

    def record_error(self, now: float, text: str) -> None:
        self.state = "offline"
        self.last_error = now
        self.last_error_text = text[:200]
        self.consecutive_errors += 1
        self.requests += 1
        self.errors += 1

    def mark_offline(self, now: float, why: str) -> bool:
        """The gateway's uplink is down, so this service is too (no request was made);
        True when it was not offline yet."""
        was = self.state
        self.state = "offline"
        self.last_error = now
        self.last_error_text = why[:200]
        return was != "offline"

    def as_json(self) -> dict[str, object]:
        return {
            "state": self.state,
            "last_ok": self.last_ok,
            "last_error": self.last_error,
            "last_error_text": self.last_error_text,
            "consecutive_errors": self.consecutive_errors,
            "requests": self.requests,
            "errors": self.errors,
        }
