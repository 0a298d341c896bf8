"""Downloads are activity (red team, Step 11): a phone that sends nothing while a UDP
stream flows to it stays online and its time of use grows; when the stream stops it is
idle and the daemon ends its session.

Real daemon, nftables, conntrack and namespaces. The client sends ONE datagram to a
sender in the lab's internet (the conntrack entry the stream comes back on) and then
only receives (udp_stream_agent.py); its own activity element in ``active4`` lapses
while it receives, which before the fix ended it as idle and stopped its time of use.
Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from desanet_lab import LabInfo, LabSpec
from desanet_lab import netns as nsa
from desanet_lab import plan as p
from tests.integration.conftest import (
    LAB_TOOLS,
    PORTAL,
    Http,
    LabFactory,
    desanet_json,
    ensure_gateway,
    has_internet,
    in_namespace,
    portal_post,
    require_root,
    require_tools,
    unique_prefix,
    wait_until,
)

try:
    from gateway.core.reconcile import SWEEP_INTERVAL
except ImportError:  # pragma: no cover
    SWEEP_INTERVAL = 5.0

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS)]

IDLE = 8  # s: portal.idle_timeout here (small: the test takes seconds)
# What the stored time of use may lag or lead the truth by: one sweep (it is written at
# each) and whole-second rounding, with a late sweep on a busy machine.
MARGIN = SWEEP_INTERVAL + 4
AGENT = Path(__file__).with_name("udp_stream_agent.py")
PLANS = {"jam": {"down": "2mbit", "up": "1mbit", "time_of_use": "1h"}}


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    return make_lab(LabSpec(prefix=unique_prefix("ac"), clients=1, idle_timeout=f"{IDLE}s",
                            extra={"shaping": {"plans": PLANS}}))


def voucher(sock: str, code: str) -> dict[str, Any]:
    found: dict[str, Any] = {v["code"]: v for v in
                             desanet_json(sock, "vouchers", "list")["vouchers"]}[code]
    return found


def used(sock: str, code: str) -> int:
    return int(voucher(sock, code)["used_seconds"])


def authorized(sock: str, mac: str) -> bool:
    rows = {c["mac"]: c for c in desanet_json(sock, "clients")["clients"]}
    return bool(rows.get(mac, {}).get("authorized"))


def in_active4(lab: LabInfo, mac: str) -> bool:
    """Is the client's own (upload) activity element in the kernel?"""
    return mac in in_namespace(lab.gw, "nft", "list", "set", "inet", "desanet", "active4")


def login_voucher(ns: str, code: str) -> Http:
    return portal_post(ns, f"{PORTAL}/login", {"action": "voucher", "voucher": code})


class Agent:
    """udp_stream_agent.py in a namespace; ``lines`` is what it printed so far."""

    def __init__(self, namespace: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [nsa.IP, "netns", "exec", namespace, sys.executable, str(AGENT), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)


@contextmanager
def stream_to(lab: LabInfo, client_ns: str, tmp_path: Path) -> Iterator[Path]:
    """A UDP stream from the lab's internet to the client, which sent one datagram; yields
    the file holding how many datagrams the client got. Stopped (both ends) on exit."""
    server = Agent(lab.wan, "serve", p.INTERNET_V4)
    client: Agent | None = None
    count = tmp_path / "received"
    try:
        line = wait_until(lambda: next((x for x in server.lines if x.startswith("port ")), ""),
                          10, "the sender's port")
        client = Agent(client_ns, "receive", p.INTERNET_V4, line.split()[1], str(count))
        wait_until(lambda: any(x.startswith("peer ") for x in server.lines), 10,
                   "the client's one datagram to reach the sender")
        yield count
    finally:
        server.stop()
        if client is not None:
            client.stop()


def received(count: Path) -> int:
    try:
        return int(count.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def test_a_stream_to_a_silent_client_does_not_hold_its_session(
        lab: LabInfo, tmp_path: Path) -> None:
    sock, c1, mac1 = lab.control_socket, lab.client(1).name, p.client_mac(1)
    ensure_gateway(lab)
    made = desanet_json(sock, "vouchers", "create", "--duration", "1h", "--plan", "jam")
    code: str = made["vouchers"][0]["code"]
    assert login_voucher(c1, code).status == 303 and has_internet(c1, retry=True)

    with stream_to(lab, c1, tmp_path) as count:
        wait_until(lambda: received(count) >= 20, 10, "the stream to reach the client")
        # The client sends nothing more. A phone that left is idle by its own silence even
        # with a stream still pushed to it (test_connections.py): the session ends idle ...
        wait_until(lambda: not authorized(sock, mac1), IDLE + 4 * SWEEP_INTERVAL,
                   "the silent client's session to end idle", interval=0.5)
        assert not in_active4(lab, mac1)
    log = Path(lab.state_dir, "gateway.log").read_text(errors="replace")
    assert f"session of {mac1} ({lab.client(1).ipv4}) ended: idle" in log
