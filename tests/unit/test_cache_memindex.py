"""The cache store's memory views (gateway/cache/memindex.py): the index of entries and
the small-body cache stay coherent with SQLite and the files, and stay bounded."""

from __future__ import annotations

import random
import time
from pathlib import Path

from gateway.cache import rules
from gateway.cache.memindex import BodyCache
from gateway.cache.rules import Kind, StoredMeta
from gateway.cache.store import CacheStore, Entry, _meta_from_json

T0 = 1_700_000_000.0


def meta(lang: str | None = None, cc: str = "max-age=60") -> StoredMeta:
    vary: dict[str, str | None] = {} if lang is None else {"accept-language": lang}
    headers = {"cache-control": cc, "content-type": "text/html"}
    if lang is not None:
        headers["vary"] = "accept-language"
    return StoredMeta(200, headers, T0, T0, vary)


def put(store: CacheStore, key: str, body: bytes, m: StoredMeta | None = None) -> Entry:
    writer = store.begin(key, m or meta())
    writer.write(body)
    entry = writer.commit()
    assert entry is not None
    return entry


def rows_on_disk(store: CacheStore) -> list[tuple[int, str, StoredMeta, int, str]]:
    """What SQLite says, bypassing the memory index."""
    rows = store._db.execute("SELECT id, key, meta, size, body FROM entries ORDER BY id").fetchall()
    return [(i, k, _meta_from_json(m), s, b) for i, k, m, s, b in rows]


def rows_in_memory(store: CacheStore) -> list[tuple[int, str, StoredMeta, int, str]]:
    keys = {row[1] for row in rows_on_disk(store)} | {e.key for e in store._index.entries()}
    entries = sorted((e for k in keys for e in store.lookup(k)), key=lambda e: e.id)
    return [(e.id, e.key, e.meta, e.size, e.path.name) for e in entries]


def test_lookup_follows_update_meta_without_sqlite(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 100_000) as store:
        entry = put(store, "k", b"body")
        new = meta(cc="max-age=999")
        store.update_meta(entry.id, new)
        [found] = store.lookup("k")
        assert found.meta is new  # the very object: per-meta memos stay valid until it changes
        assert store.read_small(found) == b"body"  # same body, still served
        assert rows_in_memory(store) == rows_on_disk(store)
    with CacheStore(tmp_path, 100_000) as store:
        assert store.lookup("k")[0].meta == new


def test_delete_and_replace_drop_the_cached_body(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 100_000) as store:
        first = put(store, "k", b"version 1", meta("id"))
        assert store.read_small(first) == b"version 1"
        assert store._bodies.bytes == 9
        second = put(store, "k", b"version two", meta("id"))  # same key and Vary: replaces
        assert store._bodies.bytes == 0
        [found] = store.lookup("k")
        assert found.id == second.id and store.read_small(found) == b"version two"
        other = put(store, "k", b"english", meta("en"))
        assert store.read_small(other) == b"english"
        store.delete(found.id)
        assert [e.id for e in store.lookup("k")] == [other.id]
        assert store._bodies.bytes == len(b"english")
        store.delete_key("k")
        assert store.lookup("k") == [] and store._bodies.bytes == 0 and len(store._bodies) == 0
        assert store.stats()["entries"] == 0


def test_eviction_drops_index_and_cached_bodies(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 800) as store:  # max object 100 bytes
        entries = [put(store, f"k{i}", bytes([i]) * 100) for i in range(8)]
        for e in entries:
            assert store.read_small(e) == e.path.read_bytes()
        assert len(store._bodies) == 8
        put(store, "k8", b"x" * 100)  # evicts k0, the least recently used
        assert store.lookup("k0") == []
        assert store._bodies.get(entries[0].id, entries[0].path.name) is None
        assert len(store._bodies) == 7
        assert rows_in_memory(store) == rows_on_disk(store)
        assert store.stats()["entries"] == 8


def test_read_small_checks_the_file_once_then_serves_memory(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 100_000) as store:
        good = put(store, "good", b"G" * 100)
        bad = put(store, "bad", b"B" * 100)
        with open(bad.path, "r+b") as f:
            f.truncate(10)
        assert store.read_small(bad) is None  # never a truncated body
        assert store.lookup("bad") == []  # and the entry is dropped
        assert store.read_small(good) == b"G" * 100
        good.path.unlink()  # the verified copy stays usable from memory
        assert store.read_small(good) == b"G" * 100


