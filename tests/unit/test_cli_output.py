"""What `desanet services`, `shaping`, `clients` print: human units, local dates, names."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gateway import cli
from gateway.cli_format import format_bytes, with_iso
from gateway.timefmt import format_datetime, iso

NOW = 1_700_000_000
ZONE = "Asia/Makassar"  # not this machine's zone, nor the default: the daemon's says so
STATUS = {"site": "Hotspot", "village": "Desa", "timezone": ZONE}


def local(ts: float) -> str:
    return format_datetime(ts, ZONE, "en")


class Canned:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = {"/v1/status": STATUS, **answers}
        self.asked: list[str] = []

    def request(self, method: str, path: str, body: Any = None) -> Any:
        self.asked.append(path)
        return self.answers[path]


def run(monkeypatch: pytest.MonkeyPatch, answers: dict[str, Any], *argv: str) -> Canned:
    canned = Canned(answers)
    monkeypatch.setattr(cli, "_client", lambda args: canned)
    assert cli.main(list(argv)) == 0
    return canned


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (10 * 1024, "10 KiB"),
    (5 * 1024**2 + 1, "5.0 MiB"), (512 * 1024**2, "512 MiB"), (3 * 1024**3, "3.0 GiB"),
    (2048 * 1024**3, "2048 GiB"), (None, "-"),
])
def test_format_bytes(n: int | None, text: str) -> None:
    assert format_bytes(n) == text


SERVICES = {
    "enabled": True, "hostname": "layanan.desa",
    "cache": {"entries": 42, "bytes": 3 * 1024**2 + 200 * 1024, "max_bytes": 512 * 1024**2,
              "hit_ratio": 0.8125, "bytes_from_cache": 1536, "bytes_from_upstream": 10 * 1024**2,
              "stale_served": 3, "hits": 10, "misses": 2},
    "services": {
        "dukcapil": {"state": "online", "last_ok": NOW, "last_error": None,
                     "last_error_text": "", "consecutive_errors": 0, "requests": 12,
                     "errors": 0},
        "bpjs": {"state": "offline", "last_ok": None, "last_error": NOW - 60,
                 "last_error_text": "connection refused", "consecutive_errors": 4,
                 "requests": 9, "errors": 4},
    },
    "outbox": {"queued": 2, "sending": 0, "delivered": 5, "failed": 0},
    "prefetch": {"runs": 1, "started": NOW - 100, "finished": NOW - 90,
                 "results": {"https://a/1": "fetched", "https://a/2": "fetched",
                             "https://a/3": "failed"}},
}


def test_services_prints_no_raw_dicts_human_sizes_and_local_dates(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    run(monkeypatch, {"/v1/services": SERVICES}, "services")
    out = capsys.readouterr().out
    assert not re.search(r"[{}]", out), out  # no Python dict, anywhere
    assert "42 objects, 3.2 MiB of 512 MiB, hit ratio 81%" in out
    assert "1.5 KiB served from the cache, 10 MiB fetched upstream, 3 stale copies" in out
    assert "queued forms: 2 queued, 5 delivered" in out
    assert f"last prefetch: {local(NOW - 90)}, 2 fetched, 1 failed" in out
    dukcapil = next(line for line in out.splitlines() if "dukcapil" in line)
    assert "online" in dukcapil and "0/12" in dukcapil and local(NOW) in dukcapil
    assert "WITA" in dukcapil
    bpjs = next(line for line in out.splitlines() if "bpjs" in line)
    assert f"{local(NOW - 60)} (connection refused)" in bpjs


def test_services_with_nothing_yet(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    empty = {**SERVICES, "services": {}, "prefetch": {"runs": 0},
             "outbox": {"queued": 0, "delivered": 0}}
    run(monkeypatch, {"/v1/services": empty}, "services")
    out = capsys.readouterr().out
    assert "queued forms: none" in out and "last prefetch: not yet" in out


def test_services_json_keeps_every_key_and_adds_iso(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    run(monkeypatch, {"/v1/services": SERVICES}, "services", "--json")
    data = json.loads(capsys.readouterr().out)
    dukcapil = data["services"]["dukcapil"]
    assert dukcapil["last_ok"] == NOW and dukcapil["last_ok_iso"] == iso(NOW, ZONE)
    assert dukcapil["last_error"] is None and dukcapil["last_error_iso"] is None
    assert data["prefetch"]["finished_iso"] == iso(NOW - 90, ZONE)
    stripped = json.loads(json.dumps(data))
    _drop_iso(stripped)
    assert stripped == SERVICES


def _drop_iso(data: Any) -> None:
    if isinstance(data, dict):
        for key in [k for k in data if k.endswith("_iso")]:
            del data[key]
        for value in data.values():
            _drop_iso(value)
    elif isinstance(data, list):
        for value in data:
            _drop_iso(value)


SHAPING = {
    "enabled": True, "leaf_qdisc": "fq_codel", "uplink_down": 20_000_000, "uplink_up": 5_000_000,
    "directions": {
        "down": {"device": "br-lan", "sampled_at": NOW, "interval": 10.0, "classes": {
            "uplink": {"class": "1:1", "bytes": 10 * 1024**2, "packets": 9000, "drops": 0,
                       "backlog": 0, "overlimits": 0, "rate_bps": 4_000_000},
            "1:165": {"class": "1:165", "bytes": 2048, "packets": 3, "drops": 1, "backlog": 0,
                      "overlimits": 0, "rate_bps": 1200},
            "1:166": {"class": "1:166", "bytes": 0, "packets": 0, "drops": 0, "backlog": 0,
                      "overlimits": 0, "rate_bps": 0},
        }},
    },
}
CLIENTS = {"clients": [
    {"mac": "02:00:00:00:00:01", "ip": "10.42.0.101", "authorized": True, "started": NOW,
     "expires": NOW + 3600, "shaping": {"class": "1:165", "plan": "default"}},
    {"mac": "02:00:00:00:00:09", "ip": "10.42.0.109", "authorized": False},
]}


def test_shaping_names_client_classes_by_mac_and_ip(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    run(monkeypatch, {"/v1/shaping": SHAPING, "/v1/clients": CLIENTS}, "shaping")
    lines = capsys.readouterr().out.splitlines()
    client = next(line for line in lines if "1:165" in line)
    assert "02:00:00:00:00:01 10.42.0.101" in client and "2.0 KiB" in client
    assert "(no session)" in next(line for line in lines if "1:166" in line)
    uplink = next(line for line in lines if line.strip().startswith("uplink"))
    assert "10 MiB" in uplink and "4mbit" in uplink


def test_clients_json_adds_iso_and_keeps_the_keys(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    run(monkeypatch, {"/v1/clients": CLIENTS}, "clients", "--json")
    data = json.loads(capsys.readouterr().out)
    row = data["clients"][0]
    assert (row["started"], row["expires"]) == (NOW, NOW + 3600)
    assert row["expires_iso"] == iso(NOW + 3600, ZONE) == "2023-11-15T07:13:20+08:00"
    assert "started_iso" not in data["clients"][1]  # no time, no sibling


def test_clients_auth_says_until_when_in_the_site_zone(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    answer = {"client": {"mac": "02:00:00:00:00:01", "ip": "10.42.0.101", "expires": NOW}}
    run(monkeypatch, {"/v1/clients/auth": answer}, "clients", "auth", "02:00:00:00:00:01")
    assert capsys.readouterr().out.strip() == (
        f"authorized 02:00:00:00:00:01 (10.42.0.101) until {local(NOW)}")


def test_status_asks_once_for_its_zone(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    status = {**STATUS, "ready": True, "portal_url": "http://portal.desa/", "portal_mode": "both",
              "lan_ip": "10.42.0.1", "sessions_active": 0, "uptime": 5,
              "firewall": {"backend": "nft"}, "dnsmasq": {"running": True, "pid": 1},
              "shaping": {"enabled": False},
              "config": {"version": "a", "last_change": {"type": "config_applied",
                                                          "time": NOW, "version": "a"}}}
    canned = run(monkeypatch, {"/v1/status": status}, "status")
    assert canned.asked == ["/v1/status"]
    assert f"at {local(NOW)}" in capsys.readouterr().out


def test_with_iso_leaves_non_times_alone() -> None:
    data = {"time": True, "since": "x", "uptime": 5, "nested": [{"created": 0}],
            "expires": NOW, "expires_iso": "kept"}
    assert with_iso(data, ZONE) == {
        "time": True, "since": "x", "uptime": 5,
        "nested": [{"created": 0, "created_iso": iso(0, ZONE)}],
        "expires": NOW, "expires_iso": "kept"}
