"""Pure planning of the virtual village: names, addresses, commands, config."""

from __future__ import annotations

import shutil
import subprocess
import tomllib

import pytest

from desanet_lab import labconfig, services
from desanet_lab import plan as p
from gateway.errors import LabError


def test_default_plan_names_and_macs() -> None:
    lab = p.plan_lab(p.LabSpec())
    assert lab.namespaces == ("dn-wan", "dn-gw", "dn-c1", "dn-c2")
    assert [c.mac for c in lab.clients] == ["02:d5:00:00:00:01", "02:d5:00:00:00:02"]
    assert [c.bridge_port for c in lab.clients] == ["lan-c1", "lan-c2"]
    assert str(lab.control_socket) == "/run/desanet-lab/dn/control.sock"
    assert str(lab.config_path) == "/run/desanet-lab/dn/gateway.toml"


@pytest.mark.parametrize(("k", "mac"), [(1, "02:d5:00:00:00:01"), (10, "02:d5:00:00:00:0a"),
                                        (255, "02:d5:00:00:00:ff")])
def test_client_mac_is_hex_of_index(k: int, mac: str) -> None:
    assert p.client_mac(k) == mac


@pytest.mark.parametrize("prefix", ["", "Dn", "1ab", "dn-x", "toolongpx", "a b"])
def test_bad_prefix_is_rejected_with_example(prefix: str) -> None:
    with pytest.raises(LabError, match=r"use e\.g\."):
        p.plan_lab(p.LabSpec(prefix=prefix))


@pytest.mark.parametrize("clients", [0, -1, p.MAX_CLIENTS + 1])
def test_bad_client_count_is_rejected(clients: int) -> None:
    with pytest.raises(LabError, match="client count"):
        p.plan_lab(p.LabSpec(clients=clients))


@pytest.mark.parametrize(("role", "ns"), [("gw", "x1-gw"), ("wan", "x1-wan"), ("c3", "x1-c3"),
                                          ("x1-c2", "x1-c2")])
def test_resolve_ns(role: str, ns: str) -> None:
    assert p.resolve_ns("x1", role) == ns


@pytest.mark.parametrize("role", ["c0", "client", "x2-gw", "c"])
def test_resolve_ns_rejects_unknown(role: str) -> None:
    with pytest.raises(LabError):
        p.resolve_ns("x1", role)


def test_prefix_ownership_is_exact() -> None:
    assert p.owns_namespace("dn", "dn-c1")
    assert not p.owns_namespace("dn", "dnx-c1")
    assert not p.owns_namespace("d", "dn-gw")


def test_topology_commands_never_touch_the_host_namespace() -> None:
    cmds = p.topology_commands(p.plan_lab(p.LabSpec(prefix="t1", clients=3)))
    adds = [c for c in cmds if c[:2] == ["netns", "add"]]
    assert [c[2] for c in adds] == ["t1-wan", "t1-gw", "t1-c1", "t1-c2", "t1-c3"]
    for cmd in cmds[len(adds):]:
        assert cmd[0] == "-n", cmd  # every other command names its namespace
    veths = [c for c in cmds if "veth" in c]
    assert len(veths) == 4
    for c in veths:  # the peer is created straight inside its namespace
        assert "netns" in c[c.index("peer"):]


def test_topology_addresses_routes_and_macs() -> None:
    cmds = [" ".join(c) for c in p.topology_commands(p.plan_lab(p.LabSpec(prefix="t1")))]
    expected = [
        "-n t1-gw addr add 100.64.0.2/30 dev wan0",
        "-n t1-gw -6 addr add 2001:db8:64::2/64 dev wan0 nodad",
        "-n t1-wan addr add 100.64.0.1/30 dev isp0",
        "-n t1-wan -6 addr add 2001:db8:64::1/64 dev isp0 nodad",
        "-n t1-gw route add default via 100.64.0.1 dev wan0",
        "-n t1-gw -6 route add default via 2001:db8:64::1 dev wan0",
        "-n t1-wan -4 addr add 198.51.100.53/32 dev lo",
        "-n t1-wan -4 addr add 198.51.100.99/32 dev lo",
        "-n t1-wan -6 addr add 2001:db8:100::10/128 dev lo",
        "-n t1-gw addr add 10.42.0.1/24 dev br-lan",
        "-n t1-gw link add lan-c2 type veth peer name eth0 address 02:d5:00:00:00:02 netns t1-c2",
        "-n t1-gw link set lan-c2 master br-lan",
        "-n t1-c2 link set eth0 up",
    ]
    for line in expected:
        assert line in cmds
    # The WAN namespace must have no route back to the LAN: only NAT works.
    assert not any("10.42.0.0/24" in c for c in cmds)


