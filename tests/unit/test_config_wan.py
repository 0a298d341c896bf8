"""Step 9's config fields: the Wi-Fi country and how the WAN gets its address.

Each bad value is refused with its field path (as `desanet config check` prints it);
the PPPoE and Wi-Fi passwords never appear in a problem line or a diff."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import parse_config_text
from gateway.config.diff import config_changes, format_changes
from gateway.errors import ConfigError

BASE = """
[site]
name = "Hotspot"
village = "Desa"
{site}
[network]
lan_interface = "br-lan"
wan_interface = "eth0"
lan_address = "10.42.0.1/24"
{network}
[dhcp]
range_start = "10.42.0.100"
range_end = "10.42.0.250"
"""


def text(site: str = "", network: str = "") -> str:
    return BASE.format(site=site, network=network)


def problems(site: str = "", network: str = "") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text(site, network))
    return info.value.problems


def test_defaults_are_indonesia_and_dhcp() -> None:
    cfg = parse_config_text(text())
    assert cfg.site.wifi_country == "ID"
    net = cfg.network
    assert net.wan_address == "dhcp"
    assert (net.wan_static_address, net.wan_static_gateway, net.wan_dns) == (None, None, [])
    assert (net.pppoe_username, net.pppoe_password) == ("", "")


def test_good_static_and_pppoe_and_country() -> None:
    cfg = parse_config_text(text('wifi_country = "MY"', """
