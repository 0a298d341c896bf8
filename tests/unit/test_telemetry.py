"""Telemetry, the pure and durable parts: config section, topic tree, payloads, outbox."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import jsonschema
import pytest

from gateway.config import parse_config_text
from gateway.core import events as ev
from gateway.core.lifecycle import TELEMETRY_OUTBOX, IllegalTransition
from gateway.errors import ConfigError
from gateway.store.telemetry_outbox import TelemetryOutbox
from gateway.telemetry import payloads
from gateway.telemetry.outbox import InFlight, NewMessage
from gateway.telemetry.topics import Topics, fleet_filter

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"

BASE = """
[site]
name = "Hotspot"
village = "Desa"
[network]
lan_interface = "br-lan"
wan_interface = "eth0"
lan_address = "10.42.0.1/24"
[dhcp]
range_start = "10.42.0.100"
range_end = "10.42.0.250"
[telemetry]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config_text(BASE + text)
    return info.value.problems


# -- config ------------------------------------------------------------------------------------------


def test_telemetry_is_off_by_default_with_long_keepalive() -> None:
    tel = parse_config_text(BASE).telemetry
    assert not tel.enabled and tel.broker is None
    assert tel.topic_prefix == "desanet/v1" and tel.keepalive == 1800
    assert tel.reconnect_min < tel.reconnect_max and 0 < tel.reconnect_jitter <= 1


def test_a_full_telemetry_section_parses() -> None:
    tel = parse_config_text(BASE + """
enabled = true
broker = "mqtts://mqtt.example.go.id"
site_id = "jabar-sukamaju"
ca_file = "/etc/desanet/mqtt/ca.crt"
cert_file = "/etc/desanet/mqtt/device.crt"
key_file = "/etc/desanet/mqtt/device.key"
username = "jabar-sukamaju"
password = "rahasia"
keepalive = "10m"
reconnect_min = "2s"
reconnect_max = "30m"
start_delay_max = "0s"
status_interval = 0
""").telemetry
    assert (tel.host, tel.port, tel.tls) == ("mqtt.example.go.id", 8883, True)
    assert (tel.keepalive, tel.reconnect_min, tel.reconnect_max) == (600, 2, 1800)
    assert tel.start_delay_max == 0 and tel.status_interval == 0
    defaults = parse_config_text(BASE).telemetry
    assert (defaults.telemetry_interval, defaults.telemetry_sample_interval,
            defaults.telemetry_full_every) == (300, 60, 12)
    assert parse_config_text(BASE + 'broker = "mqtt://10.0.0.5:1884"').telemetry.port == 1884


@pytest.mark.parametrize(("text", "expected"), [
    ("enabled = true", ["telemetry.broker: required", "telemetry.site_id: required"]),
    ('broker = "http://x.example"', ["telemetry.broker: \"http://x.example\" is not a broker URL"]),
    ('broker = "mqtt://u:p@x.example"', ["telemetry.broker: "]),
    ('broker = "mqtt://x.example/path"', ["telemetry.broker: "]),
    ('broker = "mqtt://x.example:0"', ["telemetry.broker: "]),
    ('site_id = "a/b"', ["telemetry.site_id: \"a/b\" is not a site id"]),
    ('site_id = "#"', ["telemetry.site_id: "]),
    ('topic_prefix = "desanet/+/v1"', ["telemetry.topic_prefix: "]),
    ('topic_prefix = "/desanet"', ["telemetry.topic_prefix: "]),
    ('topic_prefix = "$SYS"', ["telemetry.topic_prefix: "]),
    ('broker = "mqtt://x.example"\nca_file = "/ca.crt"', ["telemetry.ca_file: set but broker"]),
    ('broker = "mqtts://x.example"\ncert_file = "/d.crt"', ["telemetry.key_file: missing"]),
    ('broker = "mqtts://x.example"\nkey_file = "/d.key"', ["telemetry.cert_file: missing"]),
    ('ca_file = "ca.crt"', ["telemetry.ca_file: \"ca.crt\" is not an absolute path"]),
    ('password = "x"', ["telemetry.username: missing"]),
    ('keepalive = "5s"', ["telemetry.keepalive: 5s is outside 10s"]),
    ('keepalive = "2d"', ["telemetry.keepalive: 2d is outside"]),
    ('reconnect_min = "1h"\nreconnect_max = "1m"', ["telemetry.reconnect_min: 1h is above reconnect_max 1m"]),
    ("reconnect_jitter = 1.5", ["telemetry.reconnect_jitter: 1.5 is not valid"]),
    ('start_delay_max = "2h"', ["telemetry.start_delay_max: 2h is outside 0s to 1h"]),
    ("brokr = 1", ["telemetry.brokr: unknown key"]),
    ('telemetry_interval = "1m"\ntelemetry_sample_interval = "2m"',
     ["telemetry.telemetry_sample_interval: 2m is above telemetry_interval 1m"]),
    ('telemetry_sample_interval = "1s"', ["telemetry.telemetry_sample_interval: 1s is outside 5s"]),
    ("telemetry_full_every = 0", ["telemetry.telemetry_full_every: "]),
])
def test_telemetry_config_errors_name_the_field(text: str, expected: list[str]) -> None:
    found = problems(text)
    assert len(found) == len(expected), found
    for line, start in zip(found, expected, strict=True):
        assert line.startswith(start), (line, start)


