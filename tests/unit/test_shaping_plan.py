"""HTB planner tables: config + sessions -> the tree each device should have,
and the smallest list of class operations that gets the kernel there."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.model import Session
from gateway.shaping.plan import (
    CLIENT_BASE_MINOR,
    LOCAL_MINOR,
    MTU,
    TRUSTED_MINOR,
    UNAUTHORIZED_MINOR,
    UPLINK_MINOR,
    DeviceTree,
    HtbClass,
    classid,
    classid_text,
    client_class,
    client_minor,
    diff_classes,
    leaf_limit_packets,
    plan_device,
    plan_trees,
)
from tests.unit.conftest import make_config

NOW = 1_700_000_000
M = 1_000_000

SHAPING: dict[str, Any] = {
    "enabled": True,
    "uplink_down": "20mbit", "uplink_up": "10mbit",
    "client_down": "2mbit", "client_up": "1mbit",
    "unauthorized_down": "1mbit", "unauthorized_up": "256kbit",
    "plans": {
        "capped": {"down": "4mbit", "up": "2mbit", "ceil_down": "4mbit", "ceil_up": "2mbit"},
        "school": {"down": "4mbit", "up": "2mbit", "priority": 2},
        "kantor-desa": {"down": "3mbit", "up": "1mbit", "ceil_down": "10mbit"},
    },
}


def cfg(**shaping: Any) -> Any:
    return make_config(shaping={**SHAPING, **shaping})


def session(host: int, plan: str | None = None, net: str = "10.42.0") -> Session:
    return Session(f"02:00:00:00:00:{host:02x}", f"{net}.{host}", NOW, NOW + 600, 1800, "terms",
                   None, plan)


def shape(c: HtbClass) -> tuple[int | None, int, int, int]:
    return (c.parent_minor, c.rate, c.ceil, c.prio)


# -- class numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lan", "ip", "minor"),
    [
        ("10.42.0.1/24", "10.42.0.0", 0x100),
        ("10.42.0.1/24", "10.42.0.1", 0x101),
        ("10.42.0.1/24", "10.42.0.101", 0x100 + 101),
        ("10.42.0.1/24", "10.42.0.255", 0x1FF),
        ("10.42.0.1/20", "10.42.3.7", 0x100 + 3 * 256 + 7),
        ("10.42.0.1/17", "10.42.127.255", 0x100 + 0x7FFF),  # the largest LAN shaping accepts
        ("192.168.8.1/22", "192.168.9.2", 0x100 + 256 + 2),
    ],
)
def test_client_minor_is_the_offset_in_the_lan(lan: str, ip: str, minor: int) -> None:
    c = make_config(network={"lan_address": lan}, shaping={"enabled": True},
                    dhcp={"range_start": lan.rsplit(".", 1)[0] + ".100",
                          "range_end": lan.rsplit(".", 1)[0] + ".200"})
    assert client_minor(c, ip) == minor


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("10.42.1.5", "is not in the LAN 10.42.0.0/24"),
        ("198.51.100.10", "is not in the LAN"),
        ("10.41.255.255", "is not in the LAN"),
    ],
)
def test_client_minor_outside_lan_is_an_error(ip: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        client_minor(cfg(), ip)


def test_client_minor_not_an_address_is_an_error() -> None:
    with pytest.raises(ValueError):
        client_minor(cfg(), "not-an-ip")


def test_client_minor_beyond_16_bits_is_an_error() -> None:
    # Only reachable with shaping off (the schema refuses LANs above /17 with shaping on).
    big = make_config(network={"lan_address": "10.42.0.1/16"},
                      dhcp={"range_start": "10.42.0.100", "range_end": "10.42.0.200"})
    assert client_minor(big, "10.42.254.255") == 0x100 + 0xFEFF
    with pytest.raises(ValueError, match=r"too far into 10\.42\.0\.0/16"):
        client_minor(big, "10.42.255.0")


@pytest.mark.parametrize(
    ("minor", "cid", "text"),
    [(1, 0x10001, "1:1"), (2, 0x10002, "1:2"), (0x165, 0x10165, "1:165"), (0xFFFF, 0x1FFFF, "1:ffff")],
)
def test_classid_spellings(minor: int, cid: int, text: str) -> None:
    assert classid(minor) == cid
    assert classid_text(minor) == text  # tc and nft read class minors as hex


# -- trees -------------------------------------------------------------------------------------


FIXED_DOWN = {
    UPLINK_MINOR: (None, 20 * M, 20 * M, 0),
    UNAUTHORIZED_MINOR: (UPLINK_MINOR, 1 * M, 1 * M, 7),
    TRUSTED_MINOR: (UPLINK_MINOR, 2 * M, 20 * M, 4),
    LOCAL_MINOR: (None, 1000 * M, 1000 * M, 0),  # a sibling of the uplink: not charged to it
}
FIXED_UP = {
    UPLINK_MINOR: (None, 10 * M, 10 * M, 0),
    UNAUTHORIZED_MINOR: (UPLINK_MINOR, 256_000, 256_000, 7),
    TRUSTED_MINOR: (UPLINK_MINOR, 1 * M, 10 * M, 4),
    LOCAL_MINOR: (UPLINK_MINOR, 1 * M, 10 * M, 1),  # uplink/10, under the uplink
}


def test_no_sessions_gives_only_the_fixed_classes() -> None:
    down, up = plan_trees(cfg(), [])
    assert (down.device, down.direction) == ("br-lan", "down")
    assert (up.device, up.direction) == ("wan0", "up")
    assert {m: shape(c) for m, c in down.by_minor().items()} == FIXED_DOWN
    assert {m: shape(c) for m, c in up.by_minor().items()} == FIXED_UP
    labels = {c.minor: c.label for c in down.classes}
    assert labels == {1: "uplink", 2: "unauthorized", 3: "local", 4: "trusted"}


@pytest.mark.parametrize(
    ("plan", "down", "up"),
    [
        # (parent, rate, ceil, prio): no ceil -> may borrow the whole uplink
        (None, (UPLINK_MINOR, 2 * M, 20 * M, 4), (UPLINK_MINOR, 1 * M, 10 * M, 4)),
        ("capped", (UPLINK_MINOR, 4 * M, 4 * M, 4), (UPLINK_MINOR, 2 * M, 2 * M, 4)),
        ("school", (UPLINK_MINOR, 4 * M, 20 * M, 2), (UPLINK_MINOR, 2 * M, 10 * M, 2)),
        ("kantor-desa", (UPLINK_MINOR, 3 * M, 10 * M, 4), (UPLINK_MINOR, 1 * M, 10 * M, 4)),
        # a plan that no longer exists in the config falls back to the default plan
        ("removed-plan", (UPLINK_MINOR, 2 * M, 20 * M, 4), (UPLINK_MINOR, 1 * M, 10 * M, 4)),
    ],
)
def test_client_class_per_plan(plan: str | None, down: tuple[Any, ...], up: tuple[Any, ...]) -> None:
    s = session(101, plan)
    d = client_class(cfg(), s, "down")
    u = client_class(cfg(), s, "up")
    assert d.minor == u.minor == 0x100 + 101
    assert d.label == u.label == "10.42.0.101"
    assert shape(d) == down
    assert shape(u) == up


def test_default_plan_ceilings_from_config() -> None:
    c = cfg(client_ceil_down="8mbit", client_ceil_up="3mbit")
    assert shape(client_class(c, session(7), "down")) == (UPLINK_MINOR, 2 * M, 8 * M, 4)
    assert shape(client_class(c, session(7), "up")) == (UPLINK_MINOR, 1 * M, 3 * M, 4)
    # trusted MACs share the default plan's rate, but may use the whole uplink
    down, _ = plan_trees(c, [])
    assert shape(down.by_minor()[TRUSTED_MINOR]) == (UPLINK_MINOR, 2 * M, 20 * M, 4)


@pytest.mark.parametrize(
    ("sessions", "client_minors"),
    [
        ([], []),
        ([session(101)], [0x165]),
        ([session(150, "school"), session(101), session(120, "capped")], [0x165, 0x178, 0x196]),
        # two sessions on one address (a stale row and a new one): one class only
        ([session(101), session(101, "school")], [0x165]),
    ],
)
def test_tree_has_one_class_per_client_address(sessions: list[Session],
                                               client_minors: list[int]) -> None:
    for tree in plan_trees(cfg(), sessions):
        minors = [c.minor for c in tree.classes]
        assert len(minors) == len(set(minors)), "duplicate class ids"
        assert sorted(m for m in minors if m >= CLIENT_BASE_MINOR) == client_minors
        assert all(c.parent_minor == UPLINK_MINOR for c in tree.classes if c.minor >= 0x100)


def test_tree_is_deterministic_whatever_the_session_order() -> None:
    a = [session(101), session(150, "school"), session(120, "capped")]
    assert plan_trees(cfg(), a) == plan_trees(cfg(), list(reversed(a)))


def test_lan_and_wan_trees_differ_only_where_they_should() -> None:
    down = plan_device(cfg(), [session(101, "school")], "down").by_minor()
    up = plan_device(cfg(), [session(101, "school")], "up").by_minor()
    assert set(down) == set(up)
    # the gateway's own LAN traffic is outside the uplink on the LAN, inside it on the WAN
    assert down[LOCAL_MINOR].parent_minor is None
    assert up[LOCAL_MINOR].parent_minor == UPLINK_MINOR
    # every other class hangs under the uplink class on both devices
    for m in (UNAUTHORIZED_MINOR, TRUSTED_MINOR, 0x165):
        assert down[m].parent_minor == up[m].parent_minor == UPLINK_MINOR


@pytest.mark.parametrize(
    ("uplink_up", "unauth_up", "local"),
    [
        ("10mbit", "256kbit", (1 * M, 10 * M)),  # a tenth of the uplink
        ("1mbit", "256kbit", (256_000, 1 * M)),  # never below the unauthorized class
        ("2mbit", "2mbit", (2 * M, 2 * M)),  # and never above the uplink
    ],
)
def test_local_upload_class_rate(uplink_up: str, unauth_up: str, local: tuple[int, int]) -> None:
    c = cfg(uplink_up=uplink_up, unauthorized_up=unauth_up, client_up="128kbit", plans={})
    cls = plan_device(c, [], "up").by_minor()[LOCAL_MINOR]
    assert (cls.rate, cls.ceil) == local


def test_lan_rate_is_configurable() -> None:
    down = plan_device(cfg(lan_rate="100mbit"), [], "down").by_minor()
    assert shape(down[LOCAL_MINOR]) == (None, 100 * M, 100 * M, 0)


def test_session_outside_the_lan_is_refused() -> None:
    with pytest.raises(ValueError, match="not in the LAN"):
        plan_trees(cfg(), [session(5, net="10.43.0")])


# -- quantum and leaf length bounds ----------------------------------------------------------


def _cls(rate: int, ceil: int | None = None) -> HtbClass:
    return HtbClass(0x165, UPLINK_MINOR, rate, ceil or rate, 4, "x")


@pytest.mark.parametrize(
    ("rate", "quantum"),
    [
        (8_000, MTU),  # slow classes still send a whole frame per round
        (121_120, MTU),  # exactly one MTU per round
        (2 * M, 25_000),  # rate / 80: proportional, so sharing follows the rate
        (4 * M, 50_000),
        (16 * M, 200_000),  # the clamp starts here
        (1000 * M, 200_000),
    ],
)
def test_quantum_follows_rate_within_bounds(rate: int, quantum: int) -> None:
    assert _cls(rate).quantum == quantum


def test_quantum_ratio_matches_rate_ratio_for_plans() -> None:
    c = cfg()
    default = client_class(c, session(101), "down")
    school = client_class(c, session(102, "school"), "down")
    assert school.quantum == 2 * default.quantum


@pytest.mark.parametrize(
    ("ceil", "limit"),
    [
        (64_000, 16),  # floor
        (1 * M, 16),
        (20 * M, 165),  # ~100 ms at 20 Mbit/s
        (100 * M, 825),
        (1000 * M, 1000),  # ceiling
    ],
)
def test_fifo_fallback_length_bounds(ceil: int, limit: int) -> None:
    assert leaf_limit_packets(_cls(min(ceil, 64_000), ceil)) == limit


# -- diff -------------------------------------------------------------------------------------


def tree(*sessions: Session, c: Any = None) -> DeviceTree:
    return plan_device(c or cfg(), sessions, "down")


def ops_of(desired: DeviceTree, observed: dict[int, HtbClass]) -> list[tuple[str, int]]:
    return [(op.action, op.cls.minor) for op in diff_classes(desired, observed)]


def _relabel(classes: dict[int, HtbClass]) -> dict[int, HtbClass]:
    # the kernel does not store labels: observed classes have an empty one
    return {m: HtbClass(c.minor, c.parent_minor, c.rate, c.ceil, c.prio, "") for m, c in classes.items()}


def test_diff_empty_to_full_adds_parents_first() -> None:
    desired = tree(session(101), session(102, "school"))
    ops = diff_classes(desired, {})
    assert all(op.action == "add" for op in ops)
    assert sorted(op.cls.minor for op in ops) == sorted(desired.by_minor())
    order = [op.cls.minor for op in ops]
    roots = [i for i, op in enumerate(ops) if op.cls.parent_minor is None]
    assert max(roots) < min(i for i, op in enumerate(ops) if op.cls.parent_minor is not None)
    for i, op in enumerate(ops):
        if op.cls.parent_minor is not None:
            assert op.cls.parent_minor in order[:i], f"1:{op.cls.minor:x} added before its parent"


def test_diff_identical_is_no_ops() -> None:
    desired = tree(session(101), session(102, "school"))
    assert diff_classes(desired, _relabel(desired.by_minor())) == []


def test_diff_extra_class_is_deleted() -> None:
    observed = _relabel(tree(session(101), session(102)).by_minor())
    assert ops_of(tree(session(101)), observed) == [("delete", 0x166)]


def test_diff_new_client_is_one_add() -> None:
    observed = _relabel(tree(session(101)).by_minor())
    assert ops_of(tree(session(101), session(102, "capped")), observed) == [("add", 0x166)]


@pytest.mark.parametrize(
    ("before", "after"),
    [(None, "school"), ("school", "capped"), ("capped", None), (None, "kantor-desa")],
)
def test_diff_changed_plan_is_a_change_in_place(before: str | None, after: str | None) -> None:
    observed = _relabel(tree(session(101, before)).by_minor())
    ops = diff_classes(tree(session(101, after)), observed)
    assert [(op.action, op.cls.minor) for op in ops] == [("change", 0x165)]
    assert ops[0].cls == client_class(cfg(), session(101, after), "down")


def test_diff_changed_uplink_changes_every_class_that_depends_on_it() -> None:
    observed = _relabel(tree(session(101), session(102, "capped")).by_minor())
    ops = ops_of(tree(session(101), session(102, "capped"), c=cfg(uplink_down="15mbit")), observed)
    # uplink (rate+ceil), trusted (ceil), default client (ceil); capped and unauthorized stay
    assert sorted(ops) == [("change", UPLINK_MINOR), ("change", TRUSTED_MINOR), ("change", 0x165)]


def test_diff_parent_changed_is_delete_then_add() -> None:
    desired = tree(session(101))
    observed = _relabel(desired.by_minor())
    old = observed[0x165]
    observed[0x165] = HtbClass(old.minor, LOCAL_MINOR, old.rate, old.ceil, old.prio, "")
    assert ops_of(desired, observed) == [("delete", 0x165), ("add", 0x165)]


def test_diff_deletes_children_before_parents() -> None:
    # observed: a stray tree of some other layout, with a root we do not want
    observed = {
        0x10: HtbClass(0x10, None, 5 * M, 5 * M, 0, ""),
        0x11: HtbClass(0x11, 0x10, 1 * M, 5 * M, 0, ""),
        0x12: HtbClass(0x12, 0x10, 1 * M, 5 * M, 0, ""),
    }
    ops = ops_of(tree(), observed)
    deletes = [m for action, m in ops if action == "delete"]
    assert sorted(deletes) == [0x10, 0x11, 0x12]
    assert deletes.index(0x10) == 2, f"parent deleted before its children: {ops}"
    assert ops[:3] == [("delete", 0x11), ("delete", 0x12), ("delete", 0x10)]
    assert sorted(m for action, m in ops if action == "add") == sorted(tree().by_minor())


def test_diff_all_deletes_come_before_any_add() -> None:
    observed = _relabel(tree(session(101), session(103)).by_minor())
    observed[0x165] = HtbClass(0x165, LOCAL_MINOR, 1, 1, 0, "")
    ops = ops_of(tree(session(101), session(102)), observed)
    actions = [a for a, _ in ops]
    assert actions == sorted(actions, key=lambda a: a != "delete")
    assert ("delete", 0x167) in ops and ("add", 0x166) in ops and ("add", 0x165) in ops


def test_diff_ignores_labels() -> None:
    desired = tree(session(101))
    observed = {m: HtbClass(c.minor, c.parent_minor, c.rate, c.ceil, c.prio, "whatever")
                for m, c in desired.by_minor().items()}
    assert diff_classes(desired, observed) == []


def test_diff_of_a_large_village_is_linear_and_minimal() -> None:
    c = make_config(network={"lan_address": "10.42.0.1/20"}, shaping=SHAPING,
                    dhcp={"range_start": "10.42.0.100", "range_end": "10.42.15.200"})
    many = [Session(f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}", f"10.42.{i // 250}.{i % 250 + 2}",
                    NOW, NOW + 600, 1800, "terms") for i in range(2000)]
    full = plan_device(c, many, "down")
    assert len(full.classes) == 2000 + 4
    observed = _relabel(full.by_minor())
    one_less = plan_device(c, many[:-1], "down")
    assert [(op.action, op.cls.label) for op in diff_classes(one_less, observed)] == [("delete", "")]
