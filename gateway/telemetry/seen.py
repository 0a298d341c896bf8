"""The record of command ids already seen, and their first responses (durable).

A command is recorded BEFORE it runs (``begin``: id and expiry, no response
yet) and its response is added after (``finish``). So a crash between the two
leaves the id recorded: after a restart the same id is refused as replayed
(its response unknown) rather than carried out twice — at most one effect.
An entry is kept until the command's expiry plus the allowed clock skew, after
which :func:`gateway.telemetry.commands.verify` refuses the id as expired
anyway; commands live at most a day, so the file stays small.

One JSON file under the state directory, replaced atomically (write, fsync,
rename) at every change; commands are rare, so the cost is a few writes a
day. A damaged file is set aside and an empty record started, logged loudly:
commands still in their validity window could then run a second time, which
the log says.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.loader import write_file_atomic
from gateway.errors import StoreError

log = logging.getLogger("desanet.mqtt")

MAX_ENTRIES = 10_000  # a bound against a flood of valid commands; the oldest go first


@dataclass(frozen=True)
class Seen:
    id: str
    expires: int  # when the entry may be forgotten
    response: dict[str, Any] | None  # None: begun, its outcome never recorded


class SeenCommands:
    """Blocking (file reads and fsyncs): the async methods run them on a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, Seen] = {}
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            self._entries = {k: Seen(k, int(v["expires"]), v.get("response"))
                             for k, v in data["seen"].items()}
        except FileNotFoundError:
            self._entries = {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            bad = self.path.with_suffix(".damaged")
            log.error("the record of seen commands %s is unreadable (%s); set aside as %s. "
                      "Commands still valid could be carried out again.", self.path, exc, bad)
            try:
                self.path.replace(bad)
            except OSError as move:
                raise StoreError(f"cannot set aside {self.path}: {move}") from move
            self._entries = {}

    def get(self, cid: str) -> Seen | None:
        return self._entries.get(cid)

    def _save(self) -> None:
        data = {"v": 1, "seen": {k: {"expires": e.expires, "response": e.response}
                                 for k, e in self._entries.items()}}
        try:
            write_file_atomic(self.path, json.dumps(data, separators=(",", ":")))
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def begin_blocking(self, cid: str, keep_until: int, now: float) -> None:
        self._entries = {k: e for k, e in self._entries.items() if e.expires >= now}
        while len(self._entries) >= MAX_ENTRIES:
            oldest = min(self._entries.values(), key=lambda e: e.expires)
            del self._entries[oldest.id]
        self._entries[cid] = Seen(cid, keep_until, None)
        try:
            self._save()
        except StoreError:
            del self._entries[cid]  # not recorded: it may be sent again and run then
            raise

    def finish_blocking(self, cid: str, response: dict[str, Any]) -> None:
        entry = self._entries.get(cid)
        if entry is not None:
            self._entries[cid] = Seen(cid, entry.expires, response)
            self._save()

    async def begin(self, cid: str, keep_until: int, now: float) -> None:
        """Record ``cid`` as begun (durably, before it runs). Raises StoreError."""
        await asyncio.to_thread(self.begin_blocking, cid, keep_until, now)

    async def finish(self, cid: str, response: dict[str, Any]) -> None:
        """Record the response of ``cid``. Raises StoreError."""
        await asyncio.to_thread(self.finish_blocking, cid, response)