def test_lab_config_is_valid_and_uses_lab_paths() -> None:
    lab = p.plan_lab(p.LabSpec(prefix="t1"))
    text, config = labconfig.lab_config_text(lab, p.LabSpec(prefix="t1"))
    assert config.network.lan_interface == "br-lan"
    assert config.network.wan_interface == "wan0"
    assert [str(a) for a in config.dhcp.upstream_dns] == ["198.51.100.53"]
    assert config.dhcp.lease_time == 12 * 3600
    assert config.portal.mode == "both"
    assert config.walled_garden.hostnames == ["layanan.lab"]
    assert [str(n) for n in config.walled_garden.addresses] == ["192.0.2.0/24"]
    assert config.control.socket == "/run/desanet-lab/t1/control.sock"
    assert config.store.state_dir == "/run/desanet-lab/t1/state"
    assert config.store.run_dir == "/run/desanet-lab/t1/run"
    assert tomllib.loads(text)["site"]["name"] == "Hotspot Desa Lab"


def test_spec_fields_and_extra_are_merged() -> None:
    spec = p.LabSpec(prefix="t1", portal_mode="voucher", idle_timeout="20s",
                     extra={"shaping": {"enabled": True, "plans": {"gold": {
                         "down": "2mbit", "up": "1mbit"}}}, "portal": {"max_clients": 5}})
    _, config = labconfig.lab_config_text(p.plan_lab(spec), spec)
    assert config.portal.idle_timeout == 20
    assert config.portal.mode == "voucher"
    assert config.portal.max_clients == 5
    assert config.portal.hostname == "portal.desa"  # untouched keys survive the merge
    assert config.shaping.enabled
    assert config.shaping.plans["gold"].down == 2_000_000


def test_invalid_extra_reports_every_problem() -> None:
    spec = p.LabSpec(prefix="t1", idle_timeout="soon", extra={"portal": {"bogus": 1}})
    with pytest.raises(LabError) as err:
        labconfig.lab_config_text(p.plan_lab(spec), spec)
    assert "portal.idle_timeout" in str(err.value)
    assert "portal.bogus" in str(err.value)


def test_toml_writer_round_trips() -> None:
    data = {"a": {"s": 'q"uo\\te ü', "n": 3, "f": 1.5, "b": False, "l": ["x", "y"],
                  "sub": {"k": 1}, "odd key": "v"}}
    assert tomllib.loads(labconfig.dumps_toml(data)) == data


def test_toml_writer_refuses_unknown_types() -> None:
    with pytest.raises(TypeError):
        labconfig.dumps_toml({"a": object()})


def test_resolver_argv_answers_only_known_names() -> None:
    argv = services.resolver_argv("198.51.100.53", services.ISP_RECORDS, p.STATE_ROOT / "x.pid")
    assert "--address=/#/" in argv  # every other name is NXDOMAIN, not REFUSED
    assert "--host-record=internet.lab,198.51.100.10,2001:db8:100::10" in argv
    assert "--host-record=layanan.lab,198.51.100.20" in argv
    for host in p.CONNCHECK_HOSTS:
        assert f"--host-record={host},198.51.100.30" in argv
    assert services.OUTSIDE_RECORDS["internet.lab"] == ("198.51.100.99",)


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX sh to syntax-check with")
def test_udhcpc_script_is_valid_sh_and_never_writes_host_resolv_conf() -> None:
    script = p.udhcpc_script()
    assert subprocess.run(["sh", "-n"], input=script, text=True, timeout=10).returncode == 0
    assert "/etc/netns/$LAB_NS" in script
    assert "> /etc/resolv.conf" not in script


def test_silent_uplink_cut_drops_what_the_gateway_sends() -> None:
    from desanet_lab.uplink import CUT_TABLE, silent_cut_rules

    rules = silent_cut_rules()
    assert f"table inet {CUT_TABLE}" in rules
    assert 'iifname "isp0" drop' in rules and "hook prerouting" in rules


def test_uplink_cut_refuses_an_unknown_mode_before_touching_anything() -> None:
    from typing import Any, cast

    from desanet_lab.uplink import uplink_down
    from gateway.errors import LabError

    with pytest.raises(LabError, match="unknown uplink cut 'unplug'"):
        uplink_down("dn", cast(Any, "unplug"))
