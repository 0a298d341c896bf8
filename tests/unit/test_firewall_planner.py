"""Ruleset planner tables: config + sessions + carried kernel state -> nft text."""

from __future__ import annotations

import re

import pytest

from gateway.firewall.planner import CarriedState, plan_authorize, plan_revoke, plan_ruleset
from gateway.model import Session
from tests.unit.conftest import make_config

NOW = 1_700_000_000
A = Session("02:00:00:00:00:01", "10.42.0.101", NOW - 60, NOW + 600, 1800, "terms")
B = Session("02:00:00:00:00:02", "10.42.0.102", NOW - 9000, NOW - 1, 1800, "voucher", "X")


def set_block(script: str, name: str) -> str:
    match = re.search(rf"  set {name} \{{(.*?)\}}\n", script)
    assert match, f"set {name} missing"
    return match.group(1)


def chain(script: str, name: str) -> str:
    match = re.search(rf"  chain {name} \{{\n(.*?)\n  \}}", script, re.S)
    assert match, f"chain {name} missing"
    return match.group(1)


@pytest.mark.parametrize(
    ("sessions", "auth_has", "auth_lacks"),
    [
        ([], [], ["02:00"]),
        ([A], ["02:00:00:00:00:01 . 10.42.0.101 timeout 600s"], []),
        ([A, B], ["02:00:00:00:00:01 . 10.42.0.101"], ["02:00:00:00:00:02"]),  # B expired
    ],
)
def test_sessions_become_set_elements(sessions: list[Session], auth_has: list[str],
                                      auth_lacks: list[str]) -> None:
    auth = set_block(plan_ruleset(make_config(), sessions, NOW), "auth4")
    for text in auth_has:
        assert text in auth
    for text in auth_lacks:
        assert text not in auth


def test_rules_do_not_grow_with_clients() -> None:
    many = [Session(f"02:00:00:00:{i // 256:02x}:{i % 256:02x}", f"10.42.{i // 250}.{i % 250 + 2}",
                    NOW, NOW + 600, 1800, "terms") for i in range(500)]
    few = plan_ruleset(make_config(), [A], NOW)
    lots = plan_ruleset(make_config(), many, NOW)
    rules = lambda s: [c for c in re.findall(r"chain \w+ \{(.*?)\}", s, re.S)]  # noqa: E731
    assert rules(few) == rules(lots)


@pytest.mark.parametrize(
    ("carried", "expected"),
    [
        (CarriedState(), "timeout 1800s expires 600s"),  # restored: fresh idle window, capped by session
        (CarriedState(active={(A.mac, A.ip): 42}), "timeout 1800s expires 42s"),
    ],
)
def test_activity_is_carried_over(carried: CarriedState, expected: str) -> None:
    active = set_block(plan_ruleset(make_config(), [A], NOW, carried), "active4")
    assert f"{A.mac} . {A.ip} {expected}" in active


def test_idle_session_gets_no_new_window_from_a_reload() -> None:
    carried = CarriedState(active={}, from_live_table=True)
    script = plan_ruleset(make_config(), [A], NOW, carried)
    assert A.mac not in set_block(script, "active4")
    assert A.mac in set_block(script, "auth4")  # still authorized until the sweep ends it


def test_dnsmasq_filled_garden_addresses_are_carried() -> None:
    carried = CarriedState(garden_dns4={"198.51.100.20": 3000})
    script = plan_ruleset(make_config(walled_garden={"hostnames": ["layanan.lab"]}), [], NOW, carried)
    assert "198.51.100.20 expires 3000s" in set_block(script, "garden_dns4")


def test_walled_garden_split_by_family() -> None:
    cfg = make_config(walled_garden={"addresses": ["192.0.2.0/24", "2001:db8::/32"]})
    script = plan_ruleset(cfg, [], NOW)
    assert "192.0.2.0/24" in set_block(script, "garden4")
    assert "2001:db8::/32" in set_block(script, "garden6")
    assert "2001:db8" not in set_block(script, "garden4")


