"""`desanet fleet serve` against a real Mosquitto on loopback, storing in SQLite.

Gateways are stood in for by publishers using the gateway's payload and topic
code (tests/integration/serve_harness.py); the consumers are real
`desanet fleet serve` processes. No root needed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.telemetry import payloads
from tests.integration.mosquitto import Broker, free_port
from tests.integration.serve_harness import Gateway, Serve, query, scrape, traffic, wait_until

pytestmark = [pytest.mark.integration]

SITES = 4
PER_SITE = 100  # numbered messages per site


def _check_stored(db: Path, sites: list[Gateway]) -> None:
    """Every message exactly once, and the latest state per gateway."""
    for gw in sites:
        site = gw.who.site
        keys = query(db, f"SELECT seq FROM messages WHERE site = '{site}' ORDER BY seq")
        assert [k[0] for k in keys] == list(range(1, gw.seq + 1)), f"{site}: lost or extra seq"
        events = query(db, f"SELECT seq FROM events WHERE site = '{site}' ORDER BY seq")
        assert [e[0] for e in events] == list(range(1, gw.seq + 1, 2)), f"{site}: events"
        row = query(db, f"SELECT online, session, messages, events, clients, last_seq "
                        f"FROM gateways WHERE site = '{site}'")[0]
        last_telemetry = max(s for s in range(1, gw.seq + 1) if s % 2 == 0)
        assert row == (1, gw.who.session, gw.seq, (gw.seq + 1) // 2, last_telemetry, gw.seq)


def test_two_instances_in_a_group_split_the_messages_without_loss_or_duplicate(
        mosquitto: Broker, tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    url = f"sqlite://{db}"
    port = free_port()
    a = Serve(tmp_path, mosquitto, url, "serve-a", "g1", port).start()
    b = Serve(tmp_path, mosquitto, url, "serve-b", "g1").start()
    sites = [Gateway(mosquitto, f"desa-{i}", session=3) for i in range(SITES)]
    try:
        copies = 0
        for gw in sites:
            gw.status()
        for gw in sites:
            copies += traffic(gw, PER_SITE)
        total = SITES * PER_SITE
        wait_until(lambda: query(db, "SELECT COUNT(*) FROM messages")[0][0] == total
                   and query(db, "SELECT SUM(duplicates) FROM gateways")[0][0] == copies,
                   60, f"{total} messages and {copies} copies")
        _check_stored(db, sites)
        split = dict(query(db, "SELECT consumer, COUNT(*) FROM messages GROUP BY consumer"))
        assert set(split) == {"serve-a", "serve-b"} and min(split.values()) > total // 10, split
        # Every instance stores every status (retained ones are not given to shared groups).
        assert "desanet_gateway_online" in scrape(port)
    finally:
        for gw in sites:
            gw.close()
        a.stop()
        b.stop()


def test_kill_9_of_one_instance_loses_nothing(mosquitto: Broker, tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    url = f"sqlite://{db}"
    a = Serve(tmp_path, mosquitto, url, "serve-a", "g2").start()
    b = Serve(tmp_path, mosquitto, url, "serve-b", "g2").start()
    sites = [Gateway(mosquitto, f"desa-{i}", session=1) for i in range(2)]
    done = threading.Event()
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            for gw in sites:
                gw.status()
            for _ in range(6):
                for gw in sites:
                    traffic(gw, 50, dup_every=0)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    pub = threading.Thread(target=publish, daemon=True)
    try:
        pub.start()
        wait_until(lambda: query(db, "SELECT COUNT(*) FROM messages WHERE consumer = 'serve-a'")
                   [0][0] >= 40, 60, "serve-a to store some messages")
        a.kill()  # mid-stream: some received, some stored, some not yet acknowledged
        killed_with = query(db, "SELECT COUNT(*) FROM messages")[0][0]
        wait_until(done.is_set, 120, "the publisher")
        assert not errors, errors
        a.start()  # same client id: the broker resends what it had not acknowledged
        total = sum(gw.seq for gw in sites)
        assert killed_with < total
        wait_until(lambda: query(db, "SELECT COUNT(*) FROM messages")[0][0] == total, 60,
                   f"all {total} messages")
        _check_stored(db, sites)
    finally:
        done.wait(30)
        for gw in sites:
            gw.close()
        a.stop()
        b.stop()


def test_prometheus_endpoint_has_the_fleet_and_the_consumer(mosquitto: Broker,
                                                             tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    port = free_port()
    gw = Gateway(mosquitto, "desa-lab", session=7)
    off = Gateway(mosquitto, "desa-off", session=2)
    try:
        gw.status()
        off.status(online=False)
        s = Serve(tmp_path, mosquitto, f"sqlite://{db}", "serve-m", None, port).start()
        gw.telemetry({"cc": 9, "ca": 7, "ul": 1, "lat": 612, "qf": 4, "bl": 0})
        body = gw.event({"type": "uplink_changed", "up": True, "since": 1, "reason": "probes",
                         "latency_ms": 600.0})
        gw.resend(gw.topics.event, body)
        mosquitto_pub_bad = gw.client.publish(gw.topics.event, b"not json", qos=1)
        mosquitto_pub_bad.wait_for_publish(10)

        def series() -> dict[str, float]:
            found = {}
            for line in scrape(port).splitlines():
                m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
                if m:
                    found[m.group(1)] = float(m.group(2))
            return found

        wait_until(lambda: series().get('desanet_gateway_rejected_total{site="desa-lab"}') == 1,
                   30, "the unreadable payload counted")
        got = series()
        expect = {
            'desanet_gateway_online{site="desa-lab"}': 1, 'desanet_gateway_online{site="desa-off"}': 0,
            'desanet_gateways{state="online"}': 1, 'desanet_gateways{state="offline"}': 1,
            'desanet_gateway_session{site="desa-lab"}': 7, 'desanet_gateway_clients{site="desa-lab"}': 9,
            'desanet_gateway_clients_authorized{site="desa-lab"}': 7,
            'desanet_gateway_uplink_up{site="desa-lab"}': 1,
            'desanet_gateway_uplink_latency_seconds{site="desa-lab"}': 0.612,
            'desanet_gateway_queued_forms{site="desa-lab"}': 4,
            'desanet_gateway_backlog_messages{site="desa-lab"}': 0,
            'desanet_gateway_events_total{site="desa-lab"}': 1,
            'desanet_gateway_duplicates_total{site="desa-lab"}': 1,
            'desanet_gateway_info{config_version="3f9a1c07b2de",site="desa-lab",version="0.1.0"}': 1,
            'desanet_serve_messages_total{leaf="telemetry"}': 1,
            'desanet_serve_messages_total{leaf="event"}': 1,
            'desanet_serve_duplicates_total': 1, 'desanet_serve_rejected_total': 1,
            'desanet_serve_connected': 1,
        }
        assert {k: got.get(k) for k in expect} == expect
        assert got['desanet_gateway_last_seen_timestamp_seconds{site="desa-lab"}'] > 0
        assert 'desanet_gateway_last_seen_timestamp_seconds{site="desa-off"}' not in got
        assert s.stop() == 0  # SIGTERM: a clean stop
    finally:
        gw.close()
        off.close()


def test_a_fresh_instance_learns_more_retained_statuses_than_the_broker_queues(
        mosquitto: Broker, tmp_path: Path) -> None:
    """Mosquitto queues at most 1,000 QoS 1 messages per client by default; the retained
    statuses a region has are more (see gateway/fleet/serve.py on QoS 0)."""
    n = 1500
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="statuses",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        sent = [client.publish(f"desanet/v1/s{i:04d}/status", payloads.encode(payloads.status(
            payloads.Identity(f"s{i:04d}", "0.1.0", 1, 1), "cfg", online=i % 2 == 0)),
            qos=1, retain=True) for i in range(n)]
        for info in sent:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()
    db = tmp_path / "fleet.db"
    s = Serve(tmp_path, mosquitto, f"sqlite://{db}", "fresh").start()
    try:
        wait_until(lambda: query(db, "SELECT COUNT(*) FROM gateways")[0][0] == n, 60,
                   f"{n} statuses")
        assert query(db, "SELECT SUM(online), COUNT(*) FROM gateways") == [(n // 2, n)]
    finally:
        s.stop()


def test_a_second_instance_with_the_same_client_id_is_named(mosquitto: Broker,
                                                            tmp_path: Path) -> None:
    first = Serve(tmp_path, mosquitto, f"sqlite://{tmp_path}/a.db", "same").start()
    second = Serve(tmp_path / "b", mosquitto, f"sqlite://{tmp_path}/b.db", "same")
    (tmp_path / "b").mkdir()
    try:
        second.start()
        # They take the session from each other until one gives up, naming the option.
        gave_up = wait_until(lambda: next((s for s in (first, second) if s.exited()), None), 60,
                             "one of the two to give up")
        assert gave_up.exited() == 1
        assert "error: --client-id: another client connected" in gave_up.text()
    finally:
        first.stop()
        second.stop()


def test_tls_with_a_client_certificate(mosquitto: Broker, tmp_path: Path) -> None:
    pki = mosquitto.pki
    assert pki is not None and mosquitto.tls_port is not None
    url = f"mqtts://{mosquitto.host}:{mosquitto.tls_port}"
    db = tmp_path / "fleet.db"
    gw = Gateway(mosquitto, "desa-tls", session=2)
    try:
        gw.status()
        s = Serve(tmp_path, mosquitto, f"sqlite://{db}", "tls", None, None, "--ca", str(pki.ca),
                  "--cert", str(pki.device_cert), "--key", str(pki.device_key))
        s.argv[s.argv.index("--broker") + 1] = url
        s.start()
        wait_until(lambda: query(db, "SELECT site, online FROM gateways") == [("desa-tls", 1)],
                   30, "the status over TLS")
        assert s.stop() == 0
    finally:
        gw.close()
    # without a client certificate the broker refuses, and the error names --broker
    done = _serve("--broker", url, "--ca", str(pki.ca), "--db", f"sqlite://{db}")
    assert done.returncode == 1 and "error: --broker: " in done.stderr, done.stderr


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "fleet", "serve", *args],
                          capture_output=True, text=True, timeout=60)


def test_bad_arguments_name_their_option(tmp_path: Path) -> None:
    done = _serve("--broker", "http://mqtt.example", "--db", "mysql://fleet@db/fleet",
                  "--group", "a/b", "--metrics", "9108", "--password-file", str(tmp_path / "none"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    for option in ("--broker", "--db", "--group", "--metrics", "--password-file"):
        assert any(line.startswith(f"error: {option}:") for line in lines), (option, lines)
    done = _serve("--broker", "mqtt://127.0.0.1:1883", "--db", f"sqlite://{tmp_path}/no/such/x.db")
    assert done.returncode == 2 and "error: --db: the directory" in done.stderr, done.stderr


def test_nothing_listening_or_no_database_is_a_clear_error(tmp_path: Path) -> None:
    db = f"sqlite://{tmp_path}/fleet.db"
    done = _serve("--broker", f"mqtt://127.0.0.1:{free_port()}", "--db", db)
    assert done.returncode == 1 and "error: --broker: cannot connect to" in done.stderr, done.stderr
    # the database was fine (opened, tables made): the error is about the broker only
    tables = query(tmp_path / "fleet.db", "SELECT name FROM sqlite_master WHERE type = 'table'")
    assert {t[0] for t in tables} == {"meta", "gateways", "messages", "events"}
    done = _serve("--broker", f"mqtt://127.0.0.1:{free_port()}", "--db",
                  f"postgresql://fleet:secret@127.0.0.1:{free_port()}/fleet")
    assert done.returncode == 1 and "error: --db: cannot connect to" in done.stderr, done.stderr
    assert "secret" not in done.stderr