def test_telemetry_problems_are_reported_with_the_other_sections() -> None:
    found = problems('enabled = true\nkeepalive = "1s"\n[portal]\nhttp_port = 0\n')
    # the section's own cross checks (broker, site_id) wait until its fields are valid
    assert {p.split(":")[0] for p in found} == {"telemetry.keepalive", "portal.http_port"}


# -- topics ------------------------------------------------------------------------------------------


def test_the_topic_tree() -> None:
    t = Topics("desanet/v1", "jabar-sukamaju")
    assert [t.status, t.telemetry, t.event, t.cmd_req, t.cmd_res] == [
        "desanet/v1/jabar-sukamaju/status", "desanet/v1/jabar-sukamaju/telemetry",
        "desanet/v1/jabar-sukamaju/event", "desanet/v1/jabar-sukamaju/cmd/req",
        "desanet/v1/jabar-sukamaju/cmd/res"]
    assert t.subtree == "desanet/v1/jabar-sukamaju/#"
    assert fleet_filter("desanet/v1", "status") == "desanet/v1/+/status"
    assert fleet_filter("desanet/v1") == "desanet/v1/#"


@pytest.mark.parametrize(("topic", "leaf"), [
    ("desanet/v1/s1/status", "status"), ("desanet/v1/s1/cmd/req", "cmd/req"),
    ("desanet/v1/s2/status", None), ("desanet/v1/s1/cmd", None), ("desanet/v1/s1/status/x", None),
    ("desanet/v1/s1", None), ("other/desanet/v1/s1/status", None),
])
def test_topics_parse_only_this_gateways_tree(topic: str, leaf: str | None) -> None:
    assert Topics("desanet/v1", "s1").parse(topic) == leaf


@pytest.mark.parametrize(("prefix", "site"), [
    ("desanet/v1", "a/b"), ("desanet/v1", "+"), ("desanet/v1", "#"), ("desanet/v1", ""),
    ("desanet/#", "s"), ("/desanet", "s"), ("desanet/", "s"), ("a//b", "s"),
])
def test_topics_refuse_wildcards_and_empty_levels(prefix: str, site: str) -> None:
    with pytest.raises(ValueError):
        Topics(prefix, site)


# -- payloads ----------------------------------------------------------------------------------------

STATUS_SCHEMA = json.loads((SCHEMAS / "status.schema.json").read_text())
EVENT_SCHEMA = json.loads((SCHEMAS / "event.schema.json").read_text())
TELEMETRY_SCHEMA = json.loads((SCHEMAS / "telemetry.schema.json").read_text())
WHO = payloads.Identity(site="jabar-sukamaju", version="0.1.0", boot_time=1_764_000_000, session=7)