def test_trusted_and_blocked_macs() -> None:
    cfg = make_config(access={"trusted_macs": ["02:00:00:00:00:aa"],
                              "blocked_macs": ["02:00:00:00:00:bb"]})
    script = plan_ruleset(cfg, [], NOW)
    assert "02:00:00:00:00:aa" in set_block(script, "trusted_mac")
    assert "02:00:00:00:00:bb" in set_block(script, "blocked_mac")
    for name in ("lan_forward", "lan_input"):
        assert chain(script, name).strip().startswith("ether saddr @blocked_mac drop")


def test_unauthorized_path() -> None:
    cfg = make_config(portal={"redirect_port": 2051, "http_port": 8080})
    script = plan_ruleset(cfg, [], NOW)
    nat = chain(script, "lan_nat")
    # every DNS query, UDP or TCP, to any resolver goes to our dnsmasq (dns: before login
    # its pre-login instance, tests/unit/test_dns_policy.py)
    assert "meta l4proto { tcp, udp } th dport 53 jump lan_dns" in nat
    assert "ip daddr != 10.42.0.1 meta l4proto { tcp, udp } redirect to :53" in chain(
        script, "lan_dns_full")
    assert nat.strip().endswith("tcp dport 80 redirect to :2051")
    fwd = chain(script, "lan_forward")
    # every packet is checked, not only new connections: deauth cuts at once
    assert "ct state established" not in fwd
    assert "ether saddr . ip saddr @auth4 update @active4" in fwd
    assert fwd.strip().endswith("reject with icmpx admin-prohibited")
    assert "tcp dport { 8080, 2051 } accept" in chain(script, "lan_input")
    assert "policy drop" in chain(script, "filter_forward")


def test_idle_client_is_not_revived_by_its_next_packet() -> None:
    fwd = chain(plan_ruleset(make_config(), [A], NOW), "lan_forward")
    accept = next(x.strip() for x in fwd.splitlines() if "update @active4" in x)
    # the activity element must still exist: an expired one is not re-added
    assert accept.startswith("ether saddr . ip saddr @active4 ether saddr . ip saddr @auth4 update")


def test_ipv6_from_lan_is_dropped_before_any_accept() -> None:
    script = plan_ruleset(make_config(access={"trusted_macs": ["02:00:00:00:00:aa"]}), [A], NOW)
    for name in ("lan_forward", "lan_input"):
        lines = [x.strip() for x in chain(script, name).splitlines()]
        v6 = lines.index("meta nfproto ipv6 drop")
        first_accept = next(i for i, x in enumerate(lines) if x.endswith("accept"))
        assert v6 < first_accept


@pytest.mark.parametrize(("isolation", "has_drop"), [(True, True), (False, False)])
def test_client_isolation(isolation: bool, has_drop: bool) -> None:
    script = plan_ruleset(make_config(network={"client_isolation": isolation}), [], NOW)
    assert "delete table bridge desanet" in script
    assert ("chain isolate" in script) is has_drop
    # ... and at layer 3: a client routing to a neighbour via the gateway is not hairpinned.
    assert ('oifname "br-lan" drop' in chain(script, "lan_forward")) is has_drop


def test_full_apply_is_one_atomic_replace() -> None:
    lines = plan_ruleset(make_config(), [], NOW).splitlines()
    assert lines[0] == "table inet desanet {}"
    assert lines[1] == "delete table inet desanet"
    assert lines[2] == "table inet desanet {"


def test_authorize_replaces_timeouts() -> None:
    ops = plan_authorize(A, NOW).splitlines()
    key = "02:00:00:00:00:01 . 10.42.0.101"
    assert ops[:3] == [
        f"add element inet desanet auth4 {{ {key} timeout 600s }}",
        f"delete element inet desanet auth4 {{ {key} }}",
        f"add element inet desanet auth4 {{ {key} timeout 600s }}",
    ]
    assert f"add element inet desanet active4 {{ {key} timeout 600s }}" in ops  # capped by session