def test_reopen_rebuilds_the_index_after_recovery(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 100_000) as store:
        a = put(store, "a", b"A" * 10)
        put(store, "b", b"B" * 10, meta("id"))
        put(store, "b", b"b" * 10, meta("en"))
    a.path.unlink()
    with CacheStore(tmp_path, 100_000) as store:
        assert store.lookup("a") == []
        assert sorted(e.meta.vary["accept-language"] or "" for e in store.lookup("b")) == ["en", "id"]
        assert rows_in_memory(store) == rows_on_disk(store)
        assert store.stats() == {"entries": 2, "bytes": 20, "max_bytes": 100_000}


def test_random_operations_keep_memory_and_sqlite_identical(tmp_path: Path) -> None:
    rng = random.Random(7)
    with CacheStore(tmp_path, 4000, body_cache_bytes=1500, body_cache_item=400) as store:
        for step in range(400):
            op = rng.random()
            key = f"k{rng.randrange(12)}"
            variants = store.lookup(key)
            if op < 0.45:
                body = bytes([step % 251]) * rng.randrange(0, 500)
                put(store, key, body, meta(rng.choice([None, "id", "en"])))
            elif op < 0.6 and variants:
                store.update_meta(rng.choice(variants).id, meta(cc=f"max-age={step}"))
            elif op < 0.7 and variants:
                store.delete(rng.choice(variants).id)
            elif op < 0.75:
                store.delete_key(key)
            elif variants:
                e = rng.choice(variants)
                store.touch(e.id, time.time() + step)
                if e.size <= store.small_body_limit:
                    assert store.read_small(e) == e.path.read_bytes()
            assert rows_in_memory(store) == rows_on_disk(store), step
            assert store._bodies.bytes <= 1500
            assert store.stats()["bytes"] <= 4000
            for e in store._index.entries():  # a cached body is always the entry's own
                cached = store._bodies.get(e.id, e.path.name)
                assert cached is None or cached == e.path.read_bytes()
    with CacheStore(tmp_path, 4000) as store:
        assert rows_in_memory(store) == rows_on_disk(store)


def test_body_cache_is_bounded_and_lru() -> None:
    cache = BodyCache(max_bytes=1000, max_item=300)
    cache.put(1, "a", b"x" * 301)  # too big for the memory cache
    assert cache.get(1, "a") is None and cache.bytes == 0
    for i in range(2, 6):
        cache.put(i, f"n{i}", b"y" * 300)
    assert cache.bytes == 900 and len(cache) == 3  # 2 dropped when 5 came in
    assert cache.get(2, "n2") is None
    assert cache.get(3, "n3") == b"y" * 300  # now the most recently used
    cache.put(6, "n6", b"z" * 300)
    assert cache.get(4, "n4") is None and cache.get(3, "n3") is not None
    assert cache.get(3, "other-file") is None  # an id reused for another body: never served
    assert cache.get(3, "n3") is None and cache.bytes == 600
    cache.clear()
    assert cache.bytes == 0 and len(cache) == 0


def test_store_body_cache_stays_within_its_budget(tmp_path: Path) -> None:
    with CacheStore(tmp_path, 10_000_000, body_cache_bytes=64 * 1024, body_cache_item=16 * 1024) as store:
        for i in range(40):
            e = put(store, f"k{i}", bytes([i]) * 10_000)
            assert store.read_small(e) == bytes([i]) * 10_000
        assert store._bodies.bytes <= 64 * 1024 and len(store._bodies) == 6
        assert store.small_body_limit == 16 * 1024


def test_decide_memo_never_mixes_stored_responses() -> None:
    now = T0 + 100
    fresh = rules.decide("GET", {}, meta(cc="max-age=3600"), now, offline_for=0)
    stale = rules.decide("GET", {}, meta(cc="max-age=10"), now, offline_for=0)
    again = rules.decide("GET", {}, meta(cc="max-age=3600"), now, offline_for=0)
    assert fresh.kind is Kind.FRESH and again == fresh
    assert stale.kind is Kind.REVALIDATE
    swr = rules.decide("GET", {}, meta(cc="max-age=10, stale-while-revalidate=600"), now,
                       offline_for=0)
    assert swr.kind is Kind.STALE_REVALIDATE_IN_BACKGROUND
    assert rules.decide("GET", {}, meta(cc="max-age=10, must-revalidate"), now,
                        offline_for=999).stale_on_error is False
