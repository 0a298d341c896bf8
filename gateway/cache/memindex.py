"""In-memory views of the disk store, so that a cache hit touches neither SQLite nor the disk.

Theory of operation
-------------------
``CacheStore`` is the only writer of its directory (it holds an exclusive
``flock``), so it can keep, next to the SQLite index, a copy of every row in
memory and update both in the same locked section:

* ``MemIndex``: key -> the stored variants (``Entry`` with the parsed
  ``StoredMeta``), key -> the partial entries (206 parts, ``Entry.partial`` set;
  kept apart so that no caller looking for a complete response ever gets one),
  and id -> ``Entry``.  Loaded once at open, after crash
  recovery and eviction; then changed only by ``_publish`` (insert, replacing
  the same key and Vary values), ``update_meta`` (304), ``delete`` and
  eviction, always *after* their SQLite transaction committed.  A failed
  transaction leaves both unchanged.  Lookups are dict reads: no SQL, no JSON.
* ``BodyCache``: the bytes of small bodies (at most ``max_item`` bytes each,
  ``max_bytes`` in total, least recently used dropped first), filled on the
  first hit from the file (whose size is checked as ``open_body`` does) and
  dropped whenever the entry is deleted, replaced or evicted.  Each body is
  kept with its file name: SQLite may reuse the id of a deleted row, never the
  random file name, so a reused id can never serve another response's body.

Memory: the index holds the stored headers of every entry, about 2.7 KB
per entry with 8 header fields (measured with tracemalloc: 20,000 stored
pages take about 55 MB); the body cache is bounded by ``max_bytes``
(32 MiB by default).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.cache.store import Entry

BODY_CACHE_BYTES = 32 * 1024 * 1024
BODY_CACHE_ITEM = 64 * 1024


class MemIndex:
    """key -> variants (ordered by id, as the SQL lookup was), id -> entry.  Not locked:
    the store calls it with its own lock held."""

    def __init__(self) -> None:
        self._by_key: dict[str, list[Entry]] = {}
        self._partials: dict[str, list[Entry]] = {}
        self._by_id: dict[int, Entry] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, key: str) -> list[Entry]:
        return self._by_key.get(key, [])

    def get_partials(self, key: str) -> list[Entry]:
        return self._partials.get(key, [])

    def _lists(self, entry: Entry) -> dict[str, list[Entry]]:
        return self._by_key if entry.partial is None else self._partials

    def by_id(self, entry_id: int) -> Entry | None:
        return self._by_id.get(entry_id)

    def entries(self) -> list[Entry]:
        return list(self._by_id.values())

    def add(self, entry: Entry) -> None:
        self.remove(entry.id)
        variants = self._lists(entry).setdefault(entry.key, [])
        variants.append(entry)
        if len(variants) > 1 and variants[-2].id > entry.id:
            variants.sort(key=lambda e: e.id)
        self._by_id[entry.id] = entry

    def replace(self, entry: Entry) -> None:
        """Swap in a new version of an indexed entry (same id, e.g. new meta)."""
        old = self._by_id.get(entry.id)
        if old is None:
            return
        if (old.partial is None) != (entry.partial is None):
            self.add(entry)  # moved between the complete and the partial lists
            return
        variants = self._lists(old)[old.key]
        for i, e in enumerate(variants):
            if e.id == entry.id:
                variants[i] = entry
        self._by_id[entry.id] = entry

    def remove(self, entry_id: int) -> Entry | None:
        old = self._by_id.pop(entry_id, None)
        if old is None:
            return None
        lists = self._lists(old)
        variants = [e for e in lists[old.key] if e.id != entry_id]
        if variants:
            lists[old.key] = variants
        else:
            del lists[old.key]
        return old

    def clear(self) -> None:
        self._by_key.clear()
        self._partials.clear()
        self._by_id.clear()


class BodyCache:
    """Small bodies in memory, LRU, bounded by total bytes.  Not locked (the store's lock)."""

    def __init__(self, max_bytes: int = BODY_CACHE_BYTES, max_item: int = BODY_CACHE_ITEM) -> None:
        self.max_bytes = max_bytes
        self.max_item = min(max_item, max_bytes)
        self._items: OrderedDict[int, tuple[str, bytes]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, entry_id: int, name: str) -> bytes | None:
        item = self._items.get(entry_id)
        if item is None:
            return None
        if item[0] != name:  # an id reused by SQLite for another body
            self.discard(entry_id)
            return None
        self._items.move_to_end(entry_id)
        return item[1]

    def put(self, entry_id: int, name: str, data: bytes) -> None:
        if len(data) > self.max_item:
            return
        self.discard(entry_id)
        self._items[entry_id] = (name, data)
        self.bytes += len(data)
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= len(dropped)

    def discard(self, entry_id: int) -> None:
        item = self._items.pop(entry_id, None)
        if item is not None:
            self.bytes -= len(item[1])

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0
