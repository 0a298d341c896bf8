"""With PPPoE, IP leaves through pppd's ppp0, not the WAN port: NAT, the WAN's input
rules and the MSS clamp are on ppp0; with DHCP nothing mentions ppp0 (the control)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from gateway.config.schema import Config
from gateway.firewall.planner import plan_ruleset
from gateway.model import Session
from tests.unit.conftest import make_config

NOW = 1_700_000_000
A = Session("02:00:00:00:00:01", "10.42.0.101", NOW - 60, NOW + 600, 1800, "terms")
PPPOE = {"wan_address": "pppoe", "pppoe_username": "desa@isp"}


def chain(script: str, name: str) -> str:
    match = re.search(rf"  chain {name} \{{\n(.*?)\n  \}}", script, re.S)
    assert match, f"chain {name} missing"
    return match.group(1)


def test_pppoe_puts_nat_input_and_mss_clamp_on_ppp0() -> None:
    cfg = make_config(network=PPPOE, shaping={"enabled": True})
    assert (cfg.network.wan_interface, cfg.network.uplink_interface) == ("wan0", "ppp0")
    script = plan_ruleset(cfg, [A], NOW)
    assert 'oifname "ppp0" meta nfproto ipv4 masquerade' in chain(script, "nat_postrouting")
    assert 'iifname "ppp0" jump wan_input' in chain(script, "filter_input")
    forward = chain(script, "filter_forward")
    assert 'oifname "ppp0" tcp flags syn tcp option maxseg size set rt mtu' in forward
    # The gateway's own traffic is classed on the port (where the shaper is) and on ppp0.
    assert re.search(r'oifname \{ "br-lan", "wan0", "ppp0" \} meta priority set',
                     chain(script, "filter_output"))


def test_dhcp_uses_the_port_and_no_clamp() -> None:
    cfg = make_config()
    assert cfg.network.uplink_interface == "wan0"
    script = plan_ruleset(cfg, [A], NOW)
    assert 'oifname "wan0" meta nfproto ipv4 masquerade' in script
    assert "ppp0" not in script and "maxseg" not in script


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare"),
                    reason="needs root and nft to ask the kernel")
@pytest.mark.parametrize("network", [PPPOE, {}], ids=["pppoe", "dhcp"])
def test_the_kernel_accepts_the_ruleset(network: dict[str, str]) -> None:
    cfg: Config = make_config(network=network, shaping={"enabled": True})
    # A throwaway network namespace: `nft -c` parses and checks against the kernel only.
    proc = subprocess.run(["unshare", "--net", "nft", "-c", "-f", "-"], capture_output=True,
                          text=True, input=plan_ruleset(cfg, [A], NOW), check=False)
    assert proc.returncode == 0, proc.stderr
