from __future__ import annotations

from typing import Any

import pytest

from gateway.config import Config, parse_config


def make_config(**sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "site": {"name": "Hotspot Desa Uji", "village": "Desa Uji"},
        "network": {"lan_interface": "br-lan", "wan_interface": "wan0",
                    "lan_address": "10.42.0.1/24"},
        "dhcp": {"range_start": "10.42.0.100", "range_end": "10.42.0.250"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data)


@pytest.fixture
def cfg() -> Config:
    return make_config()
