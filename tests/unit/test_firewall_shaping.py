"""Firewall planner with shaping on and off: the ``client_class`` map steers
packets into HTB classes (no tc filters), and nothing of it exists when
shaping is off."""

from __future__ import annotations

import re

import pytest

from gateway.firewall.planner import (
    TRUSTED_CT_MARK,
    client_class_text,
    plan_authorize,
    plan_revoke,
    plan_ruleset,
)
from gateway.model import Session
from tests.unit.conftest import make_config

NOW = 1_700_000_000
A = Session("02:00:00:00:00:01", "10.42.0.101", NOW - 60, NOW + 600, 1800, "terms")
B = Session("02:00:00:00:00:02", "10.42.0.102", NOW - 60, NOW + 600, 1800, "voucher", "X", "school")
EXPIRED = Session("02:00:00:00:00:03", "10.42.0.103", NOW - 9000, NOW - 1, 1800, "terms")

ON = {"enabled": True, "plans": {"school": {"down": "4mbit", "up": "1mbit"}}}


def chain(script: str, name: str) -> str:
    match = re.search(rf"  chain {name} \{{\n(.*?)\n  \}}", script, re.S)
    assert match, f"chain {name} missing"
    return match.group(1)


def class_map(script: str) -> str | None:
    match = re.search(r"  map client_class \{(.*?)\}\n", script)
    return match.group(1) if match else None


def test_shaping_off_has_no_map_and_no_classification() -> None:
    script = plan_ruleset(make_config(), [A, B], NOW)
    assert class_map(script) is None
    assert "client_class" not in script
    assert "meta priority" not in script
    assert "ct mark" not in script


def test_shaping_on_declares_the_map_even_without_sessions() -> None:
    body = class_map(plan_ruleset(make_config(shaping=ON), [], NOW))
    assert body is not None
    assert body.strip() == "type ipv4_addr : classid;"


@pytest.mark.parametrize(
    ("sessions", "has", "lacks"),
    [
        ([A], ["10.42.0.101 : 1:165"], ["10.42.0.102"]),
        ([A, B], ["10.42.0.101 : 1:165", "10.42.0.102 : 1:166"], []),
        ([A, EXPIRED], ["10.42.0.101 : 1:165"], ["10.42.0.103"]),  # expired: no class
    ],
)
def test_map_elements_are_the_client_classes(sessions: list[Session], has: list[str],
                                             lacks: list[str]) -> None:
    body = class_map(plan_ruleset(make_config(shaping=ON), sessions, NOW))
    assert body is not None
    assert body.startswith(" type ipv4_addr : classid; elements = {")
    for text in has:
        assert text in body
    for text in lacks:
        assert text not in body


def test_map_values_follow_the_shaping_planner() -> None:
    cfg = make_config(network={"lan_address": "10.42.0.1/20"}, shaping=ON,
                      dhcp={"range_start": "10.42.0.100", "range_end": "10.42.3.200"})
    s = Session("02:00:00:00:00:09", "10.42.3.7", NOW, NOW + 60, 1800, "terms")
    assert client_class_text(cfg, s.ip) == "1:407"  # 0x100 + 3*256 + 7
    assert "10.42.3.7 : 1:407" in (class_map(plan_ruleset(cfg, [s], NOW)) or "")


def test_classification_rules_only_when_shaping_is_on() -> None:
    off = plan_ruleset(make_config(), [A], NOW)
    on = plan_ruleset(make_config(shaping=ON), [A], NOW)
    fwd_on = chain(on, "filter_forward").splitlines()
    expected = [
        f'    iifname "br-lan" ether saddr @trusted_mac ct mark set {TRUSTED_CT_MARK:#x}',
        f"    ct mark {TRUSTED_CT_MARK:#x} meta priority set 1:4",
        '    iifname "br-lan" meta priority set ip saddr map @client_class',  # upload
        '    oifname "br-lan" meta priority set ip daddr map @client_class',  # download
    ]
    for line in expected:
        assert line in fwd_on
    # classification happens before the verdicts, so it applies to every forwarded packet
    jump = fwd_on.index('    iifname "br-lan" jump lan_forward')
    assert all(fwd_on.index(line) < jump for line in expected)
    assert "meta priority" not in chain(off, "filter_forward")
    # the gateway's own traffic: the "local" class on both devices
    assert 'oifname { "br-lan", "wan0" } meta priority set 1:3' in chain(on, "filter_output")
    assert "meta priority" not in chain(off, "filter_output")
    # every forwarded packet is first put in the unauthorized class, and only
    # later statements (trusted mark, client map) move it: HTB's default class
    # is left for the gateway's own ARP/DHCP, which must not queue behind it
    unauth = '    oifname "br-lan" meta priority set 1:2'
    assert fwd_on.index(unauth) < fwd_on.index(expected[0])
    assert '    iifname "br-lan" meta priority set 1:2' in fwd_on


def test_classification_rules_do_not_grow_with_clients() -> None:
    cfg = make_config(network={"lan_address": "10.42.0.1/20"}, shaping=ON,
                      dhcp={"range_start": "10.42.0.100", "range_end": "10.42.15.200"})
    many = [Session(f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}", f"10.42.{i // 250}.{i % 250 + 2}",
                    NOW, NOW + 600, 1800, "terms") for i in range(800)]
    few = plan_ruleset(cfg, [A], NOW)
    lots = plan_ruleset(cfg, many, NOW)
    chains = lambda s: re.findall(r"chain \w+ \{(.*?)\n  \}", s, re.S)  # noqa: E731
    assert chains(few) == chains(lots)
    assert (class_map(lots) or "").count(" : 1:") == 800


def test_authorize_adds_the_class_element_atomically() -> None:
    script = plan_authorize(A, NOW, "1:165")
    lines = [ln for ln in script.splitlines() if "client_class" in ln]
    assert lines == [
        "add element inet desanet client_class { 10.42.0.101 : 1:165 }",
        "delete element inet desanet client_class { 10.42.0.101 }",
        "add element inet desanet client_class { 10.42.0.101 : 1:165 }",
    ]


def test_authorize_without_shaping_leaves_the_map_alone() -> None:
    assert "client_class" not in plan_authorize(A, NOW)
    assert "client_class" not in plan_authorize(A, NOW, None)


def _class_values(script: str) -> list[str]:
    return re.findall(r"add element inet desanet client_class \{ 10\.42\.0\.101 : (\S+) \}", script)


def test_revoke_removes_the_class_element_without_a_clash() -> None:
    """nft refuses (EEXIST) to "add" a map element whose value differs from the
    one in the kernel, and the whole revoke transaction fails with it. So the
    idempotent add-then-delete must carry the value authorize put there."""
    authorized = set(_class_values(plan_authorize(A, NOW, "1:165")))
    script = plan_revoke(A.mac, A.ip, "1:165")  # the class text of the client being revoked
    assert script.splitlines()[-1] == "delete element inet desanet client_class { 10.42.0.101 }"
    assert set(_class_values(script)) <= authorized, (
        f"revoke adds {_class_values(script)} but the element holds {authorized}: EEXIST in the kernel")
    assert "client_class" not in plan_revoke(A.mac, A.ip)
