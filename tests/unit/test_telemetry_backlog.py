"""The telemetry outbox's bound and drop policy, the counter file, the historical mark."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import StoreError
from gateway.sqlitedb import open_readonly
from gateway.store.health import DEGRADED
from gateway.store.telemetry_outbox import TelemetryOutbox
from gateway.telemetry import payloads
from gateway.telemetry.counters import SEQ_BLOCK, CounterFile
from gateway.telemetry.outbox import Bound, NewMessage
from tests.unit import test_telemetry_service as service_tests
from tests.unit.test_telemetry_service import Rig, until

E, T = "event", "telemetry"


def msg(kind: str, size: int = 10, i: int = 0) -> NewMessage:
    """A message whose body (a JSON string) is exactly ``size`` bytes."""
    body = json.dumps(str(i).rjust(size - 2, "x"))
    assert len(body.encode()) == size
    return NewMessage(kind, float(i), body)  # type: ignore[arg-type]


def seqs_by_kind(box: TelemetryOutbox) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {E: [], T: []}
    for m in box.pending(limit=10_000):
        out[m.kind].append(m.seq)
    return out


# -- the drop policy ---------------------------------------------------------------------------------

# kinds added one message per transaction (seq 1, 2, ...), the bound in messages,
# then the survivors by kind and the drops by kind.
POLICY = [
    pytest.param("TTEE", 4, {T: [1, 2], E: [3, 4]}, {T: 0, E: 0}, id="at the bound nothing is dropped"),
    pytest.param("TTEEE", 4, {T: [2], E: [3, 4, 5]}, {T: 1, E: 0}, id="the oldest telemetry goes first"),
    pytest.param("ETETE", 3, {T: [], E: [1, 3, 5]}, {T: 2, E: 0}, id="all telemetry before any event"),
    pytest.param("EEEEE", 3, {T: [], E: [3, 4, 5]}, {T: 0, E: 2}, id="events only: the oldest event"),
    pytest.param("EEET", 3, {T: [], E: [1, 2, 3]}, {T: 1, E: 0},
                 id="a new telemetry message into a backlog of events is itself dropped"),
    pytest.param("TTTTTTE", 2, {T: [6], E: [7]}, {T: 5, E: 0}, id="a long outage keeps the newest"),
]


@pytest.mark.parametrize(("kinds", "bound", "survivors", "dropped"), POLICY)
def test_the_drop_policy_by_messages(tmp_path: Path, kinds: str, bound: int,
                                     survivors: dict[str, list[int]], dropped: dict[str, int]) -> None:
    box = TelemetryOutbox(tmp_path / "t.db", Bound(max_messages=bound, max_bytes=10**6))
    for i, k in enumerate(kinds):
        box.add(1, [msg(E if k == "E" else T, i=i)])
    assert seqs_by_kind(box) == survivors
    assert box.totals.dropped == dropped
    assert box.totals.count == box.count() <= bound
    box.close()


def test_one_batch_past_the_bound_is_trimmed_in_its_own_transaction(tmp_path: Path) -> None:
    box = TelemetryOutbox(tmp_path / "t.db", Bound(max_messages=3, max_bytes=10**6))
    batch = [msg(T, i=0), msg(E, i=1), msg(T, i=2), msg(E, i=3), msg(E, i=4), msg(E, i=5)]
    assert box.add(1, batch) == [1, 2, 3, 4, 5, 6]
    assert seqs_by_kind(box) == {T: [], E: [4, 5, 6]}
    assert box.totals.dropped == {T: 2, E: 1}
    box.close()


@pytest.mark.parametrize(("sizes", "max_bytes", "survivors", "dropped"), [
    ([(T, 100), (E, 100), (T, 100)], 300, {T: [1, 3], E: [2]}, {T: 0, E: 0}),
    ([(T, 100), (E, 100), (T, 100), (E, 50)], 300, {T: [3], E: [2, 4]}, {T: 1, E: 0}),
    ([(T, 100), (E, 100), (T, 100), (E, 250)], 300, {T: [], E: [4]}, {T: 2, E: 1}),
    ([(E, 100), (E, 301)], 300, {T: [], E: []}, {T: 0, E: 2}),  # one body above the bound
])
def test_the_drop_policy_by_bytes(tmp_path: Path, sizes: list[tuple[str, int]], max_bytes: int,
                                  survivors: dict[str, list[int]], dropped: dict[str, int]) -> None:
    box = TelemetryOutbox(tmp_path / "t.db", Bound(max_messages=1000, max_bytes=max_bytes))
    for i, (kind, size) in enumerate(sizes):
        box.add(1, [msg(kind, size, i)])
    assert seqs_by_kind(box) == survivors
    assert box.totals.dropped == dropped
    assert box.totals.size == sum(len(m.body.encode()) for m in box.pending()) <= max_bytes
    box.close()


def test_the_bound_is_read_at_each_insert_and_drops_are_kept_across_restarts(tmp_path: Path) -> None:
    bound = [Bound(max_messages=5, max_bytes=10**6)]
    box = TelemetryOutbox(tmp_path / "t.db", lambda: bound[0])
    box.add(1, [msg(T, i=i) for i in range(5)])
    bound[0] = Bound(max_messages=2, max_bytes=10**6)  # a config apply lowered it
    box.add(1, [msg(E, i=5)])
    assert seqs_by_kind(box) == {T: [5], E: [6]} and box.totals.dropped == {T: 4, E: 0}
    box.ack([5])
    assert box.totals.count == 1 and box.totals.messages == {T: 0, E: 1}
    box.close()
    again = TelemetryOutbox(tmp_path / "t.db", Bound(max_messages=2, max_bytes=10**6))
    assert again.totals.dropped == {T: 4, E: 0} and again.totals.count == 1
    assert again.totals.last_seq == 6
    again.close()


def test_a_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Bound(max_messages=0)


# -- atomic under a crash ----------------------------------------------------------------------------

BOUND = Bound(max_messages=20, max_bytes=2_000)


def _die_while_dropping(path: str, after_drops: int) -> None:
    box = TelemetryOutbox(path, BOUND)
    real = TelemetryOutbox._drop
    done = [0]

    def drop(self: TelemetryOutbox, db: sqlite3.Connection, seq: int) -> None:
        if done[0] == after_drops:
            os._exit(0)  # as a kill -9 in the middle of the transaction
        done[0] += 1
        real(self, db, seq)
    TelemetryOutbox._drop = drop  # type: ignore[method-assign]  # this child only
    box.add(1, [msg(E, 100, i=100), msg(E, 100, i=101), msg(E, 100, i=102)])
    os._exit(3)  # not reached: the bound is full, so the add drops


def check_invariants(path: str, bound: Bound) -> tuple[int, dict[str, int]]:
    """From the file alone: within the bound, totals right, every seq present or counted
    (nothing is acknowledged in these tests). Returns (present, dropped per kind)."""
    conn = open_readonly(path)
    try:
        rows = conn.execute("SELECT kind, length(CAST(body AS BLOB)) FROM messages").fetchall()
        totals = {k: (n, b) for k, n, b in conn.execute("SELECT kind, messages, bytes FROM totals")}
        dropped = {name.removeprefix("dropped_"): v for name, v in conn.execute(
            "SELECT name, value FROM counters WHERE name LIKE 'dropped_%'")}
        (last,) = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='messages'").fetchone()
    finally:
        conn.close()
    assert len(rows) <= bound.max_messages and sum(b for _, b in rows) <= bound.max_bytes
    for kind in (E, T):
        assert totals[kind] == (sum(1 for k, _ in rows if k == kind),
                                sum(b for k, b in rows if k == kind))
    assert len(rows) + sum(dropped.values()) == last
    return len(rows), dropped


@pytest.mark.parametrize("after_drops", [0, 1, 2])
def test_a_crash_between_the_insert_and_its_drops_leaves_the_last_commit(
        tmp_path: Path, after_drops: int) -> None:
    path = str(tmp_path / "t.db")
    box = TelemetryOutbox(path, BOUND)
    box.add(1, [msg(T, 100, i) for i in range(10)] + [msg(E, 100, i) for i in range(10, 20)])
    before = seqs_by_kind(box)
    box.close()
    proc = multiprocessing.get_context("fork").Process(target=_die_while_dropping, args=(path, after_drops))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    box = TelemetryOutbox(path, BOUND)
    assert seqs_by_kind(box) == before  # neither the new rows nor any drop
    assert box.totals.dropped == {T: 0, E: 0}
    box.close()
    check_invariants(path, BOUND)


def _add_forever(path: str, dropping: Any = None) -> None:
    """Add batches until killed; set ``dropping`` once enough went in that the bound drops."""
    box = TelemetryOutbox(path, BOUND)
    i = 0
    while True:
        box.add(1, [msg(T if i % 3 else E, 50 + i % 7 * 20, i) for _ in range(1 + i % 4)])
        i += 1
        if dropping is not None and box.totals.last_seq >= 3 * BOUND.max_messages:
            dropping.set()


def test_kill_9_at_any_moment_never_leaves_the_outbox_over_its_bound(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    for _ in range(3):
        ctx = multiprocessing.get_context("fork")
        dropping = ctx.Event()
        proc = ctx.Process(target=_add_forever, args=(path, dropping))
        proc.start()
        # the kill comes once the writer is dropping, at whatever moment of its work it is
        assert dropping.wait(30), "the writer made no progress"
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        present, dropped = check_invariants(path, BOUND)
        assert dropped[T] > 0 and present > 0
        box = TelemetryOutbox(path, BOUND)  # and the next start goes on from there
        assert box.totals.count == present and box.totals.dropped == dropped
        assert CounterFile(Path(path).with_suffix(".counters")).read().seq_reserved >= box.totals.last_seq
        box.close()


# -- the session counter and seq survive a replaced outbox ----------------------------------------


@pytest.fixture
def degraded() -> object:
    DEGRADED.clear()
    yield DEGRADED
    DEGRADED.clear()


def test_a_restart_continues_the_session_and_seq_by_one(tmp_path: Path) -> None:
    box = TelemetryOutbox(tmp_path / "t.db")
    assert box.next_session() == 1
    assert box.add(1, [msg(E, i=i) for i in range(3)]) == [1, 2, 3]
    box.close()
    box = TelemetryOutbox(tmp_path / "t.db")
    assert box.next_session() == 2
    assert box.add(2, [msg(E)]) == [4]  # no numbers skipped when the outbox is the same
    box.close()
    assert json.loads((tmp_path / "t.counters").read_text()) == {
        "session": 2, "seq_floor": 3, "seq_reserved": 3 + SEQ_BLOCK}


@pytest.mark.parametrize("how", ["corrupt", "deleted"])
def test_session_and_seq_never_go_back_when_the_outbox_is_replaced(
        tmp_path: Path, how: str, degraded: object) -> None:
    path = tmp_path / "t.db"
    box = TelemetryOutbox(path)
    assert [box.next_session(), box.next_session()] == [1, 2]
    box.add(2, [msg(E, i=i) for i in range(5)])
    box.close()
    for extra in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        extra.unlink(missing_ok=True)
    if how == "corrupt":
        path.write_bytes(b"this is not a database" * 100)  # the heal moves it aside
    box = TelemetryOutbox(path)
    assert box.count() == 0  # a fresh outbox ...
    assert box.next_session() == 3  # ... but the session goes on
    (seq,) = box.add(3, [msg(E)])
    assert seq == 5 + SEQ_BLOCK + 1  # above every number that may have been handed out
    box.close()
    if how == "corrupt":
        assert list(tmp_path.glob("t.db.corrupt-*"))


def test_a_schema_1_outbox_keeps_its_session_and_messages(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
            session INTEGER NOT NULL, created REAL NOT NULL, body TEXT NOT NULL);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO counters VALUES ('session', 41);
        INSERT INTO messages (kind, session, created, body) VALUES ('event', 41, 1.0, '{"type":"x"}');
        INSERT INTO messages (kind, session, created, body) VALUES ('telemetry', 41, 2.0, '{}');
        PRAGMA user_version = 1;""")
    conn.close()
    box = TelemetryOutbox(path)
    assert box.totals.messages == {E: 1, T: 1} and box.totals.size == len('{"type":"x"}') + 2
    assert box.next_session() == 42
    assert box.add(42, [msg(E)]) == [3]
    box.close()


