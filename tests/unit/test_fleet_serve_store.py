"""The merge rules of `desanet fleet serve` (gateway/fleet/state.py) through its SQLite
store (gateway/fleet/store.py): tables of messages in, rows and ledger out."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.fleet.store import Incoming, Store, StoreError, check_url, open_store, redact

P = "desanet/v1"


def status(site: str, online: bool = True, session: int = 1, boot: int = 1000, **more: Any
           ) -> Incoming:
    body = {"v": 1, "online": online, "site": site, "version": "0.1.0",
            "config_version": more.pop("cfg", "aaa"), "boot_time": boot, "session": session, **more}
    return Incoming(f"{P}/{site}/status", json.dumps(body).encode(), more.pop("retained", False),
                    50.0)


def numbered(site: str, leaf: str, seq: int, session: int = 1, hist: bool = False,
             **data: Any) -> Incoming:
    body = {"v": 1, "site": site, "session": session, "seq": seq, "time": 100.0 + seq, **data}
    if hist:
        body["hist"] = True
    return Incoming(f"{P}/{site}/{leaf}", json.dumps(body).encode(), False, 200.0 + seq)


def event(site: str, seq: int, session: int = 1, **data: Any) -> Incoming:
    return numbered(site, "event", seq, session, type=data.pop("type", "session_ended"), **data)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(f"sqlite://{tmp_path}/fleet.db", "test")


def row(store: Store, site: str) -> Any:
    return next(s for s in store.sites() if s.site == site)


def test_a_copy_in_the_same_or_a_later_batch_changes_nothing_and_is_counted(store: Store) -> None:
    first = store.apply(P, [event("a", 1), event("a", 1), numbered("a", "telemetry", 2, cc=3)], 300)
    assert first.stored["event"] == 1 and first.stored["telemetry"] == 1 and first.duplicates == 1
    later = store.apply(P, [numbered("a", "telemetry", 2, hist=True, cc=99)], 300)
    assert later.duplicates == 1 and sum(later.stored.values()) == 0
    s = row(store, "a")
    assert (s.clients, s.events, s.messages, s.duplicates) == (3, 1, 2, 2)
    assert store.count("messages") == 2 and store.count("events") == 1


def test_a_late_report_changes_only_what_no_newer_report_set(store: Store) -> None:
    # Two instances: seq 12 committed before seq 11 (a full report).
    store.apply(P, [numbered("a", "telemetry", 12, ca=10)], 300)
    out = store.apply(P, [numbered("a", "telemetry", 11, cc=9, ca=7, qf=4)], 300)
    assert out.duplicates == 0 and out.stored["telemetry"] == 1  # out of order is not a copy
    s = row(store, "a")
    assert (s.clients, s.authorized, s.queued_forms) == (9, 10, 4)
    assert (s.last_session, s.last_seq) == (1, 12)
    assert s.telemetry == {"ca": 10, "cc": 9, "qf": 4}
    # a newer session beats a higher seq of an older one
    store.apply(P, [numbered("a", "telemetry", 5, session=2, ca=1),
                    numbered("a", "telemetry", 13, session=1, ca=50)], 300)
    assert row(store, "a").authorized == 1


def test_an_uplink_event_and_telemetry_share_the_order(store: Store) -> None:
    store.apply(P, [numbered("a", "telemetry", 3, ul=1),
                    event("a", 2, type="uplink_changed", up=False)], 300)
    assert row(store, "a").uplink is True  # the event (seq 2) is older than the report
    store.apply(P, [event("a", 4, type="uplink_changed", up=False)], 300)
    s = row(store, "a")
    assert s.uplink is False and s.last_event == "uplink_changed" and s.events == 2


def test_a_bad_payload_is_counted_and_changes_nothing_else(store: Store) -> None:
    bad = [Incoming(f"{P}/a/event", b"{not json", False, 1.0),
           numbered("a", "telemetry", 2, cc="many"),
           numbered("a", "telemetry", 3, ul=True),
           Incoming(f"{P}/a/event", json.dumps({"v": 1, "site": "b", "session": 1, "seq": 4,
                                                 "time": 1, "type": "x"}).encode(), False, 1.0),
           Incoming(f"{P}/a/telemetry", json.dumps({"v": 99, "site": "a"}).encode(), False, 1.0),
           Incoming("elsewhere/a/event", b"{}", False, 1.0)]
    out = store.apply(P, [*bad, numbered("a", "telemetry", 5, cc=1)], 300)
    assert (out.rejected, out.ignored, out.stored["telemetry"]) == (5, 1, 1)
    s = row(store, "a")
    assert s.rejected == 5 and "version" in (s.problem or "")
    assert s.clients == 1 and s.messages == 1 and store.count("messages") == 1
    # the rejected seq 2 left no ledger row: a readable copy is still taken
    store.apply(P, [numbered("a", "telemetry", 2, cc=7)], 300)
    assert row(store, "a").messages == 2


def test_status_rules(store: Store) -> None:
    store.apply(P, [status("a", session=5, cfg="v1"), status("a", session=5, cfg="v2")], 300)
    s = row(store, "a")
    assert (s.online, s.session, s.config_version) == (True, 5, "v2")
    # the Will of an older session after the new one's online: stale
    out = store.apply(P, [status("a", online=False, session=4)], 300)
    assert out.stale == 1 and row(store, "a").online is True
    # this session's Will, then a late copy of its online (a lagging instance): offline stays
    out = store.apply(P, [status("a", online=False, session=5), status("a", session=5)], 300)
    assert out.stale == 1 and row(store, "a").online is False
    # positive control: a new session comes online
    store.apply(P, [status("a", session=6, boot=2000, dropped={"event": 1, "telemetry": 3})], 300)
    s = row(store, "a")
    assert (s.online, s.session, s.dropped_events, s.dropped_telemetry) == (True, 6, 1, 3)


def test_a_gateway_whose_numbers_restarted_is_taken_again(store: Store) -> None:
    store.apply(P, [status("a", session=9, boot=1000), event("a", 1, session=1),
                    numbered("a", "telemetry", 40, session=9, cc=5)], 300)
    # both counter files lost: session 1 again, started later
    store.apply(P, [status("a", session=1, boot=5000), event("a", 1, session=1),
                    numbered("a", "telemetry", 2, session=1, cc=6)], 300)
    s = row(store, "a")
    assert (s.session, s.clients, s.last_seq, s.duplicates) == (1, 6, 2, 0)
    # an older start with a lower counter is not a restart
    assert store.apply(P, [status("a", session=0, boot=4000)], 300).stale == 1


def test_retained_status_sets_no_last_seen_and_an_empty_one_retires(store: Store) -> None:
    retained = Incoming(f"{P}/a/status", status("a").payload, True, 50.0)
    store.apply(P, [retained], 300)
    assert row(store, "a").last_seen is None and row(store, "a").online is True
    store.apply(P, [Incoming(f"{P}/a/status", b"", True, 60.0)], 300)
    assert row(store, "a").online is None and row(store, "a").session is None


def test_lag_counts_live_messages_only(store: Store) -> None:
    out = store.apply(P, [numbered("a", "telemetry", 1, hist=True), numbered("a", "event", 2,
                                                                             type="x")], 150.0)
    assert out.lag == pytest.approx(150.0 - 102.0)


def test_urls(tmp_path: Path) -> None:
    assert check_url(f"sqlite://{tmp_path}/x.db") == ""
    assert check_url("postgresql://fleet@db.example/fleet") == ""
    assert check_url("mysql://x/y").startswith("--db: 'mysql://x/y' is not a database URL")
    assert "names no database" in check_url("postgresql://db.example")
    assert "does not exist" in check_url(f"sqlite://{tmp_path}/no/x.db")
    assert redact("postgresql://u:pw@h/d") == "postgresql://u:***@h/d"
    with pytest.raises(StoreError, match=r"^--db: "):
        open_store("sqlite://", "t")


def test_the_database_is_left_consistent_when_a_batch_fails(store: Store, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store.apply(P, [event("a", 1)], 300)
    from gateway.fleet import state

    def boom(*args: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(state, "apply_numbered", boom)
    with pytest.raises(RuntimeError):
        store.apply(P, [event("b", 1), event("a", 2)], 300)
    with sqlite3.connect(tmp_path / "fleet.db") as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1
        assert db.execute("SELECT COUNT(*) FROM gateways").fetchone()[0] == 1


def test_a_batch_of_reports_is_stored_report_by_report(store: Store) -> None:
    """A version 2 telemetry batch (zlib-compressed or not; the gateway's own code,
    gateway/telemetry/batch.py) through table.unpack: each report deduped on its own."""
    import zlib

    from gateway.telemetry import batch, payloads

    who = payloads.Identity("a", "0.1.0", 1000, 3)
    reports = [batch.report(seq, 100.0 + seq, {"cc": seq}, hist=seq < 3) for seq in (1, 2, 3)]
    plain = payloads.encode(batch.batch(who, 3, reports))
    out = store.apply(P, [Incoming(f"{P}/a/telemetry", plain, False, 1.0)], 300)
    assert out.stored["telemetry"] == 3 and out.lag == pytest.approx(300 - 103)
    # the same batch again, compressed, with one more report: only that one is new
    more = payloads.encode(batch.batch(who, 3, [*reports, batch.report(4, 104.0, {"cc": 4}, False)]))
    out = store.apply(P, [Incoming(f"{P}/a/telemetry", zlib.compress(more), False, 2.0)], 300)
    assert (out.stored["telemetry"], out.duplicates) == (1, 3)
    s = row(store, "a")
    assert (s.clients, s.messages, s.duplicates, s.last_seq) == (4, 4, 3, 4)
    assert store.count("messages") == 4


def _raw(site: str, leaf: str, text: str) -> Incoming:
    return Incoming(f"{P}/{site}/{leaf}", text.encode(), False, 1.0)


DEEP = '{"v":1,"site":"a","session":1,"seq":9,"time":1,"x":' + "[" * 100_000 + "]" * 100_000 + "}"


@pytest.mark.parametrize("hostile", [
    _raw("a", "telemetry", DEEP),  # RecursionError: was taken for a database failure
    _raw("a", "event", '{"v":1,"site":"a","session":1,"seq":9,"time":NaN,"type":"x"}'),
    _raw("a", "telemetry", '{"v":1,"site":"a","session":1,"seq":9,"time":1e999,"cc":1}'),
    _raw("a", "telemetry", '{"v":1,"site":"a","session":1,"seq":9,"time":1,"cc":Infinity}'),
    _raw("a", "status", '{"v":1,"site":"a","online":true,"version":"x","config_version":"y",'
                        '"boot_time":-Infinity,"session":1}'),
    _raw("a", "telemetry", '{"v":1,"site":"a","session":1,"seq":9,"time":1' + "0" * 400 + ',"cc":1}'),
    _raw("a", "telemetry", '{"v":1,"site":"a","session":1,"seq":1' + "0" * 30 + ',"time":1,"cc":1}'),
    _raw("a", "event", '{"v":1,"site":"a","session":1' + "0" * 30 + ',"seq":9,"time":1,"type":"x"}'),
    _raw("a", "status", '{"v":1,"site":"a","online":true,"version":"x","config_version":"y",'
                        '"boot_time":1' + "0" * 30 + ',"session":1}'),
    _raw("a", "telemetry", '{"v":1,"site":"a","session":1,"seq":9,"time":1,"cc":1' + "0" * 30 + '}'),
])
def test_a_hostile_payload_is_rejected_not_retried_for_ever(store: Store, hostile: Incoming
                                                            ) -> None:
    """One gateway's payload that json.loads chokes on (too deep) or reads as a non-finite
    number must be a rejected message, not an exception: serve retries a failing batch
    (a database error) without acknowledging it, so every gateway's messages would wait."""
    out = store.apply(P, [hostile, numbered("b", "telemetry", 2, cc=4)], 300)
    assert out.rejected == 1 and out.stored["telemetry"] == 1
    assert row(store, "b").clients == 4
    assert row(store, "a").rejected == 1


