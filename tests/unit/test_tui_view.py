"""The words the TUI shows: no full MAC to bystanders, states in words, rates from counters."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.tui import view
from gateway.tui.host import HostStats, Throughput
from gateway.tui.i18n import set_language
from tests.unit.tuikit import CLIENTS, STATUS

MAC = "02:00:00:aa:bb:cc"


@pytest.fixture(autouse=True)
def _language() -> Iterator[None]:
    yield
    set_language("id")


def test_short_id_is_stable_and_hides_the_mac() -> None:
    tag = view.short_id(MAC)
    assert tag == view.short_id(MAC.upper())
    assert tag != view.short_id("02:00:00:aa:bb:cd")
    assert len(tag) == 7 and tag.startswith("#")
    assert "bb:cc" not in tag and "bbcc" not in tag  # not even the MAC's tail
    assert view.device_name({"mac": MAC}) == tag
    assert view.device_name({"mac": MAC, "hostname": "hp-budi"}) == "hp-budi"


def test_top_users_by_traffic_without_macs() -> None:
    top = view.top_users(CLIENTS, 3)
    assert [name for name, _, _ in top] == ["hp-siti", view.short_id(CLIENTS[2]["mac"]),
                                           view.short_id(CLIENTS[1]["mac"])]
    shown = " ".join(name for name, _, _ in view.top_users(CLIENTS, 10))
    assert not any(c["mac"] in shown for c in CLIENTS)
    assert len(view.top_users(CLIENTS, 10)) == 4  # the portal-only client moved nothing
    assert view.top_users([{"mac": MAC, "authorized": True}]) == []  # shaping off: no counts


def test_states_are_words_in_both_languages() -> None:
    set_language("id")
    assert view.uplink_line(STATUS).startswith("Uplink: NAIK, 42 ms")
    assert view.check_status("fail") == "[GAGAL]"
    assert "UJI COBA" in view.trial_line(STATUS)
    set_language("en")
    assert view.uplink_line({"uplink": {"state": "down"}}) == "Uplink: DOWN"
    assert view.uplink_line({}) == "Uplink: unknown"
    assert view.check_status("warn") == "[WARN]"
    assert view.mqtt_line({"telemetry": {"enabled": True, "connected": False, "backlog": 7}}) \
        == "MQTT: NOT connected, backlog 7"
    assert view.trial_line({"config": {"trial": None}}) == "No config trial pending"


def test_event_line_never_shows_who() -> None:
    event = {"seq": 1, "time": 1_780_000_000, "type": "session_started", "mac": MAC,
             "ip": "10.42.0.101"}
    line = view.event_line(event, "Asia/Jakarta")
    assert MAC not in line and "10.42.0.101" not in line
    assert line.endswith("sesi dimulai")


def _stats(at: float, rx: int | None, tx: int | None) -> HostStats:
    return HostStats(at, None, None, None, None, rx, tx)


def test_throughput_from_counters() -> None:
    t = Throughput(size=3)
    t.add(_stats(0.0, 1000, 500))
    assert not t.down  # one read is no rate yet
    t.add(_stats(2.0, 251_000, 25_500))
    assert list(t.down) == [1_000_000.0] and list(t.up) == [100_000.0]
    t.add(_stats(4.0, 10, 10))  # the interface was re-created: counters start again
    assert len(t.down) == 1
    t.add(_stats(5.0, 125_010, 10))
    assert t.down[-1] == 1_000_000.0
    for i in range(5):
        t.add(_stats(6.0 + i, 125_010 * (i + 2), 10))
    assert len(t.down) == 3  # only the last minutes are kept
    t.add(_stats(20.0, None, None))  # no WAN interface seen: nothing added
    assert len(t.down) == 3
