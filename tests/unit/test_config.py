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
        "max_connections_per_client, max_connections, header_timeout, relay_test_networks, "
        "trial_minutes, trial_plan"
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


# -- hostile values (Step 6): each refused with its field path; a sane value beside it ----

HOSTILE = [
    ('[walled_garden]\naddresses = ["0.0.0.0/0"]\n',
     'walled_garden.addresses[0]: "0.0.0.0/0" is too large for the walled garden'),
    ('[walled_garden]\naddresses = ["198.0.0.0/8"]\n', "walled_garden.addresses[0]"),
    ('[walled_garden]\naddresses = ["::/0"]\n', 'walled_garden.addresses[0]: "::/0" is too large'),
    ('[walled_garden]\naddresses = ["127.0.0.0/16"]\n', '"127.0.0.0/16" is loopback'),
    ('[walled_garden]\naddresses = ["224.0.0.0/16"]\n', '"224.0.0.0/16" is multicast'),
    ('[walled_garden]\naddresses = ["255.255.255.255/32"]\n', "is reserved or broadcast"),
    ('[walled_garden]\naddresses = ["10.42.0.0/24"]\n',
     'walled_garden.addresses[0] = "10.42.0.0/24" overlaps the LAN'),
    ('[walled_garden]\naddresses = ["10.42.0.1/32"]\n',
     'walled_garden.addresses[0] = "10.42.0.1/32" overlaps the LAN'),
    ('[walled_garden]\naddresses = ["203.0.113.10/32", "172.16.5.0/24"]\n',
     'walled_garden.addresses[1] = "172.16.5.0/24" is a private or shared range'),
    ('[walled_garden]\naddresses = ["100.64.0.0/16"]\n', "is a private or shared range"),
    ('[access]\ntrusted_macs = ["ff:ff:ff:ff:ff:ff"]\n',
     'access.trusted_macs[0]: "ff:ff:ff:ff:ff:ff" is a broadcast, multicast or zero MAC'),
    ('[access]\ntrusted_macs = ["01:00:5e:00:00:fb"]\n', "access.trusted_macs[0]"),
    ('[access]\ntrusted_macs = ["33-33-00-00-00-01"]\n', "access.trusted_macs[0]"),
    ('[access]\ntrusted_macs = ["00:00:00:00:00:00"]\n', "access.trusted_macs[0]"),
    ('[access]\nblocked_macs = ["FF:FF:FF:FF:FF:FF"]\n', "access.blocked_macs[0]"),
    ('[portal]\nsession_length = "99999999999d"\n',
     "portal.session_length: 99999999999d is above the most allowed here, 366d"),
    ('[portal]\nsession_length = 99999999999999\n', "portal.session_length"),
    ('[portal]\nsession_length = "9999999999999999999999999d"\n',
     'portal.session_length: "9999999999999999999999999d" is not a duration'),
    ('[portal]\nidle_timeout = "31d"\n', "portal.idle_timeout: 31d is above the most allowed here, 30d"),
    ('lease_time = "60s"\n', "dhcp.lease_time: 1m is below the least allowed here, 2m"),
    ('lease_time = "1000d"\n', "dhcp.lease_time: 1000d is above"),
    ('[shaping]\nuplink_down = "9999999999999gbit"\n',
     "shaping.uplink_down: 9999999999999gbit is above the most allowed here, 100gbit"),
    ('[shaping]\nlan_rate = "101gbit"\n', "shaping.lan_rate: 101gbit is above"),
    ('[shaping]\nclient_up = "1bit"\n', "shaping.client_up: 1bit is below the least allowed here, 8kbit"),
    ('[shaping]\nclient_ceil_down = "200gbit"\n', "shaping.client_ceil_down: 200gbit is above"),
    ('[shaping]\nclient_up = "' + "9" * 400 + 'gbit"\n', "shaping.client_up: \"999"),
    ('[shaping.plans.x]\ndown = "1000gbit"\nup = "1mbit"\n', "shaping.plans.x.down: 1000gbit is above"),
    ('[local_services]\nprefetch_rate = "1bit"\n', "local_services.prefetch_rate: 1bit is below"),
    ('[local_services]\ncache_size = "1kb"\n', "local_services.cache_size: 1kb is below the least"),
    ('[local_services]\ncache_size = "99999999gb"\n', "local_services.cache_size: 99999999gb is above"),
    ('[local_services]\nmax_form_size = "1gb"\n', "local_services.max_form_size: 1gb is above"),
    ('[local_services]\nmax_form_size = "32mb"\nqueue_max_size = "16mb"\n',
     "max_form_size 32mb is above queue_max_size 16mb"),
    ('[local_services]\nqueue_min_free_disk = "9999999999gb"\n',
     "local_services.queue_min_free_disk: 9999999999gb is above"),
    ('[local_services]\nrequest_timeout = "1h"\n', "local_services.request_timeout: 1h is above"),
    ('[local_services]\n[[local_services.services]]\nslug = "a"\ntitle_id = "A"\ntitle_en = "A"\n'
     'upstream = "https://a.example"\noffline_for = "400d"\n',
     "local_services.services[0].offline_for: 400d is above"),
    ('[uplink]\nprobe_interval = "1h"\n', "uplink.probe_interval"),
    ('upstream_dns = ["1.1.1.1", "10.42.0.1"]\n',
     "dhcp.upstream_dns[1] = 10.42.0.1 is not an outside resolver"),
    ('upstream_dns = ["0.0.0.0"]\n', "dhcp.upstream_dns[0] = 0.0.0.0 is not an outside resolver"),
]


