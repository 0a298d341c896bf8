"""Per-service upstream health, as the catalog page and telemetry show it.

Pure bookkeeping: the proxy reports each upstream outcome; nothing here does
I/O. A service is "online" after any answer (a 5xx too: its server is
reachable), "offline" after a connection error or timeout (no answer at all),
and "unknown" until its upstream was first tried. The state drives the
catalog badge, the offline banner and whether forms are queued at once, so a
5xx from one URL must not flip it: 5xx answers are counted per URL instead
(``failing``), where they only matter for that URL (its stale copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

HealthState = Literal["unknown", "online", "offline"]
MAX_FAILING_URLS = 32  # the most recent ones are enough to show what fails


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
    # URL -> (time, "HTTP 503") of its last answer when that was a 5xx; cleared by a good one.
    failing: dict[str, tuple[float, str]] = field(default_factory=dict)

    def record_answer(self, now: float, url: str, status: int) -> bool:
        """Note an answer from the upstream (the service is reachable); a 5xx is kept
        against ``url`` only. True when the service just came back."""
        if status >= 500:
            self.failing.pop(url, None)
            self.failing[url] = (now, f"HTTP {status}")
            while len(self.failing) > MAX_FAILING_URLS:
                del self.failing[next(iter(self.failing))]
        elif self.failing:
            self.failing.pop(url, None)
        return self.record_ok(now)

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
            "failing_urls": {url: {"at": at, "error": text}
                             for url, (at, text) in self.failing.items()},
        }