def test_a_lost_counter_file_does_not_send_the_session_back(tmp_path: Path) -> None:
    box = TelemetryOutbox(tmp_path / "t.db")
    assert [box.next_session() for _ in range(3)] == [1, 2, 3]
    box.close()
    (tmp_path / "t.counters").unlink()
    box = TelemetryOutbox(tmp_path / "t.db")
    assert box.next_session() == 4  # the outbox's mirror of it
    box.close()


@pytest.mark.parametrize("text", ["{", '{"session": 1}', '{"session": -1, "seq_floor": 0, "seq_reserved": 0}',
                                  '[]'])
def test_a_damaged_counter_file_is_refused_with_what_to_do(tmp_path: Path, text: str) -> None:
    (tmp_path / "t.counters").write_text(text)
    with pytest.raises(StoreError, match=r"t\.counters"):
        TelemetryOutbox(tmp_path / "t.db")


# -- the historical mark -----------------------------------------------------------------------------

@pytest.mark.parametrize(("seq", "made_in", "age", "hist"), [
    (11, 3, 1.0, False),     # made on this connection, in this session, young: live
    (10, 3, 1.0, True),      # waiting in the outbox when the connection began
    (11, 2, 1.0, True),      # made by an earlier run of the daemon
    (11, 3, 301.0, True),    # older than one telemetry interval when sent
    (11, 3, 300.0, False),
])
def test_historical(seq: int, made_in: int, age: float, hist: bool) -> None:
    assert payloads.historical(seq, made_in, backlog_top=10, session=3, created=1000.0,
                               now=1000.0 + age, interval=300) is hist


