"""What the daemon is running without: a damaged database it healed around.

A database that was missing, corrupt or unwritable at start does not keep the
hotspot down (DHCP, DNS and the portal still run); instead each such problem is
recorded here, logged loudly, and shown by ``desanet status`` until the daemon
restarts. One registry per process: the databases are opened deep inside the
adapters (the outbox inside the local services), and the status read needs them
all without threading a handle through every constructor.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("desanet.store")


@dataclass(frozen=True, slots=True)
class Problem:
    what: str  # "state database", "submission outbox", ...
    path: str
    problem: str  # "missing", "corrupt", "unwritable", "corrupt at runtime", "backup failed"
    detail: str  # one sentence for people: what happened and what was done
    since: int  # epoch seconds
    moved_to: str | None = None  # where the damaged file was kept (never deleted)
    restored_from: str | None = None  # the backup copied in, if any
    memory_only: bool = False  # running on an in-memory copy: changes are lost at restart


class Health:
    """Thread-safe list of problems; at most one per (path, problem)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._problems: list[Problem] = []

    def report(self, what: str, path: str, problem: str, detail: str, *,
               moved_to: str | None = None, restored_from: str | None = None,
               memory_only: bool = False) -> Problem:
        p = Problem(what, path, problem, detail, int(time.time()), moved_to, restored_from,
                    memory_only)
        with self._lock:
            if any(q.path == path and q.problem == problem for q in self._problems):
                return p
            self._problems.append(p)
        log.error("DEGRADED: %s %s is %s: %s", what, path, problem, detail)
        return p

    def resolve(self, path: str, problem: str) -> bool:
        """Forget a problem that went away by itself (a disk with room again)."""
        with self._lock:
            before = len(self._problems)
            self._problems = [q for q in self._problems
                              if not (q.path == path and q.problem == problem)]
            return len(self._problems) != before

    def problems(self) -> list[Problem]:
        with self._lock:
            return list(self._problems)

    def json(self) -> list[dict[str, Any]]:
        return [asdict(p) for p in self.problems()]

    def clear(self) -> None:
        """Forget every problem (tests; a daemon built again in the same process)."""
        with self._lock:
            self._problems.clear()


DEGRADED = Health()
