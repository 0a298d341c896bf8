"""config_changes / format_changes / config_version: tables of cases."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.diff import (
    ABSENT,
    Change,
    config_changes,
    config_version,
    format_changes,
    is_secret,
)

BASE: dict[str, Any] = {
    "site": {"name": "Hotspot", "village": "Desa"},
    "portal": {"terms_text": "Setuju", "session_length": "4h"},
    "dhcp": {"upstream_dns": ["1.1.1.1"]},
}


def _with(**sections: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) for k, v in BASE.items()}
    for name, values in sections.items():
        out.setdefault(name, {}).update(values)
    return out


@pytest.mark.parametrize(("new", "lines"), [
    (BASE, []),
    (_with(portal={"terms_text": "Saya setuju"}),
     ["portal.terms_text: 'Setuju' -> 'Saya setuju'"]),
    (_with(dhcp={"upstream_dns": ["1.1.1.1", "8.8.8.8"]}),
     ["dhcp.upstream_dns: ['1.1.1.1'] -> ['1.1.1.1', '8.8.8.8']"]),
    (_with(portal={"idle_timeout": "30m"}), ["portal.idle_timeout: added '30m'"]),
    ({k: v for k, v in BASE.items() if k != "dhcp"},
     ["dhcp: removed (was {'upstream_dns': ['1.1.1.1']})"]),
    (_with(shaping={"plans": {"school": {"down": "4mbit"}}}),
     ["shaping: added {'plans': {'school': {'down': '4mbit'}}}"]),
    (_with(site={"name": "Hotspot", "village": "Desa Baru"}, portal={"session_length": "8h"}),
     ["site.village: 'Desa' -> 'Desa Baru'", "portal.session_length: '4h' -> '8h'"]),
    (_with(portal={"session_length": 14400}), ["portal.session_length: '4h' -> 14400"]),
    (_with(mqtt={"password": "rahasia2"}), ["mqtt: added {'password': '(secret)'}"]),
    (_with(portal={"terms_text": "x" * 100}),
     ["portal.terms_text: 'Setuju' -> '" + "x" * 56 + "..."]),
])
def test_changes_as_lines(new: dict[str, Any], lines: list[str]) -> None:
    assert format_changes(config_changes(BASE, new)) == lines


@pytest.mark.parametrize(("old", "new", "lines"), [
    ({"mqtt": {"password": "a"}}, {"mqtt": {"password": "b"}}, ["mqtt.password: (changed)"]),
    ({"mqtt": {}}, {"mqtt": {"api_key": "b"}}, ["mqtt.api_key: (added)"]),
    ({"mqtt": {"token": "a"}}, {"mqtt": {}}, ["mqtt.token: (removed)"]),
    ({"wifi": {"psk": "a"}}, {"wifi": {"psk": "b"}}, ["wifi.psk: (changed)"]),
    ({"secrets": {"x": "a"}}, {"secrets": {"x": "b"}}, ["secrets.x: (changed)"]),
    ({}, {"mqtt": {"host": "h", "auth": {"token": "t"}}},
     ["mqtt: added {'host': 'h', 'auth': {'token': '(secret)'}}"]),
    ({"mqtt": {"users": [{"password": "p"}]}}, {},
     ["mqtt: removed (was {'users': [{'password': '(secret)'}]})"]),
])
def test_secrets_never_show_values(old: dict[str, Any], new: dict[str, Any],
                                   lines: list[str]) -> None:
    assert format_changes(config_changes(old, new)) == lines


@pytest.mark.parametrize(("path", "secret"), [
    ("mqtt.password", True), ("mqtt.api_key", True), ("wifi.wpa-psk", True),
    ("telemetry.client_secret", True), ("mqtt.token", True), ("tls.key", True),
    ("portal.idle_timeout", False), ("mqtt.keepalive", False), ("portal.monkey", False),
    ("site.name", False), ("portal.terms_text", False),
])
def test_is_secret(path: str, secret: bool) -> None:
    assert is_secret(path) is secret


def test_change_objects_and_json() -> None:
    changes = config_changes({"a": {"b": 1, "pw_secret": "x"}}, {"a": {"c": [1], "pw_secret": "y"}})
    assert changes == [Change("a.b", 1, ABSENT), Change("a.pw_secret", "x", "y"),
                       Change("a.c", ABSENT, [1])]
    assert changes[0].removed and changes[2].added and changes[1].secret
    assert [c.to_json() for c in changes] == [
        {"path": "a.b", "old": 1, "new": None},
        {"path": "a.pw_secret", "old": "(secret)", "new": "(secret)"},
        {"path": "a.c", "old": None, "new": [1]},
    ]
    added = config_changes({}, {"mqtt": {"password": "p", "host": "h"}})
    assert [c.to_json() for c in added] == [
        {"path": "mqtt", "old": None, "new": {"password": "(secret)", "host": "h"}}]


@pytest.mark.parametrize(("old", "new"), [
    ({"x": True}, {"x": 1}),
    ({"x": 1}, {"x": 1.0}),
    ({"x": {"y": 1}}, {"x": 1}),
])
def test_type_changes_are_changes(old: dict[str, Any], new: dict[str, Any]) -> None:
    assert [c.path for c in config_changes(old, new)] == ["x"]


def test_version_ignores_comments_order_and_whitespace() -> None:
    a = '[site]\nname = "Hotspot"\nvillage = "Desa"\n'
    b = '# comment\n[site]\nvillage   = "Desa"\nname = "Hotspot"\n\n'
    v = config_version(a)
    assert len(v) == 12 and all(ch in "0123456789abcdef" for ch in v)
    assert config_version(b) == v
    assert config_version({"site": {"village": "Desa", "name": "Hotspot"}}) == v
    assert config_version(a.replace("Desa", "Desa Baru")) != v