wan_address = "static"
wan_static_address = "192.0.2.10/24"
wan_static_gateway = "192.0.2.1"
wan_dns = ["1.1.1.1", "8.8.8.8"]
"""))
    assert cfg.site.wifi_country == "MY"
    assert cfg.network.wan_static_address == ipaddress.IPv4Interface("192.0.2.10/24")
    assert cfg.network.wan_static_gateway == ipaddress.IPv4Address("192.0.2.1")
    assert [str(a) for a in cfg.network.wan_dns] == ["1.1.1.1", "8.8.8.8"]
    cfg = parse_config_text(text(network='wan_address = "pppoe"\npppoe_username = "desa@isp"\n'
                                         'pppoe_password = "kata sandi"'))
    assert (cfg.network.pppoe_username, cfg.network.pppoe_password) == ("desa@isp", "kata sandi")
    # the other method's fields are kept, unused: switching back to DHCP needs no cleanup
    cfg = parse_config_text(text(network='wan_address = "dhcp"\n'
                                         'wan_static_address = "192.0.2.10/24"'))
    assert cfg.network.wan_address == "dhcp"


@pytest.mark.parametrize(("site", "network", "expected"), [
    ('wifi_country = "id"', "", 'site.wifi_country: "id" is not a country code'),
    ('wifi_country = "IDN"', "", 'site.wifi_country: "IDN" is not a country code'),
    ("wifi_country = 62", "", "site.wifi_country: 62 is not valid"),
    ("", 'wan_address = "ppp"', 'network.wan_address: "ppp" is not allowed'),
    ("", 'wan_address = "static"',
     'network.wan_static_address: required when network.wan_address = "static"'),
    ("", 'wan_address = "static"\nwan_static_address = "192.0.2.10/24"',
     'network.wan_static_gateway: required when network.wan_address = "static"'),
    ("", 'wan_address = "static"\nwan_static_gateway = "192.0.2.1"',
     "network.wan_static_address: required"),
    ("", 'wan_static_address = "192.0.2.10"',
     'network.wan_static_address: "192.0.2.10" is not an IPv4 address with a prefix length'),
    ("", 'wan_static_address = "192.0.2.300/24"', 'network.wan_static_address: "192.0.2.300/24"'),
    ("", 'wan_static_address = "192.0.2.0/24"',
     "network.wan_static_address: \"192.0.2.0/24\" is the network's own or broadcast address"),
    ("", 'wan_static_address = "192.0.2.10/31"', "network.wan_static_address: \"192.0.2.10/31\" "
     "has prefix /31"),
    ("", 'wan_static_address = "127.0.0.5/8"', 'network.wan_static_address: "127.0.0.5/8" is not '
     "a host on a network"),
    ("", 'wan_static_gateway = "gateway"', 'network.wan_static_gateway: "gateway" is not an IPv4'),
    ("", 'wan_address = "static"\nwan_static_address = "192.0.2.10/24"\n'
         'wan_static_gateway = "198.51.100.1"',
     "network.wan_static_gateway: 198.51.100.1 is not another host of "
     "network.wan_static_address's network 192.0.2.0/24; write e.g. \"192.0.2.1\""),
    ("", 'wan_address = "static"\nwan_static_address = "192.0.2.10/24"\n'
         'wan_static_gateway = "192.0.2.10"', "network.wan_static_gateway: 192.0.2.10 is not"),
    ("", 'wan_address = "static"\nwan_static_address = "10.42.0.7/16"\n'
         'wan_static_gateway = "10.42.0.1"',
     "network.wan_static_address: 10.42.0.7/16 overlaps the LAN"),
    ("", 'wan_dns = ["1.1.1.1", "dns.google"]', 'network.wan_dns[1]: "dns.google" is not an IPv4'),
    ("", 'wan_dns = ["2001:db8::1"]', 'network.wan_dns[0]: "2001:db8::1" is not an IPv4'),
    ("", 'wan_dns = ["0.0.0.0"]', 'network.wan_dns[0]: "0.0.0.0" is not a host'),
    ("", 'wan_dns = ["10.42.0.1"]', "network.wan_dns[0]: 10.42.0.1 is the gateway's own"),
    ("", 'wan_dns = "1.1.1.1"', "network.wan_dns: "),
    ("", 'wan_address = "pppoe"', 'network.pppoe_username: required when network.wan_address = '
     '"pppoe"'),
    ("", 'pppoe_username = "desa sukamaju"', "network.pppoe_username: a PPPoE user name is at "
     "most 255 printable characters without spaces"),
    ("", f'pppoe_username = "{"u" * 256}"', "network.pppoe_username: a PPPoE user name"),
])
def test_each_bad_value_names_its_field(site: str, network: str, expected: str) -> None:
    found = problems(site, network)
    assert any(line.startswith(expected) or expected in line for line in found), found


def test_wan_problems_come_with_the_lan_problems() -> None:
    # The WAN method check and the LAN/DHCP cross checks are reported at once.
    with pytest.raises(ConfigError) as info:
        parse_config_text(text(network='wan_address = "pppoe"').replace(
            'range_end = "10.42.0.250"', 'range_end = "10.43.0.250"'))
    found = info.value.problems
    assert any(p.startswith("network.pppoe_username") for p in found), found
    assert any(p.startswith("dhcp.range_end") for p in found), found


@pytest.mark.parametrize("network", [
    'pppoe_password = "tajam\\u0007isp"',  # a control character: refused, not shown
    "pppoe_password = 12345678",  # a number where text belongs: refused, not shown
])
def test_a_bad_pppoe_password_is_refused_without_showing_it(network: str) -> None:
    found = problems(network=network)
    assert any(p.startswith("network.pppoe_password:") for p in found), found
    assert not any("tajam" in p or "12345678" in p for p in found), found


def test_a_wifi_password_typed_as_a_number_is_not_shown() -> None:
    found = problems(site='wifi_ssid = "Desa"\nwifi_password = 87654321')
    assert any(p.startswith("site.wifi_password:") for p in found), found
    assert not any("87654321" in p for p in found), found


def test_passwords_never_show_in_a_diff() -> None:
    old = parse_config_text(text(network='wan_address = "pppoe"\npppoe_username = "desa@isp"\n'
                                         'pppoe_password = "lama-rahasia"')).model_dump(mode="json")
    new = parse_config_text(text(network='wan_address = "pppoe"\npppoe_username = "desa@isp"\n'
                                         'pppoe_password = "baru-rahasia"')).model_dump(mode="json")
    lines = format_changes(config_changes(old, new))
    assert lines == ["network.pppoe_password: (changed)"]
    switched = parse_config_text(text()).model_dump(mode="json")
    lines = format_changes(config_changes(switched, new))
    assert "network.wan_address: 'dhcp' -> 'pppoe'" in lines
    assert not any("rahasia" in line for line in lines), lines


def test_config_check_prints_the_field_path(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(text('wifi_country = "Indonesia"', 'wan_address = "static"'))
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr()
    out = err.out + err.err
    assert 'site.wifi_country: "Indonesia" is not a country code' in out
    assert "network.wan_static_address: required" in out
    assert "network.wan_static_gateway: required" in out
