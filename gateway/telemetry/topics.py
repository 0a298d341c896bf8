"""The topic tree (pure): ``<prefix>/<site-id>/<leaf>``, documented in docs/mqtt.md.

``status`` is retained (online with the session counter; the Last Will sets it
offline); ``telemetry`` and ``event`` carry the outbox's messages; ``cmd/req``
and ``cmd/res`` are the command request and response topics (dispatch.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Leaf = Literal["status", "telemetry", "event", "cmd/req", "cmd/res"]
LEAVES: tuple[Leaf, ...] = ("status", "telemetry", "event", "cmd/req", "cmd/res")
_FORBIDDEN = ("/", "+", "#", "\0")


@dataclass(frozen=True)
class Topics:
    """Every topic of one gateway; ``prefix`` and ``site`` are validated by the config."""

    prefix: str
    site: str

    def __post_init__(self) -> None:
        if not self.site or any(c in self.site for c in _FORBIDDEN):
            raise ValueError(f"site id {self.site!r} must be one topic level (no '/', '+', '#')")
        if not self.prefix or any(c in self.prefix for c in "+#\0") or self.prefix.startswith("/") \
                or self.prefix.endswith("/") or "//" in self.prefix:
            raise ValueError(f"topic prefix {self.prefix!r} must be levels without wildcards, "
                             "e.g. 'desanet/v1'")

    @property
    def root(self) -> str:
        return f"{self.prefix}/{self.site}"

    def of(self, leaf: Leaf) -> str:
        return f"{self.root}/{leaf}"

    @property
    def status(self) -> str:
        return self.of("status")

    @property
    def telemetry(self) -> str:
        return self.of("telemetry")

    @property
    def event(self) -> str:
        return self.of("event")

    @property
    def cmd_req(self) -> str:
        return self.of("cmd/req")

    @property
    def cmd_res(self) -> str:
        return self.of("cmd/res")

    @property
    def subtree(self) -> str:
        """The filter of everything this gateway sends and receives (for a broker ACL)."""
        return f"{self.root}/#"

    def parse(self, topic: str) -> Leaf | None:
        """The leaf of one of this gateway's topics, or None for any other topic."""
        head = self.root + "/"
        if not topic.startswith(head):
            return None
        rest = topic[len(head):]
        for leaf in LEAVES:
            if rest == leaf:
                return leaf
        return None


def fleet_filter(prefix: str, leaf: Leaf | None = None) -> str:
    """What a consumer subscribes to: one leaf of every site, or everything."""
    return f"{prefix}/+/{leaf}" if leaf else f"{prefix}/#"
