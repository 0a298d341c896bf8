"""Red-team pass on `desanet system render` (Step 10): values from gateway.toml that
would add lines to hostapd.conf, the pppd options or the systemd-networkd files. Each
attack beside its positive control."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.system.render import HOSTAPD_CONF, PPPOE_OPTIONS, render
from tests.unit.conftest import make_config

WIFI = {"wifi_ssid": "Hotspot Desa", "wifi_password": "sukamaju2024"}
PPPOE = {"wan_address": "pppoe", "pppoe_username": "desa@isp"}


@pytest.mark.parametrize("field", ["lan_interface", "wan_interface"])
def test_an_interface_name_with_a_newline_is_refused(field: str) -> None:
    # Python's "$" also matches before a final newline: "eth0\n" passed the name check.
    name = {"lan_interface": "br-lan", "wan_interface": "wan0"}[field] + "\n"
    with pytest.raises(ConfigError) as err:
        make_config(network={field: name})
    assert any(field in p for p in err.value.problems)


@pytest.mark.parametrize(("section", "values"), [
    ("site", {**WIFI, "wifi_password": "sukamaju2024\nwpa=0"}),
    ("site", {**WIFI, "wifi_ssid": "Desa\nwpa=0"}),
    ("network", {**PPPOE, "pppoe_username": "desa@isp\nplugin evil.so"}),
    ("network", {**PPPOE, "pppoe_password": "rahasia\nplugin evil.so"}),
    ("site", {**WIFI, "wifi_country": "ID\n"}),
])
def test_values_that_would_add_config_lines_are_refused(section: str,
                                                        values: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        make_config(**{section: values})


def test_quotes_and_backslashes_stay_inside_one_pppd_word_and_one_hostapd_line() -> None:
    cfg = make_config(site={**WIFI, "wifi_password": 'a"b\\c #d e'},
                      network={**PPPOE, "pppoe_password": 'p"w\\ #x'})
    files = render(cfg)
    hostapd = files[HOSTAPD_CONF].splitlines()
    assert 'wpa_passphrase=a"b\\c #d e' in hostapd
    assert len([ln for ln in hostapd if ln.startswith("wpa")]) == 3
    assert 'password "p\\"w\\\\ #x"' in files[PPPOE_OPTIONS].splitlines()
    assert files[PPPOE_OPTIONS].count("\nplugin ") == 1
