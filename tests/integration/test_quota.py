"""Data quotas end to end in the virtual village (docs/quota.md): real nftables quota
objects and counters, real HTB classes, real TCP downloads (iperf3 -R) from the lab's
"internet" through the gateway.

What a client actually received is counted in its own namespace: an nft counter on
its input hook for packets from the internet address (IP bytes, the same measure as the
gateway's quota). c1 has a 5 MB "cut" voucher, c2 a 5 MB "slow" one, c3 a cut voucher
that lives through a kill -9 of the daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from desanet_lab import LabInfo, LabSpec, run_in
from desanet_lab import plan as p
from tests.integration.conftest import (
    LAB_TOOLS,
    PORTAL,
    LabFactory,
    desanet_json,
    http,
    in_namespace,
    portal_post,
    require_root,
    require_tools,
    start_gateway,
    stop_gateway,
    unique_prefix,
    wait_until,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS, "tc", "iperf3")]

PREFIX = unique_prefix("qt")
M = 1_000_000
QUOTA = 5 * 1024**2  # "5MB": the plans count in powers of 1024
# The kernel drops the packet that reaches a quota, so a client receives at most the
# quota; a GRO-merged packet in flight may add one such packet (docs/quota.md).
MARGIN = 64 * 1024
SHAPING: dict[str, Any] = {
    "enabled": True,
    "uplink_down": "40mbit", "uplink_up": "10mbit",
    "client_down": "2mbit", "client_up": "1mbit",
    "plans": {
        "kuota": {"down": "20mbit", "up": "5mbit", "ceil_down": "20mbit", "ceil_up": "5mbit",
                  "quota": "5MB"},
        "hemat": {"down": "20mbit", "up": "5mbit", "ceil_down": "20mbit", "ceil_up": "5mbit",
                  "quota": "5MB", "after_quota": "slow",
                  "fair_use_down": "1mbit", "fair_use_up": "256kbit"},
    },
}
INTERNET = p.INTERNET_V4
PORTS = (5301, 5302, 5303)


def ns(k: int | str) -> str:
    return f"{PREFIX}-{'c' + str(k) if isinstance(k, int) else k}"


# -- measuring -------------------------------------------------------------------------------------


def count_received(k: int) -> None:
    """An input counter in client k's namespace: IP bytes from the internet address."""
    script = ("table inet qtest {}\ndelete table inet qtest\ntable inet qtest {\n"
              "  counter rx { }\n  chain input {\n"
              "    type filter hook input priority filter; policy accept;\n"
              f"    ip saddr {INTERNET} counter name rx\n  }}\n}}\n")
    proc = run_in(ns(k), ["nft", "-f", "-"], input=script, timeout=10)
    assert proc.returncode == 0, proc.stderr


def received(k: int) -> int:
    data = json.loads(in_namespace(ns(k), "nft", "-j", "list", "counter", "inet", "qtest", "rx"))
    return int(next(i["counter"]["bytes"] for i in data["nftables"] if "counter" in i))


def download(k: int, port: int, seconds: int) -> subprocess.CompletedProcess[str]:
    """iperf3 -R for ``seconds``; a run cut off by the quota fails, which is fine here."""
    argv = ["ip", "netns", "exec", ns(k), "timeout", str(seconds + 15), "iperf3", "-c", INTERNET,
            "-p", str(port), "-R", "-t", str(seconds), "-J", "--connect-timeout", "3000"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)


def bps(run: subprocess.CompletedProcess[str]) -> float:
    data = json.loads(run.stdout)
    assert run.returncode == 0 and "error" not in data, data.get("error") or run.stderr
    return float(data["end"]["sum_received"]["bits_per_second"])


def voucher_row(lab: LabInfo, code: str) -> tuple[int, int, str]:
    db = Path(lab.state_dir) / "state" / "desanet.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = con.execute("SELECT bytes_down, bytes_up, quota_state FROM vouchers WHERE code=?",
                          (code,)).fetchone()
    finally:
        con.close()
    assert row is not None, code
    return int(row[0]), int(row[1]), str(row[2])


def kernel_quota_used(code: str) -> int:
    data = json.loads(in_namespace(ns("gw"), "nft", "-j", "list", "quotas", "table", "inet",
                                   "desanet"))
    name = "qt_" + code.encode().hex()
    return next(int(i["quota"]["used"]) for i in data["nftables"]
                if "quota" in i and i["quota"]["name"] == name)


def online(lab: LabInfo, k: int) -> bool:
    rows = desanet_json(lab.control_socket, "clients")["clients"]
    return any(r.get("mac") == p.client_mac(k) and r.get("authorized") for r in rows)