def test_the_hist_flag_is_sent_only_when_true() -> None:
    who = payloads.Identity("s1", "1", 1, 1)
    assert "hist" not in payloads.message(who, 1, 1, 1.0, {"type": "x"})
    assert payloads.message(who, 1, 1, 1.0, {"type": "x"}, hist=True)["hist"] is True


def test_the_status_names_drops_only_once_there_were_some() -> None:
    who = payloads.Identity("s1", "1", 1, 1)
    assert "dropped" not in payloads.status(who, "0123456789ab", dropped={E: 0, T: 0})
    assert payloads.status(who, "0123456789ab", dropped={E: 0, T: 7})["dropped"] == {E: 0, T: 7}


# -- the service: the mark on the wire, drops reported ----------------------------------------------

service = service_tests.rig  # the in-memory broker rig of test_telemetry_service, as a fixture here


async def test_the_backlog_after_an_outage_is_marked_and_live_messages_are_not(service: Rig) -> None:
    await until(lambda: service.svc.connected, "the first connection")
    service.emit(2)
    await until(lambda: len(service.sent()) == 2 and service.box.count() == 0, "2 live events")
    service.broker.up = False
    service.broker.links[0].drop()
    service.emit(3, start=2)
    await until(lambda: service.box.count() == 3, "3 events queued offline")
    service.broker.up = True
    await until(lambda: len(service.sent()) == 5, "the backlog")
    service.emit(1, start=5)
    await until(lambda: len(service.sent()) == 6, "a live event after the backlog")
    assert [(m["seq"], m.get("hist", False)) for m in service.sent()] == [
        (1, False), (2, False), (3, True), (4, True), (5, True), (6, False)]


