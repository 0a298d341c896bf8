"""Config that would open the portal or break the gateway, refused by the real daemon.

Step 6 (issue #9): a garden of 0.0.0.0/0, a garden prefix covering the LAN, a
broadcast trusted MAC, a session of 99999999999 days, a rate of 9999999999999gbit
and ``lan_address = 12345`` are each refused, with the field path, by
`desanet config check`, by the daemon's apply (the control API, bypassing the
CLI's own check) and by `desanet reload` of the file; the running config, the
firewall sets and who reaches the internet stay as they were. Positive controls
beside them: a sane change applies, and the unauthorized client was captive and
the authorized one online all along. A moved control socket is "needs restart",
not "reloaded".

One lab for the module; each test leaves the original config file and version.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from desanet_lab import LabInfo, LabSpec
from desanet_lab import plan as p
from desanet_lab.labconfig import deep_merge
from gateway.control.client import ControlClient
from gateway.errors import ControlError
from tests.integration.conftest import (
    LAB_TOOLS,
    LabFactory,
    desanet,
    desanet_json,
    desanet_ok,
    gateway_pid,
    has_internet,
    http,
    in_namespace,
    login_terms,
    require_root,
    require_tools,
    unique_prefix,
    wait_until,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS)]

PREFIX = unique_prefix("hc")
LAN_NET = str(ipaddress.IPv4Interface(p.LAN_ADDRESS).network)

# (what is changed, the field path the refusal must name)
HOSTILE: list[tuple[dict[str, Any], str]] = [
    ({"walled_garden": {"addresses": ["0.0.0.0/0"]}}, "walled_garden.addresses[0]"),
    ({"walled_garden": {"addresses": [LAN_NET]}}, "walled_garden.addresses[0]"),
    ({"access": {"trusted_macs": ["ff:ff:ff:ff:ff:ff"]}}, "access.trusted_macs[0]"),
    ({"portal": {"session_length": "99999999999d"}}, "portal.session_length"),
    ({"shaping": {"uplink_down": "9999999999999gbit"}}, "shaping.uplink_down"),
    ({"network": {"lan_address": 12345}}, "network.lan_address"),
]
IDS = ["garden-0/0", "garden-lan", "trusted-broadcast", "session-forever", "rate-huge",
       "lan-int"]


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    """c1 logs in (terms) and keeps internet throughout; c2 stays at the portal."""
    info = make_lab(LabSpec(prefix=PREFIX, clients=2))
    r = login_terms(info.client(1).name)
    assert r.status in (302, 303), f"terms login of c1 answered {r.status} {r.error}"
    wait_until(lambda: has_internet(info.client(1).name), 10, "c1 online after the terms login")
    return info


@pytest.fixture(scope="module")
def original(lab: LabInfo) -> tuple[str, str]:
    """(the config file's text, the running version) as the lab started."""
    return Path(lab.config_path).read_text(encoding="utf-8"), version(lab)


@pytest.fixture(autouse=True)
def restored(lab: LabInfo, original: tuple[str, str]) -> Iterator[None]:
    yield
    text, ver = original
    if Path(lab.config_path).read_text(encoding="utf-8") != text or version(lab) != ver:
        Path(lab.config_path).write_text(text, encoding="utf-8")
        desanet_ok(lab.control_socket, "reload")
    assert version(lab) == ver, "could not restore the original config"


# -- helpers -----------------------------------------------------------------------------------


def version(lab: LabInfo) -> str:
    return str(desanet_json(lab.control_socket, "status")["config"]["version"])


def variant(text: str, changes: dict[str, Any]) -> str:
    return tomli_w.dumps(deep_merge(tomllib.loads(text), changes))


def nft_set(lab: LabInfo, name: str) -> str:
    from gateway.firewall.planner import FAMILY, TABLE

    return in_namespace(lab.gw, "nft", "list", "set", FAMILY, TABLE, name)


def captive(lab: LabInfo) -> bool:
    """c2 (never logged in) is sent to the portal and reaches nothing on the internet
    by address (judged by the lab's internet server answering, or not)."""
    c2 = lab.client(2).name
    redirected = http(c2, f"http://{p.INTERNET_HOST}/").redirected_to_portal()
    return redirected and not has_internet(c2, by_address=True)


def assert_unchanged(lab: LabInfo, ver: str) -> None:
    assert version(lab) == ver, "the running config changed"
    assert "0.0.0.0" not in nft_set(lab, "garden4"), nft_set(lab, "garden4")
    assert "ff:ff:ff:ff:ff:ff" not in nft_set(lab, "trusted_mac")
    assert captive(lab), "c2 is no longer captive"
    assert has_internet(lab.client(1).name, retry=True), "c1 lost internet"


# -- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "path"), HOSTILE, ids=IDS)
def test_hostile_value_is_refused_by_check_apply_and_reload(
        lab: LabInfo, original: tuple[str, str], tmp_path: Path,
        changes: dict[str, Any], path: str) -> None:
    text, ver = original
    assert captive(lab) and has_internet(lab.client(1).name, retry=True), "the lab was not as expected"
    hostile = variant(text, changes)
    candidate = tmp_path / "hostile.toml"
    candidate.write_text(hostile, encoding="utf-8")

    # `desanet config check`: exit 2, the field path among the problems
    res = desanet(lab.control_socket, "config", "check", str(candidate))
    assert res.rc == 2 and path in res.stderr, res.describe()

    # the daemon's own check (the CLI's is bypassed): invalid, with the path
    with pytest.raises(ControlError) as info:
        ControlClient(lab.control_socket).config_apply(hostile, None, "hostile-test")
    assert info.value.kind == "invalid" and path in str(info.value), info.value

    # reload of the edited file: refused (exit 1), the running config stays
    Path(lab.config_path).write_text(hostile, encoding="utf-8")
    res = desanet(lab.control_socket, "reload")
    assert res.rc == 1 and path in res.stderr, res.describe()
    assert "reloaded:" not in res.stdout
    assert_unchanged(lab, ver)


def test_sighup_with_a_hostile_file_is_refused(lab: LabInfo, original: tuple[str, str]) -> None:
    """`systemctl reload` is SIGHUP: the same refusal, visible in `desanet status`."""
    text, ver = original
    started = time.time()
    Path(lab.config_path).write_text(variant(text, dict(HOSTILE[0][0])), encoding="utf-8")
    os.kill(gateway_pid(lab), signal.SIGHUP)

    def refusal() -> dict[str, Any] | None:
        found = desanet_json(lab.control_socket, "status")["config"]["last_refusal"]
        fresh = found and found["source"] == "sighup" and found["time"] >= int(started)
        return found if fresh else None

    found = wait_until(refusal, 15, "the SIGHUP reload to be refused")
    assert HOSTILE[0][1] in found["reason"], found
    assert_unchanged(lab, ver)


def test_a_sane_change_applies(lab: LabInfo, original: tuple[str, str]) -> None:
    """Positive control: the same path, with sane values, reloads and runs."""
    text, ver = original
    sane = variant(text, {
        "walled_garden": {"addresses": ["203.0.113.0/24"]},
        "access": {"trusted_macs": ["02:00:00:aa:bb:cc"]},
        "portal": {"session_length": "366d"},
        "shaping": {"uplink_down": "100mbit"},
    })
    Path(lab.config_path).write_text(sane, encoding="utf-8")
    res = desanet_ok(lab.control_socket, "reload")
    assert "reloaded: config" in res.stdout
    assert version(lab) != ver
    assert "203.0.113.0/24" in nft_set(lab, "garden4")
    assert "02:00:00:aa:bb:cc" in nft_set(lab, "trusted_mac")
    assert captive(lab) and has_internet(lab.client(1).name, retry=True)


def test_a_moved_control_socket_needs_restart(lab: LabInfo, original: tuple[str, str]) -> None:
    text, ver = original
    moved = variant(text, {"control": {"socket": lab.control_socket + ".moved"},
                           "portal": {"terms_id": "Aturan yang tidak boleh berlaku."}})
    Path(lab.config_path).write_text(moved, encoding="utf-8")
    res = desanet(lab.control_socket, "reload")
    assert res.rc == 1, res.describe()
    assert "not reloaded: needs restart: control.socket" in res.stderr, res.describe()
    assert "reloaded:" not in res.stdout
    # nothing of the edit runs (not even the terms), and the old socket still answers
    assert version(lab) == ver
    status = desanet_json(lab.control_socket, "status")["config"]
    assert "needs restart" in status["last_refusal"]["reason"], status
    assert not Path(lab.control_socket + ".moved").exists()
    # positive control: the edit without the moved socket reloads
    Path(lab.config_path).write_text(
        variant(text, {"portal": {"terms_id": "Aturan baru."}}), encoding="utf-8")
    assert "reloaded: config" in desanet_ok(lab.control_socket, "reload").stdout
    assert version(lab) != ver
