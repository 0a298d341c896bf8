"""The `desanet` command against a real lab: `lab exec` argument order, `clients auth --force`,
dates and ISO times from the daemon's own zone (root, netns, the real daemon)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from desanet_lab import LabInfo, LabSpec
from desanet_lab import plan as p
from gateway.timefmt import iso
from tests.integration.conftest import (
    LAB_TOOLS,
    PORTAL,
    LabFactory,
    desanet,
    desanet_argv,
    desanet_json,
    http,
    require_root,
    require_tools,
    unique_prefix,
    wait_until,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS)]

PREFIX = unique_prefix("cl")
ZONE = "Asia/Makassar"


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    return make_lab(LabSpec(prefix=PREFIX, clients=2, extra={"site": {"timezone": ZONE}}))


def lab_exec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*desanet_argv(), "lab", "exec", *args], capture_output=True, text=True,
                          timeout=20, check=False)


@pytest.mark.parametrize("argv", [
    ["--prefix", PREFIX, "c1", "--", "ip", "netns", "identify"],
    ["c1", "--prefix", PREFIX, "--", "ip", "netns", "identify"],
])
def test_lab_exec_takes_the_prefix_on_either_side(lab: LabInfo, argv: list[str]) -> None:
    done = lab_exec(*argv)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{PREFIX}-c1"


def test_auth_refuses_to_replace_a_voucher_session_without_force(lab: LabInfo) -> None:
    sock, mac, c2 = lab.control_socket, p.client_mac(2), lab.client(2).name
    code = desanet_json(sock, "vouchers", "create", "--duration", "2h")["vouchers"][0]["code"]
    assert http(c2, f"{PORTAL}/login", form={"action": "voucher", "voucher": code}).status == 303

    def row() -> dict[str, object]:
        found = next(c for c in desanet_json(sock, "clients")["clients"] if c["mac"] == mac)
        # The session itself, not its counters (time left, idle time, shaping stats).
        return {k: found[k] for k in ("ip", "started", "expires", "source", "voucher", "plan")}

    before = row()
    refused = desanet(sock, "clients", "auth", mac, "--duration", "10m")
    assert refused.rc == 1, refused.stdout
    assert code in refused.stderr and "--force" in refused.stderr
    assert row() == before  # the voucher session stays as it was

    forced = desanet(sock, "clients", "auth", mac, "--duration", "10m", "--force", "--json")
    assert forced.rc == 0, forced.stderr
    client = forced.json["client"]
    assert (client["source"], client["voucher"]) == ("manual", None)
    # JSON keeps the epoch and adds ISO 8601 in the site's zone, as the daemon says it is.
    assert client["expires_iso"] == iso(client["expires"], ZONE)
    assert client["expires_iso"].endswith("+08:00")
    assert row()["source"] == "manual"


def test_shaping_names_the_client_by_mac_and_ip(lab: LabInfo) -> None:
    sock, mac = lab.control_socket, p.client_mac(1)
    desanet_json(sock, "clients", "auth", mac, "--force")
    ip = next(c["ip"] for c in desanet_json(sock, "clients")["clients"] if c["mac"] == mac)

    def named() -> bool:  # the class shows once the reconcile timer has sampled it
        out = desanet(sock, "shaping")
        assert out.rc == 0, out.stderr
        return any(f"{mac} {ip}" in line for line in out.stdout.splitlines())

    wait_until(named, 30, "desanet shaping to name the client's class by MAC and IP",
               interval=0.5)


def test_cannot_reach_lists_this_lab(lab: LabInfo, tmp_path: Path) -> None:
    res = desanet(str(tmp_path / "none.sock"), "status")
    assert res.rc == 1
    assert "cannot reach the daemon" in res.stderr
    assert f"desanet --socket {lab.control_socket} status" in res.stderr