async def test_drops_are_reported_in_the_status_json_and_the_next_status(service: Rig) -> None:
    await until(lambda: service.svc.connected, "the first connection")
    service.box._bound = lambda: Bound(max_messages=3, max_bytes=10**6)  # as a config apply would
    service.broker.up = False
    service.broker.links[0].drop()
    service.emit(5)  # events only: the oldest events go
    await until(lambda: service.svc.status_json()["dropped"] == {E: 2, T: 0}, "2 drops counted")
    assert service.svc.status_json()["backlog"] == 3
    service.broker.up = True
    await until(lambda: len(service.sent()) == 3, "the survivors")
    assert [(m["seq"], m["hist"], m["service"]) for m in service.sent()] == [
        (3, True, "svc2"), (4, True, "svc3"), (5, True, "svc4")]
    status = json.loads(service.statuses()[-1].payload)
    assert status["dropped"] == {E: 2, T: 0}
    assert "dropped" not in json.loads(service.statuses()[0].payload)  # none before the outage


# -- the settings ------------------------------------------------------------------------------------

def test_the_backlog_bound_settings() -> None:
    from gateway.telemetry.outbox import backlog_bound
    from tests.unit.test_telemetry import BASE, parse_config_text

    tel = parse_config_text(BASE).telemetry
    assert backlog_bound(tel) == Bound(max_messages=10_000, max_bytes=4 * 1024**2) == Bound()
    tel = parse_config_text(BASE + 'backlog_max_messages = 500\nbacklog_max_bytes = "512kb"').telemetry
    assert backlog_bound(tel) == Bound(500, 512 * 1024)


