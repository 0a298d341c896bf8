"""Telemetry against a real Mosquitto in the lab's WAN: status, Last Will, durable events,
the backlog's bound and drop policy.

The broker runs in the WAN namespace (the region's broker, reached over the
gateway's uplink), with its own config and persistence; the gateway logs in
over TLS with its device certificate (a test CA); the consumer is a
real MQTT 5 subscriber with a persistent session beside it
(tests/integration/mosquitto.py). The daemon is the lab's real one, with
``[telemetry]`` pointing at the broker. Every payload seen is checked against
docs/schemas (jsonschema).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from desanet_lab import LabInfo, LabSpec
from desanet_lab import plan as p
from gateway.control.client import ControlClient
from gateway.sqlitedb import open_readonly
from tests.integration.conftest import (
    LAB_TOOLS,
    LabFactory,
    desanet_json,
    ensure_gateway,
    require_root,
    require_tools,
    start_gateway,
    stop_gateway,
    unique_prefix,
    wait_until,
)
from tests.integration.mosquitto import Broker, Consumer, Pki, Received, free_port, make_pki

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS, "mosquitto")]

PREFIX = unique_prefix("mq")
SITE = "lab-mq"
TOPICS = "desanet/v1/#"
STATUS = f"desanet/v1/{SITE}/status"
EVENT = f"desanet/v1/{SITE}/event"
TELEMETRY = f"desanet/v1/{SITE}/telemetry"
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
SCHEMA = {STATUS: json.loads((SCHEMAS / "status.schema.json").read_text()),
          EVENT: json.loads((SCHEMAS / "event.schema.json").read_text()),
          TELEMETRY: json.loads((SCHEMAS / "telemetry.schema.json").read_text())}
PORT, TLS_PORT = free_port(), free_port()  # the consumer's plain listener; the gateway's TLS one
BOUND = 100  # the outbox's bound (the smallest the config takes)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A region's CA, the broker's certificate for its WAN address, this gateway's certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"), host=p.WAN_ISP_V4, device=SITE)


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory, pki: Pki) -> LabInfo:
    telemetry = {"enabled": True, "broker": f"mqtts://{p.WAN_ISP_V4}:{TLS_PORT}", "site_id": SITE,
                 "ca_file": str(pki.ca), "cert_file": str(pki.device_cert),
                 "key_file": str(pki.device_key),
                 "start_delay_max": "0s", "reconnect_min": "1s", "reconnect_max": "2s",
                 "keepalive": "30s", "backlog_max_messages": BOUND,
                 # reports leave at once, as the backlog counts here assume (batches:
                 # tests/integration/test_mqtt_batch.py)
                 "telemetry_send_interval": "0s"}
    return make_lab(LabSpec(prefix=PREFIX, clients=1, dhcp=False, start_gateway=False,
                            extra={"telemetry": telemetry}))


@pytest.fixture(scope="module")
def broker(lab: LabInfo, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with Broker(tmp_path_factory.mktemp("broker"), PORT, host=p.WAN_ISP_V4, ns=lab.wan,
                tls_port=TLS_PORT, pki=pki) as b:
        yield b


@pytest.fixture(scope="module")
def consumer(broker: Broker) -> Iterator[Consumer]:
    with broker.consumer(TOPICS) as c:
        yield c


def valid(m: Received) -> dict[str, Any]:
    body: dict[str, Any] = m.json
    jsonschema.validate(body, SCHEMA[m.topic])
    return body


def status_is(online: bool, session: int | None = None) -> Callable[[Received], bool]:
    def match(m: Received) -> bool:
        if m.topic != STATUS:
            return False
        body = valid(m)
        return body["online"] is online and (session is None or body["session"] == session)
    return match


def retained_status(broker: Broker, tag: str) -> dict[str, Any]:
    """What a new subscriber is given for the status topic (the retained message)."""
    with broker.consumer(STATUS, client_id=f"probe-{tag}") as probe:
        got = probe.wait_for(lambda m: m.retain, 10, "the retained status")
    return valid(got)


def test_online_on_connect_offline_will_after_kill_then_online_with_a_new_session(
        lab: LabInfo, broker: Broker, consumer: Consumer) -> None:
    start_gateway(lab)
    online = valid(consumer.wait_for(status_is(True), 30, "the gateway's online status"))
    assert online["site"] == SITE and online["session"] >= 1
    assert online["config_version"] == desanet_json(lab.control_socket, "status")["config"]["version"]
    assert retained_status(broker, "1") == online  # retained: a late subscriber sees it

    seen = len(consumer.messages())
    stop_gateway(lab, signal.SIGKILL)
    will = valid(consumer.wait_for(status_is(False, online["session"]), 30, "the offline Will",
                                   after=seen))
    assert will["boot_time"] == online["boot_time"]
    assert retained_status(broker, "2")["online"] is False

    seen = len(consumer.messages())
    start_gateway(lab)
    again = valid(consumer.wait_for(status_is(True), 30, "online again", after=seen))
    assert again["session"] == online["session"] + 1
    assert retained_status(broker, "3") == again
    for m in consumer.messages():
        valid(m)  # every payload seen, not only those waited for


def outbox_size(lab: LabInfo) -> int:
    conn = open_readonly(Path(lab.state_dir) / "state" / "telemetry.db")
    try:
        return int(conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    finally:
        conn.close()


def _batch_events(consumer: Consumer, after: int) -> list[dict[str, Any]]:
    return [valid(m) for m in consumer.messages()[after:]
            if m.topic == EVENT and m.json["type"] == "voucher_batch_created"]


def test_events_made_while_the_broker_is_down_arrive_in_order_across_a_kill(
        lab: LabInfo, broker: Broker, consumer: Consumer) -> None:
    ensure_gateway(lab)
    consumer.wait_for(status_is(True), 30, "the gateway online")
    seen = len(consumer.messages())
    broker.stop()
    counts = [1, 2, 3]
    for n in counts:  # each batch is one event on the bus, queued in the outbox
        desanet_json(lab.control_socket, "vouchers", "create", "--count", str(n), "--duration", "1h")
    assert outbox_size(lab) >= len(counts)
    stop_gateway(lab, signal.SIGKILL)  # the queued events exist only in the outbox now
    start_gateway(lab)
    for n in (4, 5):
        desanet_json(lab.control_socket, "vouchers", "create", "--count", str(n), "--duration", "1h")
    broker.start()
    counts += [4, 5]

    def all_arrived() -> bool:
        return len({e["seq"] for e in _batch_events(consumer, seen)}) >= len(counts)
    wait_until(all_arrived, 60, "every voucher batch event at the consumer")
    events = _batch_events(consumer, seen)
    first: dict[int, dict[str, Any]] = {}
    for e in events:  # QoS 1 may repeat one: the same seq, the same content
        assert first.setdefault(e["seq"], e) == e
    seqs = [e["seq"] for e in events if first[e["seq"]] is e]
    assert seqs == sorted(seqs), f"not in sequence order: {seqs}"
    assert [first[s]["count"] for s in seqs] == counts  # none lost, none reordered
    sessions = [first[s]["session"] for s in seqs]
    assert sessions[0] == sessions[2] < sessions[3] == sessions[4]  # made before / after the kill
    for e in events:
        assert not {"mac", "ip", "code", "voucher", "batch"} & set(e)
    consumer.wait_for(status_is(True, sessions[3]), 30, "the status of the new session", after=seen)
    # a message leaves the outbox once the broker acknowledged it
    wait_until(lambda: outbox_size(lab) == 0, 30, "the outbox to empty")
    tel = desanet_json(lab.control_socket, "status")["telemetry"]
    assert tel["connected"] and tel["session"] == sessions[3]
    # (a telemetry report may be queued at any moment: the backlog is 0 again soon after)
    wait_until(lambda: desanet_json(lab.control_socket, "status")["telemetry"]["backlog"] == 0,
               30, "an empty backlog")
    for m in consumer.messages():
        valid(m)


def seq_of(message: Received) -> int | None:
    """The seq a message of the gateway's outbox carries (None for anything else)."""
    try:
        body = message.json
    except ValueError:
        return None
    return body.get("seq") if isinstance(body, dict) else None