def test_revoke_is_idempotent_and_touches_only_sets() -> None:
    ops = plan_revoke(A.mac, A.ip)
    assert "rule" not in ops
    assert ops.count("delete element") == 3  # auth4, active4, active_down4 (by address)


# -- activity in both directions (a silent phone receiving a stream is online) -------------


def test_a_download_refreshes_its_client_activity_only_while_the_element_lives() -> None:
    fwd = chain(plan_ruleset(make_config(), [A], NOW), "filter_forward")
    lines = [x.strip() for x in fwd.splitlines()]
    down = 'oifname "br-lan" ct state established,related ip daddr @active_down4 ' \
        "update @active_down4 { ip daddr }"
    # after the quota chain (a packet it drops is no use), before the accept (which ends
    # the chain); guarded by the element: a lapsed (idle) client is not revived
    assert lines.index('oifname "br-lan" jump client_down') < lines.index(down)
    assert lines.index(down) == lines.index('oifname "br-lan" ct state established,related accept') - 1


def test_an_upload_re_arms_the_download_element_and_passes_on_either() -> None:
    fwd = [x.strip() for x in chain(plan_ruleset(make_config(), [A], NOW), "lan_forward").splitlines()]
    first = next(i for i, x in enumerate(fwd) if "update @active4" in x)
    # add, not update: an existing download element keeps its own (download) time
    assert fwd[first].endswith("update @active4 { ether saddr . ip saddr } "
                               "add @active_down4 { ip saddr } goto client_up")
    # a client whose upload window lapsed while downloads kept it online still gets out,
    # only with its MAC and address in auth4
    assert fwd[first + 1] == ("ip saddr @active_down4 ether saddr . ip saddr @auth4 "
                              "update @active4 { ether saddr . ip saddr } goto client_up")
    assert not any("@active_down4" in x and "@auth4" not in x for x in fwd)


@pytest.mark.parametrize(
    ("carried", "in_active4", "down"),
    [
        # downloads only: the upload window lapsed, the session is not idle
        (CarriedState(active_down={A.ip: 50}, from_live_table=True), None, "expires 50s"),
        # the later of the two
        (CarriedState(active={(A.mac, A.ip): 42}, active_down={A.ip: 7}, from_live_table=True),
         "expires 42s", "expires 42s"),
        (CarriedState(active={(A.mac, A.ip): 3}, active_down={A.ip: 30}, from_live_table=True),
         "expires 3s", "expires 30s"),
        # no live table (a reboot): one fresh window in both
        (CarriedState(), "expires 600s", "expires 600s"),
    ],
)
def test_download_activity_is_carried_over(carried: CarriedState, in_active4: str | None,
                                           down: str) -> None:
    script = plan_ruleset(make_config(), [A], NOW, carried)
    active = set_block(script, "active4")
    assert (A.mac in active) is (in_active4 is not None)
    if in_active4:
        assert f"{A.mac} . {A.ip} timeout 1800s {in_active4}" in active
    assert f"{A.ip} timeout 1800s {down}" in set_block(script, "active_down4")


def test_idle_both_ways_gets_no_window_in_either_set() -> None:
    script = plan_ruleset(make_config(), [A], NOW, CarriedState(from_live_table=True))
    assert A.ip not in set_block(script, "active_down4")
    assert A.mac not in set_block(script, "active4")


def test_authorize_opens_both_activity_elements() -> None:
    ops = plan_authorize(A, NOW).splitlines()
    assert ops[6:9] == [
        f"add element inet desanet active_down4 {{ {A.ip} timeout 600s }}",
        f"delete element inet desanet active_down4 {{ {A.ip} }}",
        f"add element inet desanet active_down4 {{ {A.ip} timeout 600s }}",
    ]
