"""The periodic telemetry report (gateway/telemetry/metrics.py): what it reads, what it never
sends, deadbands, counters, the full-report cadence, and the schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.errors import VoucherError
from gateway.model import ClientView
from gateway.telemetry import payloads
from gateway.telemetry.metrics import (
    FAMILIES,
    METRICS,
    Readings,
    Reporter,
    Sample,
    SystemReadings,
    fold,
    sample,
)
from tests.unit.conftest import make_config
from tests.unit.corekit import build_core

SCHEMA = json.loads((Path(__file__).parents[2] / "docs/schemas/telemetry.schema.json").read_text())
WHO = payloads.Identity("jabar-sukamaju", "0.1.0", 1_764_662_400, 42)

MAC, IP, HOST, CODE = "02:aa:bb:cc:dd:ee", "10.42.0.101", "budi-phone", "QWERT-YUIOP"
PERSONAL = (MAC, IP, HOST, CODE, "02aabbccddee", "10.42.0", "budi")

SYSTEM = SystemReadings(cpu=12.4, memory=41.6, disk=27.2, temperature=51.0, uptime=86400,
                        load=0.42, interfaces={"eth0": (1000, 500), "br-lan": (400, 900)})


def gateway_status(**over: Any) -> dict[str, Any]:
    """GatewayOps.metrics() as a real daemon fills it, personal data where it really is."""
    data: dict[str, Any] = {
        "ready": True, "site": HOST, "village": "Sukamaju", "uptime": 3600,
        "portal_url": f"http://{IP}/", "lan_ip": IP, "sessions_active": 7, "clients_connected": 9,
        "uplink": {"state": "up", "since": 1, "since_iso": "x", "latency_ms": 612.4, "reason": "probes",
                   "loss_pct": 15.0},
        "shaping": {"enabled": True, "leaf_qdisc": "fq_codel", "directions": {
            "down": {"device": "br-lan", "classes": {
                "uplink": {"class": "1:1", "bytes": 10, "packets": 1, "drops": 3},
                "1:10": {"class": "1:10", "bytes": 5, "packets": 1, "drops": 2, "mac": MAC}}},
            "up": {"device": "ifb0", "classes": {"uplink": {"class": "1:1", "drops": 1}}}}},
        "telemetry": {"enabled": True, "connected": True, "broker": "mqtt://b", "site_id": "s",
                      "backlog": 4, "connects": 2, "sent": 10, "acked": 9,
                      "dropped": {"event": 1, "telemetry": 5}},
        "portal": {"logins": 5, "voucher_failures": 2},
        "services": {
            "enabled": True, "hostname": HOST,
            "cache": {"hits": 30, "misses": 10, "hit_ratio": 0.75, "bytes_from_cache": 123456,
                      "entries": 4},
            "services": {
                "dukcapil": {"state": "online", "failing_urls": {f"http://{IP}/?v={CODE}": {}}},
                "bpjs": {"state": "offline", "last_error_text": f"{MAC} said no"},
                "pajak": {"state": "online"}},
            "outbox": {"queued": 2, "sending": 1, "delivered": 50, "rejected": 1, "unknown": 1},
        },
        "clients": [{"mac": MAC, "ip": IP, "hostname": HOST, "voucher": CODE}],
    }
    data.update(over)
    return data


def test_a_sample_reads_the_named_numbers() -> None:
    s = sample(Readings(SYSTEM, gateway_status()))
    assert s == {
        "cpu": 12, "mem": 42, "dsk": 27, "tmp": 51, "upt": 86400, "ld": 0.42,
        "rx/br-lan": 400, "tx/br-lan": 900, "rx/eth0": 1000, "tx/eth0": 500,
        "ul": 1, "lat": 612, "ls": 15, "cc": 9, "ca": 7, "li": 5, "fv": 2, "sd": 6,
        "hr": 0.75, "bs": 123456, "sv/online": 2, "sv/offline": 1,
        "qf": 4,  # queued, sending and unknown (asked again) wait; delivered and rejected are done
        "bl": 4, "rc": 2, "dr": 6,
    }


@pytest.mark.parametrize("over", [
    {},  # personal data where the real status holds it
    {"uplink": {"state": MAC, "latency_ms": IP}},
    {"telemetry": {"enabled": True, "backlog": MAC, "connects": IP}},
    {"portal": {"logins": CODE, "voucher_failures": [MAC]}},
    {"services": {"enabled": True, "cache": {"hit_ratio": IP},
                  "services": {CODE: {"state": MAC}, HOST: {"state": IP}, "x": {"state": HOST}}}},
])
def test_no_personal_data_leaves_even_when_the_readings_carry_some(over: dict[str, Any]) -> None:
    # (sysinfo reads only the interfaces the config names; an address is never taken for one)
    system = SystemReadings(interfaces={MAC: (1, 1), IP: (2, 2), "eth0": (3, 3),
                                        "10.42.0.1": (5, 5), "wlan0": (6, 6)})
    reporter = Reporter(full_every=1)
    reporter.add(sample(Readings(system, gateway_status(**over))))
    body = reporter.report()
    assert body is not None
    wire = payloads.encode(payloads.message(WHO, 1, 42, 1.0, body)).decode()
    for secret in PERSONAL:
        assert secret not in wire
    assert set(body.get("rx", {})) <= {"eth0", "wlan0"}
    jsonschema.validate(json.loads(wire), SCHEMA)


def test_an_interface_named_like_a_host_is_refused_only_when_it_is_an_address() -> None:
    names = {"eth0": (1, 1), "br-lan": (1, 1), "wlan0.100": (1, 1), "192.168.1.1": (1, 1),
             "::1": (1, 1), "a" * 16: (1, 1), "-x": (1, 1)}
    keys = {k for k in sample(Readings(SystemReadings(interfaces=names), {})) if k.startswith("rx/")}
    assert keys == {"rx/eth0", "rx/br-lan", "rx/wlan0.100"}


def run(values: list[Sample], full_every: int = 1000) -> list[dict[str, Any] | None]:
    """One sample per interval; the reports, the first one (full) included."""
    reporter, out = Reporter(full_every), []
    for one in values:
        reporter.add(one)
        out.append(reporter.report())
    return out


@pytest.mark.parametrize(("key", "values", "sent"), [
    # cpu: deadband 10 from the value last SENT (a slow creep is sent once it adds up)
    ("cpu", [20, 25, 29, 31, 35, 40, 10], [20, None, None, 31, None, None, 10]),
    ("cpu", [20, 30, 20], [20, None, None]),  # exactly the deadband is no move
    ("mem", [40, 46, 44, 40], [40, 46, None, 40]),
    ("tmp", [50, None, None, 50], [50, "null", None, 50]),  # unknown is sent, once
    ("ld", [0.5, 0.9, 1.1], [0.5, None, 1.1]),
    ("ul", [1, 1, 0, 0, 1], [1, None, 0, None, 1]),  # deadband 0: every change
    ("ul", [None, None, 1], [None, None, 1]),  # unknown at start is left out of a full report
    ("ca", [5, 6, 7, 8, 8], [5, None, None, 8, None]),
    ("hr", [0.5, 0.54, 0.56], [0.5, None, 0.56]),
])
def test_gauges_are_sent_when_they_move_past_their_deadband(
        key: str, values: list[Any], sent: list[Any]) -> None:
    def shown(body: dict[str, Any] | None) -> Any:
        if body is None or key not in body:
            return None
        return "null" if body[key] is None else body[key]

    assert [shown(b) for b in run([{key: v} for v in values])] == sent


@pytest.mark.parametrize(("values", "full_every", "sent"), [
    # in full reports only, as the increase since the previous full report
    ([5, 5, 7, 7, 10, 12], 2, [0, None, 2, None, 3, None]),
    ([5, 8, 2, 4], 1, [0, 3, 2, 2]),  # went down: the source restarted, its value is the increase
    ([None, 3, 4], 1, [None, 0, 1]),  # counts from the first sample that had it
])
def test_counters_send_their_increase_in_full_reports(
        values: list[int | None], full_every: int, sent: list[int | None]) -> None:
    reports = run([{"li": v} for v in values], full_every)
    assert [None if b is None else b.get("li") for b in reports] == sent


def test_counters_count_from_the_first_sample_of_the_run() -> None:
    reporter = Reporter(full_every=1000)
    reporter.add({"li": 10, "rx/eth0": 1_000_000})  # at start: the baseline
    reporter.add({"li": 12, "rx/eth0": 1_000_500})
    assert reporter.report() == {"f": True, "li": 2, "rx": {"eth0": 500}}


def test_nothing_moved_sends_nothing_and_a_full_report_comes_every_n() -> None:
    steady: Sample = {"cpu": 20, "mem": 40, "upt": 100, "li": 3}
    reports = run([dict(steady, upt=100 + i) for i in range(7)], full_every=3)
    assert reports == [{"f": True, "cpu": 20, "mem": 40, "upt": 100, "li": 0}, None, None,
                       {"f": True, "cpu": 20, "mem": 40, "upt": 103, "li": 0}, None, None,
                       {"f": True, "cpu": 20, "mem": 40, "upt": 106, "li": 0}]


def test_a_full_report_resets_the_deadband_reference() -> None:
    reports = run([{"cpu": 20}, {"cpu": 28}, {"cpu": 36}], full_every=2)
    # the full report 3 sent 36; without it, 36 would be sent anyway (16 from 20)
    assert reports == [{"f": True, "cpu": 20}, None, {"f": True, "cpu": 36}]
    reports = run([{"cpu": 20}, {"cpu": 28}, {"cpu": 36}, {"cpu": 44}], full_every=2)
    assert reports[3] is None  # 44 is 8 from the 36 sent in full


def test_a_health_state_that_empties_is_sent_as_zero_and_a_gone_interface_is_forgotten() -> None:
    reports = run([{"sv/online": 2, "sv/offline": 1}, {"sv/online": 3}, {"sv/online": 3}])
    assert reports[1:] == [{"sv": {"online": 3, "offline": 0}}, None]
    reports = run([{"rx/eth0": 5}, {"rx/eth1": 7}, {"rx/eth1": 9, "rx/eth0": 100},
                   {"rx/eth1": 9, "rx/eth0": 150}], full_every=1)
    assert [r and r["rx"] for r in reports] == [
        {"eth0": 0}, {"eth1": 0}, {"eth1": 2, "eth0": 0},  # eth0 came back: it counts from here
        {"eth1": 0, "eth0": 50}]


def test_samples_of_an_interval_fold_by_mean_max_or_last() -> None:
    got = fold([{"cpu": 10, "tmp": 50, "ld": 0.5, "mem": 40, "lat": None},
                {"cpu": 40, "tmp": 60, "ld": 1.0, "mem": 45, "lat": 300},
                {"cpu": None, "tmp": 55, "ld": 1.25, "mem": 47, "lat": 500}])
    assert got == {"cpu": 25, "tmp": 60, "ld": 0.92, "mem": 47, "lat": 400}
    assert fold([]) == {}


def test_the_schema_declares_every_metric_and_refuses_any_other_key() -> None:
    declared = set(SCHEMA["properties"]) - {"v", "site", "session", "seq", "time", "hist", "f"}
    assert declared == set(METRICS)
    assert set(FAMILIES) <= declared
    base = {"v": 1, "site": "s1", "session": 1, "seq": 9, "time": 1.5}
    jsonschema.validate({**base, "cpu": 3}, SCHEMA)
    jsonschema.validate({**base, "hist": True, "cpu": 3}, SCHEMA)  # sent from the backlog
    for bad in ({"mac": MAC}, {"ip": IP}, {"cpu": 101}, {"rx": {IP: 5}}, {"ul": 2},
                {"sv": {"Online": 1}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**base, **bad}, SCHEMA)


async def test_the_facade_counts_logins_and_wrong_codes(tmp_path: Path) -> None:
    core = build_core(tmp_path, make_config())
    core.neighbours.add(IP, MAC)
    core.neighbours.add("10.42.0.102", "02:00:00:00:00:0b")
    _, made = await core.vouchers.create_batch(1, 3600, 1, None, "t")
    with pytest.raises(VoucherError):
        await core.sessions.login_voucher(ClientView(IP, MAC, None), "AAAAA-BBBBB")
    await core.sessions.login_voucher(ClientView(IP, MAC, None), made[0].code)
    got = await core.ops.metrics()
    assert got["portal"] == {"logins": 1, "voucher_failures": 1}
    assert got["clients_connected"] == 2 and got["sessions_active"] == 1
    one = sample(Readings(SystemReadings(), got))
    assert (one["li"], one["fv"], one["cc"], one["ca"]) == (1, 1, 2, 1)


def test_the_machine_readings_are_numbers_in_range(tmp_path: Path) -> None:
    from gateway.telemetry.sysinfo import read_system

    first, second = read_system(tmp_path, ["lo", "no-such-if0"]), read_system(tmp_path, ["lo"])
    for one in (first, second):
        assert one.memory is not None and 0 < one.memory <= 100
        assert one.disk is not None and 0 <= one.disk <= 100
        assert one.uptime is not None and one.uptime > 0
        assert set(one.interfaces) == {"lo"}  # only the interfaces asked for, if they exist
    assert second.cpu is not None and 0 <= second.cpu <= 100
    body = Reporter(1)
    body.add(sample(Readings(second, {})))
    jsonschema.validate({"v": 1, "site": "s1", "session": 1, "seq": 1, "time": 1.0,
                         **(body.report() or {})}, SCHEMA)


def test_the_second_worked_example_in_docs_mqtt_is_what_the_reporter_sends() -> None:
    """docs/mqtt.md: after the full report, CPU 12->14 and latency 612->640 stay within their
    deadbands, three more authorized clients do not, logins and bytes wait."""
    reporter = Reporter(12)
    reporter.add({"cpu": 12, "ca": 7, "lat": 612, "li": 0, "rx/eth0": 0})
    reporter.add({"cpu": 12, "ca": 7, "lat": 612, "li": 3, "rx/eth0": 3_210_000})
    assert reporter.report() == {"f": True, "cpu": 12, "ca": 7, "lat": 612, "li": 3,
                                 "rx": {"eth0": 3_210_000}}
    reporter.add({"cpu": 14, "ca": 10, "lat": 640, "li": 6, "rx/eth0": 5_050_000})
    assert reporter.report() == {"ca": 10}
