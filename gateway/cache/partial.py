"""Writing one 206 answer into the store's partial entries (RFC 9111 §3.3, §3.4).

Theory of operation
-------------------
A partial entry is a row of the store's ``entries`` table whose ``ranges``
column is set (``{"length": N, "held": [[first, last], ...]}``) and whose
``size`` is the number of bytes held (what it costs the disk, for the size
limit and eviction).  Its body file is ``N`` bytes long (made with
``ftruncate``, so it is sparse): byte *i* of the representation is at offset
*i*, and only the held ranges are ever read.  The store's file system must
keep holes sparse (ext4, as on the gateway image); a representation longer
than the whole cache is never kept as parts, so a file system without holes
can at worst use the cache's size once.

``PartialWriter`` receives the bytes of one 206 answer (``first``..``last``):

* **new** (nothing stored with this validator): the bytes go into a new sparse
  file in ``tmp/``, which is fsync'ed, renamed into ``bodies/`` and only then
  indexed, in the transaction that drops the older partial entry of the same key
  and Vary values (a different validator: another representation, never mixed).
* **combine** (a partial entry with the same strong validator): the bytes not yet
  held are written *in place* into that entry's file, at offsets no index row
  claims; after the fsync the row's ranges grow in one transaction (checked to
  still name that same file).  A crash before that transaction leaves bytes in a
  hole the index does not claim, never a claimed byte changed; readers of held
  ranges never see a write.

Only a prefix that arrived is recorded (a cut answer still keeps its first
bytes).  When the held ranges cover the whole representation the row becomes a
complete 200 entry (``Content-Length`` = N, no ``Content-Range``) that replaces
any older complete copy of the same key and Vary values.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from gateway.cache.ranges import (
    Held,
    PartialState,
    add_range,
    held_bytes,
    is_complete,
    missing,
    strong_validator,
)
from gateway.cache.rules import StoredMeta
from gateway.cache.staged import StagedFile
from gateway.errors import StoreError

if TYPE_CHECKING:
    from gateway.cache.store import CacheStore, Entry


class PartialWriter(StagedFile):
    """Streams the bytes ``first``..``last`` of a ``length``-byte representation.

    ``base``: the partial entry to combine into (same key, Vary values and strong
    validator), or None for a new partial entry.  ``commit`` records what arrived;
    ``abort`` records nothing.  Blocking only in ``commit`` (fsync).
    """

    def __init__(self, store: CacheStore, key: str, meta: StoredMeta, first: int, last: int,
                 length: int, base: Entry | None) -> None:
        self._store, self.key, self.meta = store, key, meta
        self.first, self.last, self.length, self.base = first, last, length, base
        self.received = 0
        self.failed: OSError | None = None
        self._done = False
        if base is not None and base.partial is not None:
            self.path: Path = base.path
            self.tmp_path: Path | None = None
            self._gaps = missing(base.partial.held, first, last)
            self._file: BinaryIO | None = open(base.path, "r+b")  # noqa: SIM115 - closed in commit/abort
        else:
            self.name = secrets.token_hex(16)
            self.tmp_path = store.directory / "tmp" / self.name
            self.path = store.directory / "bodies" / self.name
            self._gaps = [(first, last)]
            self._file = open(self.tmp_path, "xb")  # noqa: SIM115 - closed in commit/abort
            try:
                self._file.truncate(length)  # sparse: the holes cost no disk
            except OSError:
                self._discard()
                raise

    @property
    def storing(self) -> bool:
        return self.failed is None and not self._done

    def write(self, chunk: bytes) -> None:
        """Write the next bytes of the answer where they belong (only into gaps when
        combining); bytes past ``last`` are ignored (the answer is longer than it said)."""
        if self._done:
            raise StoreError("partial cache writer used after commit/abort")
        start = self.first + self.received
        end = min(start + len(chunk) - 1, self.last)
        self.received += max(0, end - start + 1)
        if self.failed is not None or self._file is None or end < start:
            return
        try:
            for a, b in self._gaps:
                lo, hi = max(a, start), min(b, end)
                if lo <= hi:
                    self._file.seek(lo)
                    self._file.write(chunk[lo - start:hi - start + 1])
        except OSError as exc:  # disk full or failing: not stored, the villager still gets it
            self.failed = exc
            self._discard()

    def written(self) -> tuple[int, int] | None:
        """The range that arrived (a prefix of first..last), None if nothing did."""
        return (self.first, self.first + self.received - 1) if self.received else None

    def _worth_keeping(self) -> bool:
        return self.written() is not None

    def _publish(self) -> Entry | None:
        return self._store._publish_partial(self)

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.tmp_path is not None:  # never the published file of a base entry
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp_path)


def complete_meta(meta: StoredMeta, length: int) -> StoredMeta:
    """The headers of the combined parts as a complete 200 (RFC 9110 §15.3.7.3)."""
    headers = {k: v for k, v in meta.headers.items() if k not in ("content-range", "content-length")}
    headers["content-length"] = str(length)
    return StoredMeta(200, headers, meta.request_time, meta.response_time, dict(meta.vary))


def part_meta(meta: StoredMeta) -> StoredMeta:
    """A 206's metadata as a partial entry keeps it: no Content-Range / Content-Length
    (they describe one part; served answers get their own)."""
    headers = {k: v for k, v in meta.headers.items() if k not in ("content-range", "content-length")}
    return StoredMeta(206, headers, meta.request_time, meta.response_time, dict(meta.vary))


def held_json(length: int, held: Held) -> dict[str, object]:
    return {"length": length, "held": [list(r) for r in held]}


# -- the store's side (CacheStore.begin_partial and the commit), kept here so that the
# store module stays about complete entries; these use its lock, index and SQLite.


def begin(store: CacheStore, key: str, meta: StoredMeta, first: int, last: int,
          length: int) -> PartialWriter | None:
    """See ``CacheStore.begin_partial``."""
    from gateway.cache.store import _vary_key

    validator = strong_validator(meta.headers)
    vary = _vary_key(meta)
    base = None
    if validator is not None:
        for e in store.lookup_partial(key):
            if (e.partial is not None and e.partial.length == length
                    and _vary_key(e.meta) == vary and strong_validator(e.meta.headers) == validator):
                base = e
    held = add_range(base.partial.held if base is not None and base.partial else (), first, last)
    if held_bytes(held) > store.max_object_bytes or not 0 <= first <= last < length:
        return None
    if length > store.max_bytes:
        return None  # its sparse file may not be longer than the whole cache (see above)
    try:
        return PartialWriter(store, key, part_meta(meta), first, last, length, base)
    except OSError as exc:
        if base is not None:
            return None  # its file went (evicted meanwhile): this part is not stored
        raise StoreError(f"cannot create a temp file in {store.directory / 'tmp'}: {exc}") from exc


def publish(store: CacheStore, writer: PartialWriter) -> Entry | None:
    """Index what ``writer`` wrote (its file is fsync'ed): a new row, or the grown ranges of
    its base row; a complete one becomes a 200.  None when the base row went meanwhile."""
    from gateway.cache.store import Entry, _fsync_dir, _meta_to_json, _vary_key

    got = writer.written()
    assert got is not None
    combine = writer.tmp_path is None
    if not combine:
        assert writer.tmp_path is not None
        os.replace(writer.tmp_path, writer.path)
        _fsync_dir(store.directory / "bodies")
    vary = _vary_key(writer.meta)
    now = time.time()
    db = store._db
    with store._lock:
        held = add_range((), *got)
        entry_id: int | None = None
        if combine:
            assert writer.base is not None
            current = store._index.by_id(writer.base.id)
            if current is None or current.path != writer.path or current.partial is None:
                return None  # replaced or evicted while we wrote: these bytes are nobody's
            held = add_range(current.partial.held, *got)
            entry_id = current.id
        done = is_complete(held, writer.length)
        meta = complete_meta(writer.meta, writer.length) if done else writer.meta
        size = writer.length if done else held_bytes(held)
        ranges = None if done else json.dumps(held_json(writer.length, held))
        try:
            with store._tx():
                # A complete copy replaces every older row of these Vary values; a part
                # replaces only another partial entry (another representation).
                old = db.execute(
                    "SELECT id, size, body FROM entries WHERE key = ? AND vary = ? AND id != ?"
                    + ("" if done else " AND ranges IS NOT NULL"),
                    (writer.key, vary, -1 if entry_id is None else entry_id)).fetchall()
                db.executemany("DELETE FROM entries WHERE id = ?", [(r[0],) for r in old])
                if entry_id is not None:
                    before = int(db.execute("SELECT size FROM entries WHERE id = ?",
                                            (entry_id,)).fetchone()[0])
                    db.execute("UPDATE entries SET meta = ?, vary = ?, size = ?, ranges = ?, "
                               "last_used = MAX(last_used, ?) WHERE id = ?",
                               (_meta_to_json(meta), vary, size, ranges, now, entry_id))
                else:
                    before = 0
                    cur = db.execute(
                        "INSERT INTO entries (key, vary, meta, size, body, last_used, ranges) "
                        "VALUES (?,?,?,?,?,?,?)",
                        (writer.key, vary, _meta_to_json(meta), size, writer.path.name, now, ranges))
                    entry_id = int(cur.lastrowid or 0)
        except BaseException:
            if not combine:
                with contextlib.suppress(OSError):
                    os.unlink(writer.path)
            raise
        for r in old:
            store._forget(r[0])
        store._unlink_bodies([r[2] for r in old])
        store._total += size - before - sum(r[1] for r in old)
        entry = Entry(entry_id, writer.key, meta, size, writer.path, now,
                      None if done else PartialState(writer.length, held))
        store._index.add(entry)
        store._changed(writer.key)  # e.g. a prepared hit (hitpath.py) of this key must go
        store._evict()
    return entry