@pytest.mark.parametrize(("text", "start"), [
    ("backlog_max_messages = 10", "telemetry.backlog_max_messages: "),
    ('backlog_max_bytes = "1kb"', "telemetry.backlog_max_bytes: 1kb is outside 64kb to 1gb"),
    ('backlog_max_bytes = "lots"', "telemetry.backlog_max_bytes: \"lots\" is not a size"),
])
def test_a_wrong_backlog_bound_names_its_field(text: str, start: str) -> None:
    from tests.unit.test_telemetry import problems

    found = problems(text)
    assert len(found) == 1 and found[0].startswith(start), found


def test_the_status_line_names_drops() -> None:
    from gateway.cli_format import telemetry_status_line

    data = {"enabled": True, "connected": False, "broker": "mqtt://m.example", "site_id": "s1",
            "session": 4, "backlog": 3, "dropped": {"event": 0, "telemetry": 0}}
    assert telemetry_status_line(data).endswith("3 message(s) waiting")
    data["dropped"] = {"event": 1, "telemetry": 9}
    assert telemetry_status_line(data).endswith(
        "3 message(s) waiting, dropped 9 telemetry and 1 event message(s) (backlog full)")


# -- docs/mqtt.md: the worked example is what the outbox does ------------------------------------

def test_the_backlog_worked_example_in_docs_mqtt_validates_and_matches_the_policy(tmp_path: Path) -> None:
    import re

    import jsonschema

    from tests.unit.test_telemetry import EVENT_SCHEMA, MQTT_DOC, STATUS_SCHEMA

    text = MQTT_DOC.read_text()
    section = text.split("## Backlog after an outage", 1)[1].split("\n## ", 1)[0]
    made = re.search(r"Made during the outage, in order: (.*?)\.", section, re.S)
    assert made is not None
    kinds = re.findall(r"(telemetry|event) (\d+)", made.group(1))
    bound = int(re.search(r"backlog_max_messages = (\d+)", section).group(1))  # type: ignore[union-attr]
    (block,) = re.findall(r"```\n(.*?)\n```", section, re.S)
    lines = [line.split(" ", 1) for line in block.splitlines()]
    status = json.loads(lines[0][1])
    assert lines[0][0].endswith("/status")
    jsonschema.validate(status, STATUS_SCHEMA)
    events = [json.loads(body) for topic, body in lines[1:]]
    assert all(topic.endswith("/event") for topic, _ in lines[1:])
    for body in events:
        jsonschema.validate(body, EVENT_SCHEMA)

    # replay the outage through the real outbox
    box = TelemetryOutbox(tmp_path / "t.db", Bound(max_messages=bound, max_bytes=10**6))
    first = int(kinds[0][1])
    for kind, seq in kinds:
        (got,) = box.add(42, [msg(kind, i=int(seq))])
        assert got - 1 == int(seq) - first  # the doc's numbers are consecutive
    survivors = [m.seq - 1 + first for m in box.pending()]
    assert [e["seq"] for e in events if e.get("hist")] == survivors
    assert status["dropped"] == box.totals.dropped
    live = [e for e in events if not e.get("hist")]
    assert [e["seq"] for e in live] == [survivors[-1] + 1]  # made after the reconnect
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    box.close()
