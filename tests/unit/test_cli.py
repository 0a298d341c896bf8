"""Human output of the `desanet` command, against canned control API answers."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import cli
from gateway.config.units import format_left, parse_duration

NOW = 1_700_000_000


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (45, "45s"), (60, "1m"), (75, "1m15s"), (3600, "1h"), (14399, "3h59m"),
    (14400, "4h"), (86400, "1d"), (90061, "1d1h"), (-5, "0s"),
])
def test_format_left(seconds: int, text: str) -> None:
    assert format_left(seconds) == text


@pytest.mark.parametrize("value", [1.5, None, ["4h"], {"h": 4}, True])
def test_parse_duration_refuses_other_types_with_value_error(value: Any) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(value)


class CannedClient:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    def request(self, method: str, path: str, body: Any = None) -> Any:
        return self.answers[path]


def test_clients_table_shows_readable_time_left(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = {"/v1/clients": {"clients": [
        {"mac": "02:00:00:00:00:01", "ip": "10.42.0.101", "authorized": True,
         "source": "voucher", "remaining": 14399, "idle_left": 1799, "plan": "school"},
        {"mac": "02:00:00:00:00:02", "ip": "10.42.0.102", "authorized": False},
    ]}}
    monkeypatch.setattr(cli, "_client", lambda args: CannedClient(answers))
    assert cli.main(["clients"]) == 0
    out = capsys.readouterr().out
    line = out.splitlines()[1]
    assert "3h59m" in line and "29m59s" in line and "school" in line
    assert "14399s" not in out and "1799s" not in out
    assert "portal" in out.splitlines()[2]


def test_vouchers_list_encodes_batch_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asked: list[str] = []

    class Recorder:
        def request(self, method: str, path: str, body: Any = None) -> Any:
            asked.append(path)
            return {"vouchers": []}

    monkeypatch.setattr(cli, "_client", lambda args: Recorder())
    assert cli.main(["vouchers", "list", "--batch", "posyandu mei&x=1"]) == 0
    assert asked == ["/v1/vouchers?batch=posyandu+mei%26x%3D1"]


STATUS = {"site": "Hotspot", "village": "Desa", "ready": True, "portal_url": "http://portal.desa/",
          "portal_mode": "both", "lan_ip": "10.42.0.1", "sessions_active": 3, "uptime": 3700,
          "firewall": {"backend": "libnftables"},
          "dnsmasq": {"running": True, "pid": 42, "restarts": 0}}


@pytest.mark.parametrize(("shaping", "expected"), [
    ({"enabled": True, "uplink_down": 20_000_000, "uplink_up": 5_000_000, "leaf_qdisc": "pfifo"},
     "20mbit down / 5mbit up, leaf qdisc pfifo"),
    ({"enabled": False}, "shaping:         off"),
])
def test_status_shows_shaping(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                              shaping: dict[str, Any], expected: str) -> None:
    answers = {"/v1/status": {**STATUS, "shaping": shaping}}
    monkeypatch.setattr(cli, "_client", lambda args: CannedClient(answers))
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert expected in out
    assert "1h1m" in out  # uptime
