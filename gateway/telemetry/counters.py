"""The session counter and the sequence's high-water mark, in a small file of their own.

Why not in the outbox: a damaged outbox is moved aside and a fresh one started
(gateway.store.heal). Were the counters inside it, the session and ``seq`` would
both start at 1 again, and a consumer that dedupes by (site, session, seq), or
keeps the highest ``seq`` per site, would take new messages for copies of old
ones and drop them. This file (JSON, replaced atomically: temp file, fsync,
rename, fsync of the directory) survives that, so neither number ever goes
back while the state directory lives.

``seq`` itself is still handed out by the outbox (SQLite AUTOINCREMENT, in the
transaction of the insert). Writing this file at every insert would cost a
second fsync per message on the SD card, so the outbox *reserves* numbers in
blocks of :data:`SEQ_BLOCK`: before it hands out numbers above ``seq_reserved``
it records ``seq_floor`` (the highest number of that batch) and a new
``seq_reserved`` here. At open, an outbox whose sequence is below
``seq_floor`` is not the one that made those numbers (moved aside, lost,
replaced): it continues above ``seq_reserved``. A few numbers are then skipped,
never repeated. The outbox mirrors the session counter, and keeps its own
sequence, so losing this file alone sends neither back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from gateway.config.loader import write_file_atomic
from gateway.errors import StoreError

SEQ_BLOCK = 1000  # about three days of messages at the default intervals: one write each


@dataclass(frozen=True)
class Marks:
    session: int = 0  # the last session counter handed out
    seq_floor: int = 0  # a seq the outbox is known to have reached (or was about to)
    seq_reserved: int = 0  # no seq above this was handed out


class CounterFile:
    """``Marks`` on disk; every write blocks on its fsyncs and raises StoreError."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._marks: Marks | None = None  # what was last read or written (the only writer)

    def read(self) -> Marks:
        """The marks (all 0 when the file does not exist yet). A file that is not ours
        raises StoreError: guessing would risk numbers going back."""
        if self._marks is None:
            self._marks = self._load()
        return self._marks

    def _load(self) -> Marks:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return Marks()
        except OSError as exc:
            raise StoreError(f"cannot read {self.path}: {exc.strerror or exc}; check the disk "
                             "(SD card)") from exc
        try:
            data = json.loads(text)
            marks = Marks(**{k: int(data[k]) for k in ("session", "seq_floor", "seq_reserved")})
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(f"{self.path} is damaged ({exc}); it holds the telemetry session "
                             "counter: restore it, or write {\"session\": N, \"seq_floor\": S, "
                             "\"seq_reserved\": S} with N and S above the last values the region's "
                             "broker saw") from exc
        if min(marks.session, marks.seq_floor, marks.seq_reserved) < 0:
            raise StoreError(f"{self.path} holds a negative counter: {text.strip()}")
        return marks

    def write(self, marks: Marks) -> None:
        try:
            write_file_atomic(self.path, json.dumps(asdict(marks)) + "\n")
        except OSError as exc:
            raise StoreError(f"cannot write {self.path}: {exc.strerror or exc}; check the disk "
                             "(SD card) and that its directory is writable by root") from exc
        self._marks = marks

    def next_session(self, at_least: int = 0) -> int:
        """The next session counter (above both the file's and ``at_least``), written
        before it is returned."""
        marks = self.read()
        session = max(marks.session, at_least) + 1
        self.write(replace(marks, session=session))
        return session

    def reserve(self, up_to: int) -> None:
        """Make sure seqs up to ``up_to`` may be handed out (writes only past the block)."""
        marks = self.read()
        if up_to > marks.seq_reserved:
            self.write(replace(marks, seq_floor=up_to, seq_reserved=up_to + SEQ_BLOCK))
