"""The wizard's fields against the config schema: values in, the config text out, and
every problem line under the field it names (no Textual here)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.config.loader import parse_config_text
from gateway.config.schema import Config
from gateway.errors import ConfigError
from gateway.tui.wizard_fields import (
    BY_PATH,
    FIELDS,
    PLANS_SYNTAX,
    check,
    field_of,
    parse_plans,
    problems_by_field,
    quick_check,
    values_of,
    would_be_data,
    would_be_text,
)

EXAMPLE = (Path(__file__).resolve().parents[2] / "examples" / "gateway.toml").read_text(
    encoding="utf-8")


def test_every_field_is_a_key_of_the_schema() -> None:
    for field in FIELDS:
        section = Config.model_fields[field.section].annotation
        assert isinstance(section, type)
        assert field.key in section.model_fields, field.path  # type: ignore[attr-defined]


def test_nothing_changed_is_the_same_text_byte_for_byte() -> None:
    start = values_of(EXAMPLE)
    assert would_be_text(EXAMPLE, start, dict(start)) == EXAMPLE
    assert check(EXAMPLE, start, dict(start)) == (EXAMPLE, [])


def test_a_change_keeps_the_comments_and_the_other_keys() -> None:
    start = values_of(EXAMPLE)
    values = {**start, "site.village": "Desa Maju", "telemetry.broker": "mqtt://mq.example:1883"}
    text = would_be_text(EXAMPLE, start, values)
    assert "# Check a change before applying it:" in text
    assert 'name = "Hotspot Desa Sukamaju"          # shown on the portal' in text
    data = tomllib.loads(text)
    assert data["site"]["village"] == "Desa Maju"
    assert data["telemetry"]["broker"] == "mqtt://mq.example:1883"
    assert data["shaping"]["plans"]["school"]["priority"] == 2


@pytest.mark.parametrize("change", [
    {"site.village": "Desa Maju"},
    {"shaping.plans": "school 4mbit/1mbit, malam 2mbit/512kbit"},
    {"shaping.plans": ""},
    {"telemetry.enabled": "true", "telemetry.broker": "mqtts://mq.example"},
    {"network.lan_address": "10.9.0.1/24", "dhcp.range_start": "10.9.0.10"},
    {"telemetry.ca_file": "/etc/ca.crt"},
])
def test_the_fast_check_sees_what_the_text_says(change: dict[str, str]) -> None:
    # quick_check runs at each keystroke on plain data; it must judge the very config the
    # text (what is applied) holds.
    start = values_of(EXAMPLE)
    values = {**start, **change}
    text = would_be_text(EXAMPLE, start, values)
    assert tomllib.loads(text) == would_be_data(tomllib.loads(EXAMPLE), start, values)
    assert quick_check(tomllib.loads(EXAMPLE), start, values) == check(EXAMPLE, start, values)[1]


def test_an_emptied_optional_key_is_removed() -> None:
    base = EXAMPLE.replace("enabled = false\n# broker", 'enabled = false\nca_file = "/x.crt"\n# broker')
    start = values_of(base)
    assert start["telemetry.ca_file"] == "/x.crt"
    text = would_be_text(base, start, {**start, "telemetry.ca_file": ""})
    assert "ca_file" not in tomllib.loads(text)["telemetry"]


def test_problems_are_the_loaders_lines_under_their_fields() -> None:
    start = values_of(EXAMPLE)
    values = {**start, "network.lan_address": "10.42.0.1", "shaping.uplink_up": "fast",
              "shaping.plans": "school 4mbit/1mbit", "shaping.client_down": "50mbit",
              "telemetry.enabled": "true"}
    text, problems = check(EXAMPLE, start, values)
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text)
    assert problems == caught.value.problems  # the very lines `desanet config check` prints
    owned, other = problems_by_field(problems)
    assert set(owned) == {"network.lan_address", "shaping.uplink_up", "telemetry.broker",
                          "telemetry.site_id"}
    assert other == []


def test_section_level_lines_are_kept_apart() -> None:
    start = values_of(EXAMPLE)
    values = {**start, "shaping.client_down": "50mbit"}  # above uplink_down 20mbit
    problems = check(EXAMPLE, start, values)[1]
    owned, other = problems_by_field(problems)
    assert owned == {} and len(other) == 1 and other[0].startswith("shaping: default plan")


def test_plan_lines_and_cross_checks_find_their_field() -> None:
    assert field_of("shaping.plans.school.down: \"x\" is not a rate") is BY_PATH["shaping.plans"]
    assert field_of("dhcp.range_start = 10.0.0.5 is not a usable host") is BY_PATH["dhcp.range_start"]
    assert field_of("network.wan_interface 'eth0' is also network.lan_interface") \
        is BY_PATH["network.wan_interface"]
    assert field_of("walled_garden.addresses[0]: too large") is None


def test_the_plans_line() -> None:
    assert parse_plans(" school 4mbit/1mbit,malam 2mbit / 512kbit ,") == {
        "school": ("4mbit", "1mbit"), "malam": ("2mbit", "512kbit")}
    for bad in ("school 4mbit", "school 4mbit/1mbit/2", "a 1/2, a 3/4"):
        with pytest.raises(ValueError):
            parse_plans(bad)
    start = values_of(EXAMPLE)
    assert check(EXAMPLE, start, {**start, "shaping.plans": "school fast"})[1] == [PLANS_SYNTAX]
    # its rates are the schema's to judge
    problems = check(EXAMPLE, start, {**start, "shaping.plans": "school fast/1mbit"})[1]
    assert problems and problems[0].startswith("shaping.plans.school.down: ")


def test_an_empty_file_asks_for_each_required_field() -> None:
    start = values_of("")
    problems = check("", start, dict(start))[1]
    owned, other = problems_by_field(problems)
    assert other == []
    assert set(owned) == {"site.name", "site.village", "network.lan_interface",
                          "network.wan_interface", "network.lan_address", "dhcp.range_start",
                          "dhcp.range_end"}
    filled = {**start, "site.name": "Hotspot", "site.village": "Desa", "network.lan_interface": "br0",
              "network.wan_interface": "eth0", "network.lan_address": "10.42.0.1/24",
              "dhcp.range_start": "10.42.0.100", "dhcp.range_end": "10.42.0.200"}
    text, problems = check("", start, filled)
    assert problems == []
    assert parse_config_text(text).network.lan_interface == "br0"
