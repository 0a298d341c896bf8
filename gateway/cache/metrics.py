"""The caching proxy's counters, cache-wide and per service (the TUI's Services page and
``desanet services`` show each service's hit ratio).

A counter that says how a request was answered (a hit, a miss, a stale copy) is counted
with :meth:`Metrics.count`, for the whole cache and for the service of the request. The
proxy's entry point sets that service for the task serving the request
(:func:`serving`), so the code deep in the proxy that counts need not carry it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

# The counters of the hit ratio: answered from the store (the first three) or not (misses).
RATIO_COUNTERS = ("hits", "stale_served", "stale_while_revalidate", "misses")

# The slug of the service whose request the current task serves ("" outside one).
_SERVICE: contextvars.ContextVar[str] = contextvars.ContextVar("desanet_cache_service",
                                                               default="")


@contextmanager
def serving(slug: str) -> Iterator[None]:
    """Count what happens inside as the service ``slug``'s."""
    token = _SERVICE.set(slug)
    try:
        yield
    finally:
        _SERVICE.reset(token)


def hit_ratio(counts: dict[str, int]) -> float | None:
    """Answers from the store over those plus misses (None before any: not 0%). 304
    revalidations, pass-throughs and forms are not in it."""
    served = sum(counts.get(name, 0) for name in RATIO_COUNTERS)
    return round((served - counts.get("misses", 0)) / served, 4) if served else None


@dataclass
class Metrics:
    requests: int = 0
    hits: int = 0
    misses: int = 0
    revalidated: int = 0  # 304 from upstream: stored copy reused
    stale_served: int = 0  # upstream unreachable or failing: stored copy served
    stale_while_revalidate: int = 0
    collapsed: int = 0  # requests that waited for another's upstream fetch
    passthrough: int = 0
    upstream_errors: int = 0
    bytes_from_cache: int = 0
    bytes_from_upstream: int = 0
    # slug -> the RATIO_COUNTERS of that service's requests (since the daemon started)
    per_service: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, counter: str, service: str | None = None) -> None:
        """One more ``counter``, for the cache and for ``service`` (default: the one the
        current task serves, see :func:`serving`)."""
        setattr(self, counter, getattr(self, counter) + 1)
        slug = _SERVICE.get() if service is None else service
        if slug and counter in RATIO_COUNTERS:
            counts = self.per_service.setdefault(slug, dict.fromkeys(RATIO_COUNTERS, 0))
            counts[counter] += 1

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)
                                if f.name != "per_service"}
        data["hit_ratio"] = hit_ratio(data)
        return data

    def service_json(self, slug: str) -> dict[str, Any]:
        """``{"hits", "stale_served", "stale_while_revalidate", "misses", "hit_ratio"}``
        of one service (zeros and a None ratio before its first request)."""
        counts = dict(self.per_service.get(slug) or dict.fromkeys(RATIO_COUNTERS, 0))
        return {**counts, "hit_ratio": hit_ratio(counts)}
