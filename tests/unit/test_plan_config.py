"""Plan limits (Step 11): each wrong combination is refused with the plan's path and
the field it is about; the right ones parse to seconds, bytes and bits/s."""

from __future__ import annotations

import pytest

from gateway.config import parse_config_text
from gateway.config.plans import parse_bytes
from gateway.errors import ConfigError

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
[shaping.plans.harian]
down = "2mbit"
up = "512kbit"
"""


def plan(extra: str):  # type: ignore[no-untyped-def]
    return parse_config_text(BASE + extra).shaping.plans["harian"]


def problems(extra: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config_text(BASE + extra)
    return info.value.problems


def test_a_plan_without_limits_keeps_the_old_meaning() -> None:
    p = plan("")
    assert (p.time_of_use, p.validity, p.quota, p.quota_down, p.quota_up) == (None,) * 5
    assert (p.after_quota, p.shared_devices, p.price, p.auto_login) == ("cut", 1, 0, False)


def test_a_full_plan_parses_to_units() -> None:
    p = plan('time_of_use = "1h"\nvalidity = "1d"\nquota = "1GB"\nquota_down = "800MB"\n'
             'quota_up = "500MiB"\nafter_quota = "slow"\nfair_use_down = "256kbit"\n'
             'fair_use_up = "128kbit"\nshared_devices = 2\nprice = 5000\nauto_login = true\n')
    assert (p.time_of_use, p.validity) == (3600, 86400)
    assert (p.quota, p.quota_down, p.quota_up) == (1024**3, 800 * 1024**2, 500 * 1024**2)
    assert (p.fair_use_down, p.fair_use_up) == (256_000, 128_000)
    assert (p.shared_devices, p.price, p.auto_login) == (2, 5000, True)


@pytest.mark.parametrize(("text", "size"), [
    ("5MB", 5 * 1024**2), ("5mb", 5 * 1024**2), ("1GB", 1024**3), ("500MiB", 500 * 1024**2),
    ("1.5 GB", 1536 * 1024**2), ("2048", 2048), (4096, 4096), ("1TiB", 1024**4),
])
def test_sizes(text: object, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("bad", ["5 megabytes", "-1MB", "0MB", "MB", True, 1.5, None, "1e9"])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match=r"amount of data|above zero"):
        parse_bytes(bad)


@pytest.mark.parametrize(("extra", "expected"), [
    ('after_quota = "slow"\nquota = "1GB"\n',
     'shaping.plans.harian: after_quota = "slow" needs the fair-use rates; fair_use_down and '
     "fair_use_up are missing"),
    ('after_quota = "slow"\nquota = "1GB"\nfair_use_down = "256kbit"\n',
     "fair_use_up is missing"),
    ('after_quota = "slow"\nfair_use_down = "256kbit"\nfair_use_up = "128kbit"\n',
     'shaping.plans.harian: after_quota = "slow" but the plan has no quota'),
    ('quota = "1GB"\nfair_use_down = "256kbit"\n',
     'shaping.plans.harian: fair_use_down set but after_quota is "cut"'),
    ('after_quota = "slower"\n', 'shaping.plans.harian.after_quota: "slower" is not allowed'),
    ('time_of_use = "2h"\nvalidity = "1h"\n',
     "shaping.plans.harian: time_of_use 2h is longer than validity 1h"),
    ('quota = "1GB"\nquota_down = "2GB"\n',
     "shaping.plans.harian: quota_down 2gb is above quota 1gb"),
    ('quota = "1GB"\nquota_up = "1.5GB"\n', "quota_up 1536mb is above quota 1gb"),
    ('quota = "5 MB"\n', ""),  # fine: spaces allowed (checked below, not an error)
    ('quota = "five"\n', 'shaping.plans.harian.quota: "five" is not an amount of data'),
    ('quota = "512KB"\n', "shaping.plans.harian.quota: 512kb is outside 1mb"),
    ('quota_down = 0\n', "shaping.plans.harian.quota_down: 0 must be above zero"),
    ("shared_devices = 0\n", "shaping.plans.harian.shared_devices: 0 is not valid"),
    ("shared_devices = 11\n", "shaping.plans.harian.shared_devices: 11 is not valid"),
    ('shared_devices = "2"\n', "shaping.plans.harian.shared_devices"),
    ("price = -500\n", "shaping.plans.harian.price: -500 is not valid"),
    ("price = 5000.5\n", "shaping.plans.harian.price: 5000.5 is not valid"),
    ('price = "Rp5000"\n', "shaping.plans.harian.price"),
    ("price = 1000000000\n", "shaping.plans.harian.price"),
    ('time_of_use = "0s"\n', "shaping.plans.harian.time_of_use"),
    ('validity = "400d"\n', "shaping.plans.harian.validity"),
    ('quota = "1GB"\nafter_quota = "slow"\nfair_use_down = "256kbit"\nfair_use_up = "1mbit"\n'
     'ceil_up = "512kbit"\n', "fair_use_up 1mbit is above ceil_up 512kbit"),
    ('quota = "1GB"\nafter_quota = "slow"\nfair_use_down = "50mbit"\nfair_use_up = "1mbit"\n',
     "plan 'harian' (plans.harian) is faster than the uplink (fair_use_down"),
])
def test_each_wrong_combination_names_its_fields(extra: str, expected: str) -> None:
    if not expected:
        assert plan(extra).quota == 5 * 1024**2
        return
    found = problems(extra)
    assert any(expected in p for p in found), found


def test_the_limits_that_may_go_together() -> None:
    # a total and per-direction quotas together: each is a limit of its own
    p = plan('quota = "1GB"\nquota_down = "1GB"\nquota_up = "100MB"\n')
    assert (p.quota, p.quota_down, p.quota_up) == (1024**3, 1024**3, 100 * 1024**2)
    # time of use equal to validity; time of use alone; validity alone
    assert plan('time_of_use = "1d"\nvalidity = "1d"\n').time_of_use == 86400
    assert plan('time_of_use = "3h"\n').validity is None
    assert plan('validity = "7d"\n').time_of_use is None
    # fair use on a direction quota only
    assert plan('quota_down = "1GB"\nafter_quota = "slow"\nfair_use_down = "256kbit"\n'
                'fair_use_up = "128kbit"\n').after_quota == "slow"


def test_the_default_plan_has_no_limits() -> None:
    default = parse_config_text(BASE).shaping.plan(None)
    assert (default.time_of_use, default.validity, default.quota, default.shared_devices,
            default.price, default.after_quota) == (None, None, None, 1, 0, "cut")
