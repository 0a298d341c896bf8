"""The fleet table (gateway/fleet/table.py): messages in, rows out, no broker needed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.fleet.table import FleetTable, Row, age, render
from gateway.fleet.watch import BadArguments, register, target

P = "desanet/v1"


def status(site: str = "a", online: bool = True, session: int = 3, boot_time: int = 1000,
           **over: Any) -> bytes:
    body = {"v": 1, "online": online, "site": site, "version": "0.1.0",
            "config_version": "3f9a1c07b2de", "boot_time": boot_time, "session": session, **over}
    return json.dumps(body).encode()


def numbered(seq: int, site: str = "a", session: int = 3, time: float = 5000.0,
             **fields: Any) -> bytes:
    return json.dumps({"v": 1, "site": site, "session": session, "seq": seq, "time": time,
                       **fields}).encode()


Msg = tuple[str, bytes, bool]  # topic, payload, retained


def feed(*msgs: Msg, table: FleetTable | None = None, at: float = 100.0) -> FleetTable:
    t = table or FleetTable(P)
    for i, (topic, payload, retained) in enumerate(msgs):
        t.apply(topic, payload, retained, at + i)
    return t


def only(t: FleetTable) -> Row:
    rows = t.rows()
    assert len(rows) == 1, rows
    return rows[0]


ST, TE, EV = f"{P}/a/status", f"{P}/a/telemetry", f"{P}/a/event"


def test_a_retained_status_makes_a_row_without_a_last_seen() -> None:
    row = only(feed((ST, status(), True)))
    assert (row.online, row.version, row.config_version, row.session, row.boot_time) == (
        True, "0.1.0", "3f9a1c07b2de", 3, 1000)
    assert row.last_seen is None  # a retained message says nothing about when
    assert row.clients is None and row.uplink is None and row.backlog is None


def test_a_live_message_sets_last_seen_to_its_arrival() -> None:
    t = feed((ST, status(), True))
    t.apply(TE, numbered(1, cc=2), False, 250.0)
    assert only(t).last_seen == 250.0
    assert only(t).last_report == 5000.0  # the gateway's own clock, kept apart


@pytest.mark.parametrize(("msgs", "online", "session", "stale"), [
    # the Will of the same run: offline
    ([(ST, status(), True), (ST, status(online=False), False)], False, 3, 0),
    # back online with a new session after a crash
    ([(ST, status(online=False), True), (ST, status(session=4, boot_time=2000), False)], True, 4, 0),
    # an old run's Will arriving after the new run's online status is ignored
    ([(ST, status(session=4, boot_time=2000), False), (ST, status(online=False), False)], True, 4, 1),
    # an older online status (a replay) is ignored too
    ([(ST, status(session=4, boot_time=2000), False), (ST, status(), False)], True, 4, 1),
    # a later start with a lower counter (its state was wiped) is believed
    ([(ST, status(session=9, boot_time=1000), True), (ST, status(session=1, boot_time=3000), False)],
     True, 1, 0),
])
def test_status_rules(msgs: list[Msg], online: bool, session: int, stale: int) -> None:
    row = only(feed(*msgs))
    assert (row.online, row.session, row.stale) == (online, session, stale)


def test_telemetry_by_exception_keeps_what_did_not_move_and_null_is_unknown() -> None:
    t = feed((ST, status(), True),
             (TE, numbered(1, f=True, cc=12, ca=8, ul=1, lat=640, qf=3, bl=0, cpu=20), False))
    row = only(t)
    assert (row.clients, row.authorized, row.uplink, row.latency_ms, row.queued_forms,
            row.backlog) == (12, 8, True, 640, 3, 0)
    feed((TE, numbered(2, cc=15), False), table=t)  # only what moved
    assert (row.clients, row.authorized, row.queued_forms) == (15, 8, 3)
    feed((TE, numbered(3, ul=None, qf=None), False), table=t)
    assert (row.uplink, row.queued_forms, row.clients) == (None, None, 15)
    feed((TE, numbered(4, ul=0), False), table=t)
    assert row.uplink is False


def test_telemetry_without_any_known_metric_still_counts_as_seen() -> None:
    t = feed((TE, numbered(1, upt=5, rx={"wan0": 10}), False))
    row = only(t)
    assert row.online is None and row.clients is None and row.seq == 1 and row.last_seen == 100.0


def test_duplicates_and_late_copies_change_nothing() -> None:
    t = feed((TE, numbered(5, cc=4), False), (EV, numbered(6, type="session_started"), False))
    row = only(t)
    feed((TE, numbered(5, cc=99), False), (EV, numbered(6, type="session_started"), False),
         (TE, numbered(2, cc=77), False), table=t)
    assert (row.clients, row.events, row.seq, row.duplicates) == (4, 1, 6, 3)


def test_after_a_wiped_state_the_sequence_starts_over() -> None:
    t = feed((ST, status(session=9, boot_time=1000), True), (TE, numbered(500, cc=1), False))
    feed((ST, status(session=1, boot_time=3000), False), (TE, numbered(1, session=1, cc=2), False),
         table=t)
    assert only(t).clients == 2 and only(t).seq == 1


def test_events_are_counted_and_uplink_changed_moves_the_uplink() -> None:
    t = feed((EV, numbered(1, type="uplink_changed", up=False, since=1, reason="link",
                           latency_ms=None), False),
             (EV, numbered(2, type="voucher_batch_created", count=3, plan=None, duration=3600), False))
    row = only(t)
    assert (row.events, row.last_event, row.uplink) == (2, "voucher_batch_created", False)


@pytest.mark.parametrize(("topic", "payload", "problem"), [
    (ST, b"{not json", "status: not JSON"),
    (ST, b"[1]", "status: not a JSON object"),
    (ST, status(v=2), "status: payload version 2"),
    (ST, status(site="b"), "status: names site \"b\" on the topic of 'a'"),  # site from the topic
    (ST, status(online="yes"), "status: 'online' is \"yes\""),
    (ST, status(session="3"), "status: 'session' is \"3\", not an integer"),
    (TE, numbered(2, site="b", cc=3), "telemetry: names site \"b\""),
    (TE, numbered(2, cc="many"), "telemetry: 'cc' is \"many\", not an integer"),
    (TE, numbered(2, cc=3, ul=2), "telemetry: 'ul' is 2, not 0, 1 or null"),  # cc not taken either
    (TE, json.dumps({"v": 1, "site": "a", "session": 3, "time": 1.0}).encode(),
     "telemetry: 'seq' is null"),
    (EV, numbered(2), "event: 'type' is null"),
])
def test_unreadable_payloads_are_counted_and_change_nothing(topic: str, payload: bytes,
                                                            problem: str) -> None:
    t = feed((ST, status(), True), (TE, numbered(1, cc=5, ul=1), False))
    before = only(t).to_json()
    t.apply(topic, payload, False, 200.0)
    row = only(t)
    assert row.rejected == 1 and row.problem is not None and row.problem.startswith(problem)
    after = row.to_json()
    for key in ("rejected", "problem", "last_seen"):
        after.pop(key), before.pop(key)
    assert after == before


@pytest.mark.parametrize("topic", [
    f"{P}/a/cmd/req", f"{P}/a/cmd/res", f"{P}/a/status/x", f"{P}/status", "other/v1/a/status",
    f"{P}//status", "desanet/v2/a/status",
])
def test_topics_outside_the_tree_are_ignored(topic: str) -> None:
    t = feed((topic, status(), True))
    assert t.rows() == [] and t.ignored == 1


def test_another_prefix() -> None:
    t = FleetTable("region/jabar")
    t.apply("region/jabar/a/status", status(), True, 1.0)
    t.apply("desanet/v1/b/status", status(site="b"), True, 1.0)
    assert [r.site for r in t.rows()] == ["a"] and t.ignored == 1


def test_an_empty_retained_status_removes_the_gateway() -> None:
    t = feed((ST, status(), True), (f"{P}/b/status", status(site="b"), True))
    t.apply(ST, b"", True, 5.0)
    assert [r.site for r in t.rows()] == ["b"]


def test_summary_and_json() -> None:
    t = feed((f"{P}/b/status", status(site="b", online=False), True), (ST, status(), True),
             (f"{P}/c/telemetry", numbered(1, site="c", bl=7), False))
    doc = t.to_json()
    assert (doc["gateways"], doc["online"], doc["offline"], doc["unknown"]) == (3, 1, 1, 1)
    assert [s["site"] for s in doc["sites"]] == ["a", "b", "c"]  # sorted by site
    assert doc["sites"][2]["backlog"] == 7 and doc["sites"][2]["uplink"] is None
    json.dumps(doc)  # plain JSON


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.9, "59s"), (60, "1m"), (3599, "59m"),
                                               (7200, "2h"), (86400 * 3, "3d"), (-5, "0s")])
def test_age(seconds: float, text: str) -> None:
    assert age(seconds) == text


def test_render_shows_every_column_and_dashes_for_what_is_unknown() -> None:
    t = feed((ST, status(), True),
             (TE, numbered(1, cc=12, ca=8, ul=1, lat=640, qf=3, bl=0), False),
             (f"{P}/zz-long-site-name/status", status(site="zz-long-site-name", online=False), True),
             at=1000.0)
    t.apply(f"{P}/zz-long-site-name/event", b"garbage", False, 1002.0)
    lines = render(t, now=1065.0)
    assert lines[0].split() == ["SITE", "STATE", "VERSION", "SESSION", "SEEN", "CLIENTS", "AUTH",
                                "UPLINK", "FORMS", "BACKLOG"]
    assert lines[1].split() == ["a", "online", "0.1.0", "3", "1m", "12", "8", "up", "640ms", "3", "0"]
    assert lines[2].split() == ["zz-long-site-name", "OFFLINE", "0.1.0", "3", "1m", "-", "-", "-",
                                "-", "-"]
    assert lines[0].index("STATE") == lines[2].index("OFFLINE")  # columns line up
    assert "zz-long-site-name: 1 unreadable message(s), last: event: not JSON" in lines[3]


# -- the arguments --------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["watch", *argv])


def test_good_arguments(tmp_path: Path) -> None:
    ca, crt, key = (tmp_path / n for n in ("ca.crt", "op.crt", "op.key"))
    for f in (ca, crt, key):
        f.write_text("x")
    t = target(parse("--broker", "mqtts://mqtt.lab", "--ca", str(ca), "--cert", str(crt),
                     "--key", str(key), "--prefix", "region/jabar"))
    assert (t.host, t.port, t.tls, t.prefix) == ("mqtt.lab", 8883, True, "region/jabar")
    plain = target(parse("--broker", "mqtt://10.0.0.1:1884"))
    assert (plain.host, plain.port, plain.tls, plain.prefix) == ("10.0.0.1", 1884, False, P)


def test_every_bad_argument_is_named_at_once(tmp_path: Path) -> None:
    with pytest.raises(BadArguments) as caught:
        target(parse("--broker", "mqtt://h/path", "--cert", str(tmp_path / "missing.crt"),
                     "--prefix", "desanet/+", "--timeout", "-1"))
    assert [line.split(":", 1)[0] for line in caught.value.problems] == [
        "--broker", "--cert", "--cert", "--cert and --key", "--prefix", "--timeout"]


@pytest.mark.parametrize("version,shown", [
    ("0.1.0\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J", "0.1.0\ufffd]52;c;cm0gLXJmIH4=\ufffd\ufffd[2J"),
    ("0.2.0-rc1", "0.2.0-rc1"),  # positive control: an ordinary version as it is
])
def test_render_never_writes_a_gateways_control_characters(version: str, shown: str) -> None:
    """`fleet watch` writes these lines to the operator's terminal: a gateway's version
    with ESC in it could clear the screen or set the clipboard (OSC 52)."""
    t = feed((ST, status(version=version), True))
    t.apply(TE, b'{"v":1,"site":"a","x":"\\u001b[2J', False, 101.0)  # cut short: a problem
    lines = render(t, now=110.0)
    assert not any(ch in line for line in lines for ch in "\x1b\x07\x9b")
    assert lines[1].split()[2] == shown
