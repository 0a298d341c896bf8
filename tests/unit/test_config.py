"""Config validation: every problem reported at once, with field path and example."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config, parse_config_text
from gateway.config.loader import write_config_atomic
from gateway.config.units import format_duration, format_rate, parse_duration, parse_rate
from gateway.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gateway.toml"

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
"""


def problems(extra: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config_text(BASE + extra)
    return info.value.problems


def test_example_config_is_valid() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.portal.mode == "both"
    assert cfg.shaping.plans["school"].down == 10_000_000


def test_minimal_config_gets_defaults() -> None:
    cfg = parse_config_text(BASE)
    assert cfg.portal.session_length == 4 * 3600
    assert cfg.portal_url == "http://portal.desa/"
    assert cfg.lan_ip == "10.42.0.1"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[shaping]\nclient_down = "10 Mbps"\n',
         'shaping.client_down: "10 Mbps" is not a rate; write e.g. "10mbit" or "512kbit"'),
        ('[shaping]\nclient_up = "-1mbit"\n', 'shaping.client_up: "-1mbit" is not a rate'),
        ('[shaping]\nuplink_up = "0kbit"\n', "shaping.uplink_up: \"0kbit\" must be above zero"),
        ('[portal]\nsession_length = "4 hours"\n', "portal.session_length: \"4 hours\" is not a duration"),
        ('[portal]\nidle_timeout = "0s"\n', "portal.idle_timeout: \"0s\" must be longer than zero"),
        ('[portal]\nmode = "free"\n', 'portal.mode: "free" is not allowed'),
        ('[portal]\nhttp_port = 70000\n', "portal.http_port: 70000 is not valid"),
        ('[portal]\nhttp_port = 2050\n', "portal: http_port and redirect_port are both 2050"),
        ('[access]\ntrusted_macs = ["zz:zz"]\n', 'access.trusted_macs[0]: "zz:zz" is not a MAC'),
        ('[access]\ntrusted_macs = ["02:00:00:00:00:01"]\nblocked_macs = ["02-00-00-00-00-01"]\n',
         "listed as both trusted and blocked"),
        ('[walled_garden]\naddresses = ["10.0.0.1/8"]\n',
         'walled_garden.addresses[0]: "10.0.0.1/8"'),
        ('[walled_garden]\nhostnames = ["not a host"]\n', "walled_garden.hostnames[0]"),
        ('[site2]\nx = 1\n', "site2: unknown key; valid keys here are: site, network"),
        ('[shaping]\nclient_down = "50mbit"\n',
         "shaping: default plan (client_*) is faster than the uplink (down 50000000bit/s > uplink_down)"),
        ('[shaping.plans.school]\ndown = "4mbit"\nup = "1mbit"\nceil_down = "2mbit"\n',
         "shaping.plans.school: ceil_down is below down"),
        ('[shaping.plans."Bad Name"]\ndown = "4mbit"\nup = "1mbit"\n', "shaping.plans.Bad Name"),
        ('[shaping.plans.school]\ndown = "100mbit"\nup = "1mbit"\n',
         "plan 'school' (plans.school) is faster"),
    ],
)
def test_each_kind_of_invalid_value(extra: str, expected: str) -> None:
    found = problems(extra)
    assert any(expected in p for p in found), found


def test_unknown_key_is_an_error_not_ignored() -> None:
    found = problems('[portal]\nsesion_length = "4h"\n')
    assert found == [
        "portal.sesion_length: unknown key; valid keys here are: mode, hostname, http_port, "
        "redirect_port, session_length, idle_timeout, voucher_attempts_per_minute, max_clients, "
        "terms_id, terms_en, tls_certificate, tls_key, https_port, voucher_failures_per_minute, "
        "max_connections_per_client, max_connections, header_timeout"
    ]


def test_all_problems_are_reported_at_once() -> None:
    found = problems('[portal]\nmode = "x"\nidle_timeout = "soon"\n[shaping]\nclient_up = "1 Mbps"\n')
    paths = sorted(p.split(":")[0] for p in found)
    assert paths == ["portal.idle_timeout", "portal.mode", "shaping.client_up"]


def test_dhcp_range_outside_lan_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text(BASE.replace("10.42.0.250", "10.43.0.250"))
    assert "dhcp.range_end = 10.43.0.250 is not a usable host" in info.value.problems[0]


def test_shaping_needs_a_lan_of_at_most_slash_17() -> None:
    text = BASE.replace("10.42.0.1/24", "10.42.0.1/16") + "[shaping]\nenabled = true\n"
    with pytest.raises(ConfigError) as info:
        parse_config_text(text)
    assert "network.lan_address 10.42.0.0/16 is larger than /17" in info.value.problems[0]


def test_missing_section_names_field() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text('[site]\nname = "a"\nvillage = "b"\n')
    assert any(p.startswith("network: required") for p in info.value.problems)


def test_toml_syntax_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text("[site\n")
    assert "TOML syntax error" in info.value.problems[0]


def test_config_check_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(BASE)
    assert main(["config", "check", str(good)]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE + '[shaping]\nclient_down = "10 Mbps"\n[portal]\nmode = "x"\n')
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err
    assert 'shaping.client_down: "10 Mbps" is not a rate' in err


def test_atomic_write_refuses_invalid_and_keeps_old(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    write_config_atomic(path, BASE)
    with pytest.raises(ConfigError):
        write_config_atomic(path, BASE + "[portal]\nmode = 1\n")
    assert path.read_text() == BASE
    assert [p.name for p in tmp_path.iterdir()] == ["gateway.toml"]


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("4h", 14400),
                                               ("1d", 86400), ("45", 45), (60, 60)])
def test_durations(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "4 hours", "-1m", "0", "1w", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "bits"), [("10mbit", 10_000_000), ("512kbit", 512_000),
                                            ("1.5mbit", 1_500_000), ("1gbit", 10**9),
                                            ("10MBIT", 10_000_000)])
def test_rates(text: str, bits: int) -> None:
    assert parse_rate(text) == bits


@pytest.mark.parametrize("text", ["10 Mbps", "10mbps", "0mbit", "-5mbit", "fast", "10"])
def test_bad_rates(text: str) -> None:
    with pytest.raises(ValueError, match=r"rate|above zero"):
        parse_rate(text)


def test_formatting_round_trips() -> None:
    assert format_duration(14400) == "4h"
    assert format_duration(90) == "90s"
    assert format_rate(512_000) == "512kbit"


def test_cross_section_problems_are_reported_with_field_errors() -> None:
    text = BASE.replace('wan_interface = "eth0"', 'wan_interface = "br-lan"').replace(
        "10.42.0.100", "10.43.0.100") + '[portal]\nmode = "free"\n'
    with pytest.raises(ConfigError) as info:
        parse_config_text(text)
    found = info.value.problems
    assert any(p.startswith('portal.mode: "free"') for p in found)
    assert any(p.startswith("dhcp.range_start = 10.43.0.100 is not a usable host") for p in found)
    assert any(p.startswith("network.wan_interface 'br-lan' is also") for p in found)
    assert len(found) == 3