def test_ordinary_numbers_still_read(store: Store) -> None:
    # positive control beside the hostile ones: floats, big ints, nesting of a few levels
    out = store.apply(P, [_raw("a", "event", '{"v":1,"site":"a","session":1,"seq":9,'
                                             '"time":1.5e9,"type":"x","d":[[[{"n":9223372036854775807}]]]}')],
                      300)
    assert out.rejected == 0 and out.stored["event"] == 1


def test_a_site_keeps_a_bounded_set_of_telemetry_keys(store: Store) -> None:
    from gateway.fleet.state import MAX_TELEMETRY_KEYS

    # positive control: unknown keys (a newer gateway's metrics) are kept, up to the bound
    names = {f"k{i}": i for i in range(MAX_TELEMETRY_KEYS - 1)}
    assert store.apply(P, [numbered("a", "telemetry", 1, cc=1, **names)], 300).rejected == 0
    assert len(row(store, "a").telemetry) == MAX_TELEMETRY_KEYS
    # a report naming keys again or known ones is taken; one more new name is not
    assert store.apply(P, [numbered("a", "telemetry", 2, cc=2, k0=5)], 300).rejected == 0
    out = store.apply(P, [numbered("a", "telemetry", 3, cc=3, extra=1)], 300)
    assert out.rejected == 1 and "distinct telemetry keys" in (row(store, "a").problem or "")
    s = row(store, "a")
    assert s.clients == 2 and len(s.telemetry) == MAX_TELEMETRY_KEYS


def test_a_payload_larger_than_a_mebibyte_is_rejected_not_stored(store: Store) -> None:
    from gateway.fleet.table import MAX_INFLATED

    fill = "x" * MAX_INFLATED
    out = store.apply(P, [event("a", 1, note=fill), event("a", 2, note="short")], 300)
    assert out.rejected == 1 and out.stored["event"] == 1  # the ordinary one beside it
    assert "at most" in (row(store, "a").problem or "") and store.count("events") == 1