def outbox_seqs(lab: LabInfo) -> tuple[list[int], int]:
    """The seqs in the outbox and the highest handed out, read from its file at one moment."""
    conn = open_readonly(Path(lab.state_dir) / "state" / "telemetry.db")
    try:
        conn.execute("BEGIN")  # one snapshot for both reads
        seqs = [int(r[0]) for r in conn.execute("SELECT seq FROM messages ORDER BY seq")]
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='messages'").fetchone()
        return seqs, int(row[0]) if row else 0
    finally:
        conn.close()


def make_batches(lab: LabInfo, n: int) -> None:
    """``n`` voucher batches, each one event (through the control socket, no CLI start-up)."""
    with ControlClient(lab.control_socket, timeout=20) as client:
        for _ in range(n):
            client.request("POST", "/v1/vouchers", {"count": 1, "duration": 3600, "max_devices": 1})


def test_an_outage_past_the_bound_keeps_the_newest_events_and_counts_the_rest(
        lab: LabInfo, broker: Broker, consumer: Consumer) -> None:
    ensure_gateway(lab)
    consumer.wait_for(status_is(True), 30, "the gateway online")
    wait_until(lambda: outbox_size(lab) == 0, 30, "an empty outbox before the outage")
    before = desanet_json(lab.control_socket, "status")["telemetry"]["dropped"]
    seen = len(consumer.messages())
    queued, top = outbox_seqs(lab)
    # Every seq from here on is delivered or counted dropped (the daemon may still be making
    # messages of its own, e.g. after the last test's restart: they count too).
    first = queued[0] if queued else top + 1
    broker.stop()
    make_batches(lab, BOUND // 2 + 10)
    stop_gateway(lab, signal.SIGKILL)  # the bound and the counts hold across a crash
    start_gateway(lab)
    make_batches(lab, BOUND // 2 + 10)
    held, last = outbox_seqs(lab)
    assert last - first + 1 > BOUND + 10
    # events only (the daemon's other messages are events too): the newest BOUND wait
    assert held == list(range(last - BOUND + 1, last + 1))
    tel = desanet_json(lab.control_socket, "status")["telemetry"]
    assert tel["backlog"] == BOUND
    restart = len(consumer.messages())
    broker.start()

    wait_until(lambda: outbox_size(lab) == 0, 60, "the backlog sent and acknowledged")
    final = outbox_seqs(lab)[1]  # the daemon may have made more of its own meanwhile
    # Acknowledged by the broker is not yet written down by the consumer: wait for the newest.
    consumer.wait_for(lambda m: seq_of(m) == final, 30, f"seq {final} at the consumer",
                      after=restart)
    tel = desanet_json(lab.control_socket, "status")["telemetry"]

    def seqs(msgs: list[Received]) -> list[int]:
        return list(dict.fromkeys(valid(m)["seq"] for m in msgs if m.topic == EVENT
                                  and m.json["seq"] >= first))  # first arrivals, in order
    live = seqs(consumer.messages()[seen:restart])  # sent before the broker stopped
    backlog = [s for s in seqs(consumer.messages()[restart:]) if s not in live]
    assert backlog == sorted(backlog), "not in seq order"
    assert {m.json["seq"] for m in consumer.messages()[restart:]
            if m.topic == EVENT and m.json["seq"] <= last and not m.json.get("hist")} == set()
    lost = [s for s in range(first, final + 1) if s not in live and s not in backlog]
    assert len(lost) >= last - first + 1 - BOUND  # the outage made more than the bound
    assert max(lost) < min(backlog)  # the oldest events were dropped, the newest kept
    dropped = {"event": before["event"] + len(lost), "telemetry": before["telemetry"]}
    assert tel["dropped"] == dropped  # every missing seq is counted, none more
    # the status sent at the reconnect names the drops of the outage (the daemon's own
    # events may add one later, in the next status)
    status = valid(consumer.wait_for(lambda m: m.topic == STATUS and m.json["online"], 30,
                                     "the status at the reconnect", after=restart))
    assert status["session"] == tel["session"]
    assert status["dropped"]["telemetry"] == before["telemetry"]
    assert before["event"] + last - first + 1 - BOUND <= status["dropped"]["event"] <= dropped["event"]
    counters = json.loads((Path(lab.state_dir) / "state" / "telemetry.counters").read_text())
    assert counters["session"] == tel["session"] and counters["seq_reserved"] >= last