def voucher(lab: LabInfo, plan: str) -> str:
    made = desanet_json(lab.control_socket, "vouchers", "create", "--count", "1",
                        "--duration", "2h", "--plan", plan)
    return str(made["vouchers"][0]["code"])


def login(k: int, code: str) -> Any:
    return portal_post(ns(k), f"{PORTAL}/login", {"action": "voucher", "voucher": code})


# -- the lab ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> Iterator[LabInfo]:
    pidfiles: list[Path] = []
    info = make_lab(LabSpec(prefix=PREFIX, clients=3, extra={"shaping": SHAPING}))
    assert all(c.ipv4 for c in info.clients), f"DHCP failed: {info.clients}"
    try:
        for port in PORTS:
            pidfile = Path(info.state_dir) / f"iperf3-{port}.pid"
            proc = run_in(ns("wan"), ["iperf3", "-s", "-D", "-B", INTERNET, "-p", str(port),
                                      "-I", str(pidfile)], timeout=10)
            assert proc.returncode == 0, f"iperf3 server :{port}: {proc.stderr}"
            pidfiles.append(pidfile)
        wait_until(lambda: all(f.exists() and f.read_text().strip() for f in pidfiles), 5,
                   "the iperf3 servers to write their pid files", interval=0.05)
        yield info
    finally:
        for f in pidfiles:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(f.read_text().strip()), signal.SIGTERM)


# -- tests -----------------------------------------------------------------------------------------


def test_a_5mb_cut_voucher_gets_5mb_then_the_portal_says_why(lab: LabInfo) -> None:
    code = voucher(lab, "kuota")
    assert login(1, code).status == 303
    count_received(1)
    download(1, PORTS[0], 4)  # 20 Mbit/s for 4 s is ~10 MB: far past the quota
    got = received(1)
    print(f"[quota] cut: received {got} bytes of a {QUOTA} byte quota ({got - QUOTA:+d})")
    assert QUOTA - 512 * 1024 <= got <= QUOTA + MARGIN  # it reached the quota, not past it
    wait_until(lambda: voucher_row(lab, code)[2] == "cut", 10, "the voucher to be marked cut")
    wait_until(lambda: not online(lab, 1), 10, "the session to end")
    down, up = voucher_row(lab, code)[:2]
    assert QUOTA - 512 * 1024 <= down + up <= QUOTA  # counted as delivered, below the limit
    assert http(ns(1), "http://internet.lab/").redirected_to_portal()
    page = http(ns(1), f"{PORTAL}/")  # the portal (and its DNS) still answers, and says why
    assert page.status == 200 and "kuota data voucher ini sudah habis" in page.body.lower()
    again = login(1, code)
    assert again.status == 403 and "Kuota data voucher ini sudah habis" in again.body
    before = received(1)
    download(1, PORTS[0], 2)
    assert received(1) - before < 64 * 1024  # nothing flows any more


def test_a_5mb_slow_voucher_drops_to_its_fair_use_rate(lab: LabInfo) -> None:
    code = voucher(lab, "hemat")
    assert login(2, code).status == 303
    first = bps(download(2, PORTS[1], 4))  # uses up the quota at the plan's rate
    wait_until(lambda: voucher_row(lab, code)[2] == "slow", 10, "the voucher to be slowed")
    assert online(lab, 2)
    slowed = bps(download(2, PORTS[1], 4))
    print(f"[quota] slow: {first / M:.1f} Mbit/s within the quota, {slowed / M:.2f} after")
    assert first > 6 * M  # positive control: the plan's rate before the quota ran out
    assert 0 < slowed < 2.5 * M  # fair use is 1 Mbit/s: far below the plan's 20


def test_used_bytes_and_enforcement_hold_across_a_kill_9(lab: LabInfo) -> None:
    code = voucher(lab, "kuota")
    assert login(3, code).status == 303
    count_received(3)
    first = download(3, PORTS[2], 1)
    assert first.returncode == 0, first.stderr
    used = kernel_quota_used(code)
    assert 0 < used < QUOTA
    stop_gateway(lab, signal.SIGKILL)
    start_gateway(lab)
    assert kernel_quota_used(code) >= used  # the use was kept in the kernel, not reset
    assert online(lab, 3)
    download(3, PORTS[2], 4)
    got = received(3)
    print(f"[quota] kill -9: received {got} bytes of a {QUOTA} byte quota ({got - QUOTA:+d})")
    assert QUOTA - 512 * 1024 <= got <= QUOTA + MARGIN
    wait_until(lambda: voucher_row(lab, code)[2] == "cut", 10, "the voucher to be marked cut")
    down, up = voucher_row(lab, code)[:2]
    assert QUOTA - 512 * 1024 <= down + up <= QUOTA  # counted once across the crash