@pytest.mark.parametrize(("extra", "expected"), HOSTILE)
def test_each_hostile_value_is_refused_with_its_field_path(extra: str, expected: str) -> None:
    found = problems(extra)
    assert any(expected in p for p in found), found


@pytest.mark.parametrize("extra", [
    '[walled_garden]\naddresses = ["203.0.113.10/32", "198.51.100.0/24", "192.0.2.0/24"]\n',
    '[walled_garden]\naddresses = ["45.60.0.0/16", "2001:db8::/48"]\n',
    '[walled_garden]\naddresses = ["172.16.5.0/24"]\nallow_private_addresses = true\n',
    '[access]\ntrusted_macs = ["02:00:00:aa:bb:cc", "AC-DE-48-00-11-22"]\n',
    '[portal]\nsession_length = "366d"\nidle_timeout = "30d"\n',
    '[portal]\nsession_length = "18s"\nidle_timeout = "6s"\n',  # the lab's short sessions
    'lease_time = "2m"\nupstream_dns = ["1.1.1.1", "10.42.0.53", "127.0.0.53"]\n',
    '[shaping]\nuplink_down = "100gbit"\nuplink_up = "100gbit"\nlan_rate = "100gbit"\n'
    'client_down = "8kbit"\nclient_up = "8kbit"\nunauthorized_down = "8kbit"\n'
    'unauthorized_up = "8kbit"\n',
    '[local_services]\ncache_size = "1024gb"\nmax_form_size = "100mb"\nqueue_max_size = "100gb"\n',
])
def test_sane_values_at_the_bounds_are_accepted(extra: str) -> None:
    """Positive control: the limits are inclusive and ordinary values pass."""
    parse_config_text(BASE + extra)


def test_a_private_garden_range_still_may_not_cover_the_lan() -> None:
    found = problems('[walled_garden]\naddresses = ["10.42.0.0/16"]\n'
                     "allow_private_addresses = true\n")
    assert any("overlaps the LAN" in p for p in found), found


@pytest.mark.parametrize(("value", "expected"), [
    ("12345", "network.lan_address: 12345 is not an IPv4 address with a prefix length; "
              'write it as a string'),
    ('"10.42.0.1"', 'network.lan_address: "10.42.0.1" is not an IPv4 address with a prefix'),
    ("true", "network.lan_address: True is not an IPv4"),
    ('"8.8.8.1/24"', 'network.lan_address: "8.8.8.1/24" is not a private address'),
    ('"10.0.0.1/8"', 'network.lan_address: "10.0.0.1/8" has prefix /8; a LAN here is /16 to /30'),
    ('"10.42.0.1/31"', "has prefix /31"),
    ('"10.42.0.0/24"', "is the network's own or broadcast address"),
    ('"10.42.0.255/24"', "is the network's own or broadcast address"),
    ('"10.42.0.1/24x"', "is not an IPv4 address with a prefix length"),
])
def test_lan_address_must_be_a_private_cidr_string(value: str, expected: str) -> None:
    text = BASE.replace('lan_address = "10.42.0.1/24"', f"lan_address = {value}")
    with pytest.raises(ConfigError) as info:
        parse_config_text(text)
    assert any(expected in p for p in info.value.problems), info.value.problems


@pytest.mark.parametrize("value", ['"10.42.0.1/24"', '"192.168.1.1/16"', '"172.20.0.1/30"'])
def test_lan_address_sane_values(value: str) -> None:
    """Positive control (dhcp range kept inside where it must be)."""
    text = BASE.replace('lan_address = "10.42.0.1/24"', f"lan_address = {value}")
    if "10.42" not in value:
        net = value.strip('"').rsplit(".", 1)[0]
        text = text.replace('"10.42.0.100"', f'"{net}.2"').replace('"10.42.0.250"', f'"{net}.2"')
    cfg = parse_config_text(text)
    assert str(cfg.network.lan_address) == value.strip('"')


def test_config_check_refuses_each_hostile_value_with_the_path(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    path = tmp_path / "gateway.toml"
    for extra, expected in HOSTILE[:1] + HOSTILE[10:11] + HOSTILE[15:16] + HOSTILE[21:22]:
        path.write_text(BASE + extra)
        assert main(["config", "check", str(path)]) == 2
        assert expected in capsys.readouterr().err
    path.write_text(BASE.replace('"10.42.0.1/24"', "12345"))
    assert main(["config", "check", str(path)]) == 2
    assert "network.lan_address: 12345" in capsys.readouterr().err
    path.write_text(BASE)  # positive control
    assert main(["config", "check", str(path)]) == 0