# Every event type with values a person could be found by; none may appear in a payload.
MAC, IP, CODE, BY = "02:00:00:aa:bb:cc", "10.42.0.144", "K7Q3-P9XW", "budi"
ALL_EVENTS: list[ev.Event] = [
    ev.SessionStarted(MAC, IP, "voucher", plan="basic", voucher=CODE, expires=1),
    ev.SessionStarted(MAC, IP, "terms"),
    ev.SessionEnded(MAC, IP, ev.EndReason.IDLE),
    ev.PlanChanged(MAC, "school"),
    ev.ConfigApplied("0123456789ab", "ba9876543210", ev.ChangeSource.CLI, BY,
                     ("portal.terms_id: 'a' -> 'b'", f"access.trusted_macs: [] -> ['{MAC}']"), 99),
    ev.ConfigConfirmed("0123456789ab", ev.ChangeSource.CLI, BY),
    ev.ConfigRolledBack("ba9876543210", "0123456789ab", ev.ChangeSource.TIMER,
                        f"the config failed at start (access.trusted_macs[0]: {MAC})", BY),
    ev.ConfigRefused(ev.ChangeSource.SIGHUP, f"access.blocked_macs[0]: \"{MAC}\" ...", "firewall", BY),
    ev.UplinkChanged(False, 1, "probes", None),
    ev.ServiceHealthChanged("dukcapil", "down"),
    ev.VoucherBatchCreated("warung-budi", 20, "basic", 3600),
    ev.VoucherRevoked(CODE, 2),
    ev.VoucherReleased(CODE, MAC, 1),
    ev.CommandHandled("cmd-0001", "deauth", "refused", "replayed"),
]


def test_every_event_type_of_the_bus_has_an_allow_list() -> None:
    declared = {cls.type for cls in vars(ev).values()
                if isinstance(cls, type) and issubclass(cls, ev.Event) and cls is not ev.Event}
    assert declared == set(payloads.EVENT_FIELDS)
    assert declared == {e.type for e in ALL_EVENTS}


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: e.type)
def test_event_payloads_carry_no_personal_data_and_validate(event: ev.Event) -> None:
    body = payloads.message(WHO, seq=3, session=6, created=1_764_000_001.25,
                            data=payloads.event_data(event))
    text = payloads.encode(body).decode()
    for secret in (MAC, IP, CODE, BY, "warung-budi"):
        assert secret not in text
    jsonschema.validate(json.loads(text), EVENT_SCHEMA)
    assert body["type"] == event.type and body["seq"] == 3 and body["session"] == 6


def test_config_changes_are_sent_as_field_paths_only() -> None:
    applied = next(e for e in ALL_EVENTS if isinstance(e, ev.ConfigApplied))
    assert payloads.event_data(applied)["changes"] == ["portal.terms_id", "access.trusted_macs"]


def test_an_unknown_event_type_publishes_its_type_only() -> None:
    class Odd(ev.Event):
        type = "odd"
    assert payloads.event_data(Odd()) == {"type": "odd"}


def test_the_event_schema_refuses_personal_fields() -> None:
    body = payloads.message(WHO, 1, 1, 1.0, {"type": "session_ended", "reason": "idle"})
    jsonschema.validate(body, EVENT_SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**body, "mac": MAC}, EVENT_SCHEMA)


@pytest.mark.parametrize("online", [True, False])
def test_status_and_will_validate(online: bool) -> None:
    body = payloads.status(WHO, "0123456789ab", online=online)
    jsonschema.validate(body, STATUS_SCHEMA)
    assert body["online"] is online and body["session"] == 7
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**body, "v": 2}, STATUS_SCHEMA)


# -- the outbox --------------------------------------------------------------------------------------


def _msgs(n: int, start: int = 0) -> list[NewMessage]:
    return [NewMessage("event", float(start + i), json.dumps({"type": "t", "i": start + i}))
            for i in range(n)]


def test_outbox_numbers_in_order_and_keeps_until_acked(tmp_path: Path) -> None:
    box = TelemetryOutbox(tmp_path / "t.db")
    assert box.add(1, _msgs(3)) == [1, 2, 3]
    assert [m.seq for m in box.pending()] == [1, 2, 3]
    assert [m.seq for m in box.pending(after=1, limit=1)] == [2]
    assert box.ack([2]) == 1
    assert box.ack([2]) == 0  # a second PUBACK of the same message changes nothing
    assert [m.seq for m in box.pending()] == [1, 3]
    assert box.add(1, _msgs(1, 3)) == [4]
    assert box.ack([1, 3, 4]) == 3 and box.count() == 0
    assert box.add(2, _msgs(1)) == [5]  # a number is never handed out twice
    box.close()


