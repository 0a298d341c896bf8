"""The identity guard's nft text (firewall/guard.py): sources, ARP and DHCP vs. the leases.

What the rules do to real packets is proven in tests/integration/test_hostile_lan.py;
here, that the right rules and sets are planned, in the right place.
"""

from __future__ import annotations

import re

import pytest

from gateway.errors import ConfigError
from gateway.firewall.guard import lease_pairs, plan_leases
from gateway.firewall.planner import CarriedState, plan_ruleset
from tests.unit.conftest import make_config

NOW = 1_700_000_000
LEASES = {"10.42.0.101": "02:D5:00:00:00:01", "10.42.0.102": "02:d5:00:00:00:02",
          "192.168.9.9": "02:d5:00:00:00:09"}  # the last is outside the LAN


def chain(script: str, name: str) -> list[str]:
    match = re.search(rf"  chain {name} \{{\n(.*?)\n  \}}", script, re.S)
    assert match, f"chain {name} missing"
    return [line.strip() for line in match.group(1).splitlines()]


def table(script: str, family: str) -> str:
    match = re.search(rf"^table {family} desanet \{{\n(.*?)^\}}", script, re.S | re.M)
    assert match, f"table {family} desanet missing"
    return match.group(1)


def test_lease_pairs_keep_the_lan_only_and_lower_case_macs() -> None:
    assert lease_pairs(make_config(), LEASES) == [("10.42.0.101", "02:d5:00:00:00:01"),
                                                 ("10.42.0.102", "02:d5:00:00:00:02")]


def test_forged_sources_are_dropped_before_anything_else() -> None:
    script = plan_ruleset(make_config(), [], NOW)
    hook = chain(script, "guard_prerouting")
    # raw priority: before conntrack, the DNS/portal redirects (dstnat) and every reject
    assert hook[0] == "type filter hook prerouting priority raw; policy accept;"
    assert hook[1] == 'iifname "br-lan" meta nfproto ipv4 jump lan_source'
    assert chain(script, "lan_source") == [
        "ip saddr 0.0.0.0 udp sport 68 udp dport 67 return",  # DHCP before an address
        "ip saddr != 10.42.0.0/24 counter drop",  # a forged internet source
        "ip saddr { 10.42.0.1, 10.42.0.0, 10.42.0.255 } counter drop",  # the gateway's own
        "ip saddr @lease_ip4 ip saddr . ether saddr != @lease4 counter drop",  # a neighbour's lease
    ]


def test_dhcp_is_checked_at_the_head_of_lan_input() -> None:
    script = plan_ruleset(make_config(dhcp={"new_client_rate": 3, "new_client_burst": 30}),
                          [], NOW)
    head = chain(script, "lan_input")
    jump = head.index("udp dport 67 jump lan_dhcp")
    # before the conntrack shortcut: renewals to the unicast address are checked too
    assert jump < head.index("ct state established,related accept")
    assert chain(script, "lan_dhcp") == [
        "update @dhcp_pair { @ll,48,48 . @ll,48,48 }",
        "@ll,48,48 . @th,288,48 != @dhcp_pair counter drop",  # chaddr (UDP payload +28) != source
        "update @dhcp_mac { ether saddr limit rate over 10/minute burst 10 packets } counter drop",
        "ether saddr @lease_mac return",
        "limit rate over 3/second burst 30 packets counter drop",
    ]


@pytest.mark.parametrize("isolation", [True, False])
def test_arp_for_the_gateway_or_against_a_lease_is_dropped(isolation: bool) -> None:
    cfg = make_config(network={"client_isolation": isolation})
    script = plan_ruleset(cfg, [], NOW, CarriedState(leases=LEASES))
    arp = table(script, "arp")
    assert 'iifname "br-lan" jump lan_arp' in arp
    assert chain(script, "lan_arp") == [
        "arp saddr ip 10.42.0.1 counter drop",
        "arp saddr ip != { 0.0.0.0, 10.42.0.0/24 } counter drop",
        "arp saddr ip @lease_ip4 arp saddr ip . arp saddr ether != @lease4 counter drop",
    ]
    assert ("set lease4 { type ipv4_addr . ether_addr; elements = { 10.42.0.101 . "
            "02:d5:00:00:00:01, 10.42.0.102 . 02:d5:00:00:00:02 }; }") in arp
    # Between bridge ports too, with or without isolation.
    bridge = table(script, "bridge")
    assert "ether type arp arp saddr ip 10.42.0.1 counter drop" in bridge
    assert ("ether type arp arp saddr ip @lease_ip4 arp saddr ip . arp saddr ether != @lease4 "
            "counter drop") in bridge
    assert "10.42.0.101 . 02:d5:00:00:00:01" in bridge
    assert ("chain isolate" in bridge) is isolation


def test_a_full_apply_carries_the_leases_into_every_lease_set() -> None:
    script = plan_ruleset(make_config(), [], NOW, CarriedState(leases=LEASES))
    inet = table(script, "inet")
    assert "set lease_ip4 { type ipv4_addr; elements = { 10.42.0.101, 10.42.0.102 }; }" in inet
    assert ("set lease_mac { type ether_addr; elements = { 02:d5:00:00:00:01, "
            "02:d5:00:00:00:02 }; }") in inet
    assert "192.168.9.9" not in script
    empty = plan_ruleset(make_config(), [], NOW)
    assert "set lease4 { type ipv4_addr . ether_addr; }" in empty


def test_plan_leases_replaces_both_tables_sets_in_one_script() -> None:
    lines = plan_leases(("inet", "desanet"), make_config(), LEASES).splitlines()
    assert lines[:3] == ["flush set inet desanet lease4", "flush set inet desanet lease_ip4",
                         "flush set inet desanet lease_mac"]
    assert ("add element arp desanet lease4 { 10.42.0.101 . 02:d5:00:00:00:01, "
            "10.42.0.102 . 02:d5:00:00:00:02 }") in lines
    assert "flush set arp desanet lease_ip4" in lines
    assert "add element bridge desanet lease_ip4 { 10.42.0.101, 10.42.0.102 }" in lines
    # No leases: flushes only (an empty "add element" is a syntax error).
    assert all(line.startswith("flush") for line in
               plan_leases(("inet", "desanet"), make_config(), {}).splitlines())


@pytest.mark.parametrize(("key", "value"), [("new_client_rate", 0), ("new_client_rate", 10**6),
                                            ("new_client_burst", 0), ("new_client_burst", "x")])
def test_the_dhcp_budget_is_bounded(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(dhcp={key: value})
    assert f"dhcp.{key}" in str(err.value)