def test_outbox_refuses_an_unknown_kind(tmp_path: Path) -> None:
    box = TelemetryOutbox(tmp_path / "t.db")
    with pytest.raises(ValueError, match="kind"):
        box.add(1, [NewMessage("gossip", 0.0, "{}")])  # type: ignore[arg-type]
    assert box.count() == 0


def _write_then_die(path: str, n: int) -> None:
    box = TelemetryOutbox(path)
    session = box.next_session()
    box.add(session, _msgs(n))
    box.ack([1])
    os._exit(0)  # no close, no checkpoint: as a kill -9 right after the commits


def test_outbox_and_session_counter_survive_a_crash(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    for round_ in range(2):
        proc = multiprocessing.get_context("fork").Process(target=_write_then_die, args=(path, 5))
        proc.start()
        proc.join(30)
        assert proc.exitcode == 0
        box = TelemetryOutbox(path)
        assert box.next_session() == 2 * round_ + 2  # the dead process used one number
        box.close()
    box = TelemetryOutbox(path)
    # round 1 wrote 1-5 and acked 1; round 2 wrote 6-10 and acked 1 (already gone)
    assert [m.seq for m in box.pending()] == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert [m.session for m in box.pending()] == [1] * 4 + [3] * 5
    box.close()


def test_in_flight_follows_the_state_table() -> None:
    flight = InFlight()
    flight.published(5, mid=1)
    flight.published(6, mid=2)
    assert len(flight) == 2
    assert flight.acked(1) == [5]
    assert flight.acked(1) == []  # not ours (any more): the status, or a repeat
    assert flight.acked(99) == []
    assert flight.lost() == [6]
    assert len(flight) == 0
    flight.published(6, mid=3)  # queued again after the connection was lost
    assert flight.refused(3) == [6]
    flight.published(6, mid=4)
    with pytest.raises(IllegalTransition):
        flight.published(6, mid=5)  # published twice while in flight: a bug
    flight.published([7, 8, 9], mid=6)  # a telemetry batch: one PUBLISH, one PUBACK
    assert len(flight) == 2
    assert flight.acked(6) == [7, 8, 9]
    flight.published([10, 11], mid=7)
    assert flight.lost() == [6, 10, 11]


@pytest.mark.parametrize(("state", "event", "to"), [
    (s, e, TELEMETRY_OUTBOX.moves.get((s, e))) for s, e in TELEMETRY_OUTBOX.pairs()])
def test_telemetry_outbox_table(state: str, event: str, to: str | None) -> None:
    expected = {("queued", "publish"): "in_flight", ("in_flight", "puback"): "acked",
                ("in_flight", "connection_lost"): "queued", ("in_flight", "refused"): "queued"}
    assert expected.get((state, event)) == to
    assert TELEMETRY_OUTBOX.is_final("acked")


# -- docs/mqtt.md: every worked example is a valid payload -------------------------------------------

MQTT_DOC = SCHEMAS.parent / "mqtt.md"


def test_the_worked_examples_in_docs_mqtt_validate() -> None:
    import re

    text = MQTT_DOC.read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", text, re.S)]
    statuses = [b for b in blocks if "online" in b]
    events = [b for b in blocks if "type" in b]
    reports = [b for b in blocks if "seq" in b and "type" not in b]
    assert len(statuses) == 2 and len(events) == 1 and len(reports) == 2
    for body in reports:
        jsonschema.validate(body, TELEMETRY_SCHEMA)
    assert reports[0]["f"] is True and "f" not in reports[1]
    for body in statuses:
        jsonschema.validate(body, STATUS_SCHEMA)
    envelope = {k: events[0][k] for k in ("v", "site", "session", "seq", "time")}
    rows = re.findall(r"^\| `([a-z_]+)`.*\| `(\{\"type\".*\})` \|$", text, re.M)
    assert {t for t, _ in rows} >= set(payloads.EVENT_FIELDS) - {"voucher_released"}
    for kind, example in [("event", events[0]), *rows]:
        body = example if isinstance(example, dict) else {**envelope, **json.loads(example)}
        jsonschema.validate(body, EVENT_SCHEMA)
        if kind != "event":  # the table shows exactly the fields the gateway sends
            assert body["type"] == kind
            assert set(json.loads(str(example))) - {"type"} == set(payloads.EVENT_FIELDS[kind])
