"""Shaping end to end in the virtual village: real HTB trees, real nftables
classification, real TCP traffic (iperf3) between the lab's namespaces.

One lab for the module. Clients c1..c4 are authorized, c5 never is. iperf3
servers run in the WAN namespace on the "internet" address (one port per
concurrent flow) and on the walled-garden "government" address. Every
measurement is short (``-t 4 -O 1``: the first second, TCP slow start, is
left out) and read from iperf3's JSON (``end.sum_received``). Flows that must
last until a condition (a plan change confirmed, a stats sample taken) run
with a long ``-t`` and are interrupted once it holds (:meth:`Flow.interrupt`).

A CPU-starved iperf3 (the other xdist worker often runs QEMU) moves less than the
shaper allows, never more: a lower bound on goodput is met by the best of up to
three measurements (:func:`best_of`, :func:`retried`), while every measurement is
held to the caps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from desanet_lab import LabInfo, LabSpec, lab_status, run_in
from desanet_lab import plan as p
from tests.integration.conftest import (
    LAB_TOOLS,
    LabFactory,
    desanet,
    desanet_json,
    desanet_ok,
    in_namespace,
    require_root,
    require_tools,
    start_gateway,
    unique_prefix,
    wait_exit,
    wait_until,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS, "tc", "iperf3")]

PREFIX = unique_prefix("sp")
M = 1_000_000
UPLINK_DOWN, UPLINK_UP = 20 * M, 10 * M
SHAPING: dict[str, Any] = {
    "enabled": True,
    "uplink_down": "20mbit", "uplink_up": "10mbit",
    "client_down": "2mbit", "client_up": "1mbit",
    "unauthorized_down": "1mbit", "unauthorized_up": "256kbit",
    "plans": {
        "capped": {"down": "4mbit", "up": "2mbit", "ceil_down": "4mbit", "ceil_up": "2mbit"},
        "capped8": {"down": "8mbit", "up": "3mbit", "ceil_down": "8mbit", "ceil_up": "3mbit"},
        "school": {"down": "4mbit", "up": "2mbit"},
    },
}
RATES = {"capped": (4 * M, 2 * M), "capped8": (8 * M, 3 * M)}
AUTHORIZED = (1, 2, 3, 4)
UNAUTHORIZED = 5
FIXED_CLASSES = {"1:1", "1:2", "1:3", "1:4"}
INTERNET = p.INTERNET_V4
GARDEN = p.GOVERNMENT_V4
PORTS = (5201, 5202, 5203)
GARDEN_PORT = 5209
# dns: the walled garden opens TCP 80/443 only; the WAN sends the garden's 443 to iperf3
GARDEN_CLIENT_PORT = p.TLS_PORT


# -- helpers ---------------------------------------------------------------------------------------


def ns(k: int | str) -> str:
    return f"{PREFIX}-{'c' + str(k) if isinstance(k, int) else k}"


def set_plan(lab: LabInfo, k: int, plan: str) -> None:
    desanet_ok(lab.control_socket, "clients", "plan", p.client_mac(k), plan)


def gw(*argv: str) -> str:
    return in_namespace(ns("gw"), *argv)


def classes(dev: str) -> list[str]:
    """Class ids of the HTB classes on ``dev``, as the kernel lists them (duplicates kept)."""
    return re.findall(r"^class htb (\S+) ", gw("tc", "class", "show", "dev", dev), re.M)


def class_bytes(dev: str, cid: str) -> int:
    out = gw("tc", "-s", "class", "show", "dev", dev, "classid", cid)
    match = re.search(r"Sent (\d+) bytes", out)
    assert match, f"class {cid} not on {dev}: {out!r}"
    return int(match.group(1))


def client_cid(lab: LabInfo, k: int) -> str:
    ip = lab.client(k).ipv4
    assert ip is not None
    return f"1:{0x100 + int(ip.rsplit('.', 1)[1]):x}"


class Flow:
    """One iperf3 client run in a client namespace (-R: download)."""

    def __init__(self, k: int, port: int, download: bool, seconds: int = 4, omit: int = 1,
                 server: str = INTERNET) -> None:
        argv = ["iperf3", "-c", server, "-p", str(port), "-t", str(seconds), "-J"]
        argv += ["-O", str(omit)] if omit else []
        argv += ["-R"] if download else []
        self.what = f"c{k} {'down' if download else 'up'} :{port}"
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns(k), *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.seconds = seconds

    def result(self) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=self.seconds + 20)
        data = json.loads(out) if out.strip().startswith("{") else {}
        assert self.proc.returncode == 0 and "error" not in data, \
            f"iperf3 {self.what} failed ({self.proc.returncode}): {data.get('error') or err}"
        return data

    def bps(self) -> float:
        return float(self.result()["end"]["sum_received"]["bits_per_second"])

    def interrupt(self) -> dict[str, Any]:
        """Stop a flow started with a long ``-t`` once the test has what it waited for.

        Asserts the flow was still running (its connection survived until now);
        iperf3 answers SIGINT with its JSON so far, intervals included."""
        assert self.proc.poll() is None, f"iperf3 {self.what} ended early: {self.proc.communicate()}"
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=20)
        data = json.loads(out) if out.strip().startswith("{") else {}
        assert data.get("error", "").startswith("interrupt"), \
            f"iperf3 {self.what} failed ({self.proc.returncode}): {data.get('error') or err}"
        return data

    def stop(self) -> None:
        """Cleanup after a failed test: end the flow politely (the server is freed) and reap it."""
        if self.proc.poll() is not None:
            return  # finished (or already interrupted and reaped)
        self.proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.communicate(timeout=20)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def measure(*flows: Flow) -> list[float]:
    return [f.bps() for f in flows]


TRIES = 3  # measurements of a lower bound, at most (see best_of)


def best_of(flows: Callable[[], Sequence[Flow]], floors: Sequence[float]) -> list[list[float]]:
    """Per flow, its goodput in each round of measuring ``flows()`` together; a new round
    only while some flow has not yet reached its floor, at most TRIES rounds.

    A CPU-starved iperf3 (the other xdist worker runs QEMU) moves less than the shaper
    allows, never more: a lower bound holds when the best round meets it, while every
    round must stay under the caps (callers check the max)."""
    rounds: list[list[float]] = []
    while len(rounds) < TRIES:
        rounds.append(measure(*flows()))
        if all(max(r[i] for r in rounds) >= floor for i, floor in enumerate(floors)):
            break
    return [list(column) for column in zip(*rounds, strict=True)]


def retried(what: str, attempt: Callable[[], tuple[bool, str]]) -> list[str]:
    """Run ``attempt`` (a measurement: whether it met its bounds, and a description) until
    it does, at most TRIES times; fails listing every try. For two-sided checks of
    shares and ratios, where one starved flow among two can tip the balance either way."""
    tries: list[str] = []
    while len(tries) < TRIES:
        ok, text = attempt()
        tries.append(text)
        if ok:
            return tries
    raise AssertionError(f"{what} in none of {TRIES} tries: " + "; ".join(tries))


def mbit(x: float) -> str:
    return f"{x / M:.2f} Mbit/s"


FIGURES: dict[str, str] = {}  # printed at the end of the module (pytest -s), for docs/shaping.md


def record(name: str, text: str) -> None:
    FIGURES[name] = text
    print(f"[shaping] {name}: {text}")


# -- the lab ---------------------------------------------------------------------------------------


def _start_iperf_servers(lab: LabInfo) -> list[Path]:
    pidfiles = []
    for addr, port in [*((INTERNET, port) for port in PORTS), (GARDEN, GARDEN_PORT)]:
        pidfile = Path(lab.state_dir) / f"iperf3-{port}.pid"
        proc = run_in(ns("wan"), ["iperf3", "-s", "-D", "-B", addr, "-p", str(port),
                                  "-I", str(pidfile)], timeout=10)
        assert proc.returncode == 0, f"iperf3 server :{port}: {proc.stderr}"
        pidfiles.append(pidfile)
    wait_until(lambda: all(f.exists() and f.read_text().strip() for f in pidfiles), 5,
               "the iperf3 servers to write their pid files", interval=0.05)
    redirect = ("table ip shapinggarden {}\ndelete table ip shapinggarden\n"
                "table ip shapinggarden {\n  chain pre {\n"
                "    type nat hook prerouting priority dstnat; policy accept;\n"
                f"    ip daddr {GARDEN} tcp dport {GARDEN_CLIENT_PORT} dnat to {GARDEN}:{GARDEN_PORT}\n"
                "  }\n}\n")
    proc = run_in(ns("wan"), ["nft", "-f", "-"], input=redirect, timeout=10)
    assert proc.returncode == 0, f"garden redirect in the WAN: {proc.stderr}"
    return pidfiles


def _stop_iperf_servers(pidfiles: list[Path]) -> None:
    for f in pidfiles:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(f.read_text().strip()), signal.SIGTERM)


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> Any:
    started = time.monotonic()
    pidfiles: list[Path] = []
    try:
        info = make_lab(LabSpec(prefix=PREFIX, clients=5, extra={"shaping": SHAPING}))
        assert all(c.ipv4 for c in info.clients), f"DHCP failed: {info.clients}"
        for k in AUTHORIZED:
            desanet_ok(info.control_socket, "clients", "auth", p.client_mac(k))
        pidfiles = _start_iperf_servers(info)
        record("lab up", f"{time.monotonic() - started:.1f} s")
        yield info
    finally:
        _stop_iperf_servers(pidfiles)  # the lab itself goes down with make_lab
        for name, text in FIGURES.items():
            print(f"[shaping] {name}: {text}")


# -- (a) one client gets its configured rate ---------------------------------------------------------


def test_goodput_matches_the_plan_at_two_rates(lab: LabInfo) -> None:
    """capped (4/2 Mbit) on c1 and capped8 (8/3 Mbit) on c2, measured together:
    both fit in the uplink (12 of 20 down, 5 of 10 up), so neither disturbs
    the other and each is held to its own ceil."""
    set_plan(lab, 1, "capped")
    set_plan(lab, 2, "capped8")
    rates_down = [down for down, _ in RATES.values()]
    rates_up = [up for _, up in RATES.values()]
    down = best_of(lambda: (Flow(1, PORTS[0], True), Flow(2, PORTS[1], True)),
                   [0.85 * r for r in rates_down])
    up = best_of(lambda: (Flow(1, PORTS[0], False), Flow(2, PORTS[1], False)),
                 [0.85 * r for r in rates_up])
    problems = []
    for plan, got_down, got_up, rate_down, rate_up in zip(RATES, down, up, rates_down, rates_up,
                                                          strict=True):
        for what, got, rate in (("down", got_down, rate_down), ("up", got_up, rate_up)):
            shown = ", ".join(mbit(x) for x in got)
            record(f"{plan} {what}", f"{shown} of {mbit(rate)} ({max(got) / rate:.0%} at best)")
            # every round under the ceil (+5 %), the best one at 85 % of it at least
            if not 0.85 * rate <= max(got) <= 1.05 * rate:
                problems.append(f"{plan} {what}: {shown}, expected 85-105 % of {mbit(rate)}")
    assert not problems, "; ".join(problems)


# -- (b) fairness ----------------------------------------------------------------------------------


def test_two_clients_with_the_same_plan_share_fairly(lab: LabInfo) -> None:
    set_plan(lab, 1, "default")
    set_plan(lab, 2, "default")

    def attempt() -> tuple[bool, str]:
        a, b = measure(Flow(1, PORTS[0], True), Flow(2, PORTS[1], True))
        total = a + b
        # never more than the uplink, in any try
        assert total <= 1.05 * UPLINK_DOWN, f"{mbit(total)} is above the uplink: not shaped?"
        text = f"{mbit(a)} + {mbit(b)} = {mbit(total)} (shares {a / total:.0%} / {b / total:.0%})"
        return total >= 0.85 * UPLINK_DOWN and 0.40 <= a / total <= 0.60, text

    tries = retried("a saturated downlink shared 40-60 %", attempt)
    record("two default clients", tries[-1] + (f" ({len(tries)} tries)" if len(tries) > 1 else ""))


def test_a_plan_with_twice_the_rate_gets_twice_the_share(lab: LabInfo) -> None:
    set_plan(lab, 1, "school")  # 4 Mbit guaranteed vs the default plan's 2
    set_plan(lab, 2, "default")

    def attempt() -> tuple[bool, str]:
        # longer than the other measurements: the ratio of two TCP flows needs a few
        # seconds to settle after slow start, and measured over 6 s it still swung to
        # 2.64 once in CI (pfifo leaves: the default flow's queueing delay varies);
        # 10 s after 3 s of settling averages that out
        school, default = measure(Flow(1, PORTS[0], True, seconds=10, omit=3),
                                  Flow(2, PORTS[1], True, seconds=10, omit=3))
        total, ratio = school + default, school / default
        assert total <= 1.05 * UPLINK_DOWN, f"{mbit(total)} is above the uplink: not shaped?"
        text = f"{mbit(school)} vs {mbit(default)} (ratio {ratio:.2f})"
        return total >= 0.85 * UPLINK_DOWN and 1.6 <= ratio <= 2.5, text

    try:
        tries = retried("a saturated downlink shared school:default 1.6-2.5", attempt)
    finally:
        set_plan(lab, 1, "default")
    record("school vs default", tries[-1] + (f" ({len(tries)} tries)" if len(tries) > 1 else ""))


# -- (c) borrowing ---------------------------------------------------------------------------------


def test_a_single_active_client_borrows_the_whole_uplink(lab: LabInfo) -> None:
    set_plan(lab, 3, "default")  # 2 Mbit guaranteed, ceil = the uplink; c1, c2, c4 idle
    (got,) = best_of(lambda: (Flow(3, PORTS[2], True),), [0.85 * UPLINK_DOWN])
    shown = ", ".join(mbit(x) for x in got)
    record("single default client (borrowing)", f"{shown} of {mbit(UPLINK_DOWN)} uplink "
           f"({max(got) / UPLINK_DOWN:.0%} at best); plan rate 2 Mbit/s")
    assert max(got) >= 0.85 * UPLINK_DOWN, f"one client alone got only {shown}"
    assert max(got) <= 1.05 * UPLINK_DOWN, f"{shown}: above the uplink: not shaped?"


# -- (d) deauth ------------------------------------------------------------------------------------


def _map_text() -> str:
    return gw("nft", "list", "map", "inet", "desanet", "client_class")


def test_deauth_removes_the_class_and_the_map_entry(lab: LabInfo) -> None:
    ip, cid = lab.client(4).ipv4, client_cid(lab, 4)
    for dev in (p.LAN_INTERFACE, p.WAN_INTERFACE):
        assert cid in classes(dev), f"{cid} missing on {dev} before deauth"
    assert f"{ip} : {cid}" in _map_text()
    t0 = time.monotonic()
    proc = desanet(lab.control_socket, "clients", "deauth", p.client_mac(4))
    elapsed = time.monotonic() - t0
    problems = []
    if proc.returncode != 0:
        problems.append(f"`desanet clients deauth` exited {proc.returncode}: {proc.stderr.strip()}")
    for dev in (p.LAN_INTERFACE, p.WAN_INTERFACE):
        if cid in classes(dev):
            problems.append(f"{cid} still on {dev} after deauth")
        if re.search(rf"parent {cid}\b", gw("tc", "qdisc", "show", "dev", dev)):
            problems.append(f"leaf qdisc of {cid} left on {dev}")
    if f"{ip} " in _map_text():
        problems.append(f"{ip} still in the client_class map")
    assert not problems, "; ".join(problems)
    record("deauth (CLI round trip incl. process start)", f"{elapsed * 1000:.0f} ms")


# -- (e) restart -----------------------------------------------------------------------------------


class RootWatcher(threading.Thread):
    """Polls `tc qdisc show` on both devices; remembers any moment without our HTB root."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.samples = 0
        self.missing: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for dev in (p.LAN_INTERFACE, p.WAN_INTERFACE):
                out = run_in(ns("gw"), ["tc", "qdisc", "show", "dev", dev], timeout=5).stdout
                if not re.search(r"^qdisc htb 1: root", out, re.M):
                    self.missing.append(f"{dev}: {out.strip()!r}")
            self.samples += 1


def _restart_daemon(lab: LabInfo) -> float:
    pid = lab_status(PREFIX).gateway_pid
    assert pid, "the lab daemon is not running"
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    wait_exit(pid, 15)  # reaps it when the lab started it from this process
    start_gateway(lab)
    return time.monotonic() - t0


def _wait_flowing(cid: str, since: int, what: str, grown: int = 250_000, timeout: float = 10) -> int:
    """Wait until class ``cid`` on the LAN device counted ``grown`` bytes more than ``since``."""
    def grew() -> int:
        n = class_bytes(p.LAN_INTERFACE, cid)
        return n if n >= since + grown else 0

    return wait_until(grew, timeout, what, interval=0.05)


def _active_clients(lab: LabInfo) -> list[int]:
    rows = desanet_json(lab.control_socket, "clients")["clients"]
    macs = {c["mac"] for c in rows if c.get("authorized")}
    return [k for k in range(1, len(lab.clients) + 1) if p.client_mac(k) in macs]


def _restart_during_a_download(lab: LabInfo, expected: list[str], active: list[int]) -> tuple[bool, str]:
    """One daemon restart while c1 downloads (capped): asserts what must hold every time (no
    moment without the root, no duplicate or missing class, never above the ceil); whether
    the download kept flowing at a fair part of its rate, and what was seen."""
    cid, rate = client_cid(lab, 1), RATES["capped"][0]
    bytes_before = class_bytes(p.LAN_INTERFACE, cid)
    watcher = RootWatcher()
    flow = Flow(1, PORTS[0], True, seconds=8, omit=0)  # runs across the restart
    try:
        _wait_flowing(cid, bytes_before, "c1's download to flow before the restart")
        watcher.start()
        try:
            took = _restart_daemon(lab)
        finally:
            watcher.stop.set()
            watcher.join()
        data = flow.result()  # the connection survived: iperf3 finished without error
    finally:
        flow.stop()
    for dev in (p.LAN_INTERFACE, p.WAN_INTERFACE):
        after = classes(dev)
        assert len(after) == len(set(after)), f"duplicate classes on {dev}: {after}"
        # exactly the fixed classes plus one per active client, with the same ids as before
        assert sorted(after) == expected, f"{dev} after restart: {after}, expected {expected}"
    assert not watcher.missing, f"moments without the HTB root: {watcher.missing[:3]}"
    intervals = [i["sum"]["bits_per_second"] for i in data["intervals"]]
    shown = ", ".join(f"{x / M:.2f}" for x in intervals)
    # shaped all along: no interval above the plan's ceil (plus one second's jitter)
    assert max(intervals[1:]) <= 1.15 * rate, f"unshaped during restart: {shown} Mbit/s"
    status = desanet_json(lab.control_socket, "status")
    assert status["ready"] and status["sessions_active"] == len(active), status
    grew = class_bytes(p.LAN_INTERFACE, cid) - bytes_before
    # Not stalled: each interval after slow start above half the rate, and the class counted
    # most of 6 s at the rate. (A starved iperf3 can fall short; see retried.)
    flowing = min(intervals[1:]) > 0.5 * rate and grew >= 0.8 * rate / 8 * 6
    return flowing, (f"{took:.1f} s, {watcher.samples} root checks on each device, none missing; "
                     f"c1 intervals {shown} Mbit/s, class {cid} counted {grew} B")


def test_restart_reconciles_without_duplicates_or_unshaped_moments(lab: LabInfo) -> None:
    set_plan(lab, 1, "capped")
    active = _active_clients(lab)
    assert 1 in active
    expected = sorted(FIXED_CLASSES | {client_cid(lab, k) for k in active})
    for dev in (p.LAN_INTERFACE, p.WAN_INTERFACE):
        found = classes(dev)
        assert set(expected) <= set(found), f"{dev} before restart: {found}"
    tries = retried("c1's download flowing across a daemon restart",
                    lambda: _restart_during_a_download(lab, expected, active))
    record("daemon restart (SIGTERM -> ready)",
           tries[-1] + (f" ({len(tries)} tries)" if len(tries) > 1 else ""))


# -- (f) plan change -------------------------------------------------------------------------------


def _wait_class_rate(cid: str, rate: str) -> None:
    """Wait until the kernel shows class ``cid`` on the LAN device at ``rate`` (tc's spelling)."""
    def shows() -> bool:
        out = gw("tc", "class", "show", "dev", p.LAN_INTERFACE, "classid", cid)
        return f"rate {rate} ceil {rate}" in out

    wait_until(shows, 30, f"class {cid} to show rate {rate}", interval=0.05)


def test_plan_change_keeps_the_connection_and_changes_the_rate(lab: LabInfo) -> None:
    """One download across a plan change capped (4 Mbit) -> capped8 (8 Mbit).

    Under load the CLI alone can take seconds, so the windows are placed by
    conditions, not by a fixed time: "before" ends 2 s before the CLI was
    started, "after" begins 1 s (TCP ramp-up) after the kernel showed the new
    class. iperf3's start timestamp (whole seconds, taken at connect) is never
    later than the real start, so an interval placed after the change is truly
    after it. A busy CPU can hold a sender below its ceiling but never push it
    above: the caps are asserted from above, the change as a clear rise."""
    set_plan(lab, 1, "capped")
    cid = client_cid(lab, 1)
    _wait_class_rate(cid, "4Mbit")
    flow = Flow(1, PORTS[0], True, seconds=300, omit=0)  # ended below once the test has its data
    try:
        # >= 2.5 MB at <= 4.6 Mbit/s: the data has flowed >= 4 s, so >= 2 intervals lie before the change
        _wait_flowing(cid, class_bytes(p.LAN_INTERFACE, cid), "c1's download at the old plan",
                      grown=2_500_000, timeout=60)
        changed_at = time.time()
        t0 = time.monotonic()
        set_plan(lab, 1, "capped8")
        elapsed = time.monotonic() - t0
        _wait_class_rate(cid, "8Mbit")
        confirmed_at = time.time()
        # >= 8 MB at <= 9.2 Mbit/s: >= 7 s after the confirmation, >= 3 full intervals after the ramp
        _wait_flowing(cid, class_bytes(p.LAN_INTERFACE, cid), "c1's download at the new plan",
                      grown=8_000_000, timeout=90)
        data = flow.interrupt()  # still running: the TCP connection was kept across the change
    finally:
        flow.stop()
    began = float(data["start"]["timestamp"]["timesecs"])
    spans = [(began + i["sum"]["start"], began + i["sum"]["end"], i["sum"]["bits_per_second"])
             for i in data["intervals"] if i["sum"]["end"] - i["sum"]["start"] >= 0.9]
    shown = ", ".join(f"{x / M:.2f}" for _, _, x in spans)
    record("plan change capped -> capped8 during a download",
           f"intervals {shown} Mbit/s (CLI took {elapsed * 1000:.0f} ms, "
           f"kernel showed the new class {confirmed_at - changed_at:.1f} s after it started)")
    early = [x for _, end, x in spans if end <= changed_at - 2.0]
    late = [x for start, _, x in spans if start >= confirmed_at + 1.0]
    assert len(early) >= 2 and len(late) >= 3, f"too few intervals around the change: {shown}"
    assert all(x <= 1.15 * 4 * M for x in early), f"above the old cap before the change: {shown}"
    assert all(x <= 1.15 * 8 * M for x in late), f"above the new cap after the change: {shown}"
    assert all(x > 0 for x in late), f"the download stalled after the change: {shown}"
    # the old plan holds a flow to <= 4.6 Mbit/s: an average well above it is the new plan at work
    assert sum(late) / len(late) >= 1.4 * 4 * M, f"the rate did not rise with the new plan: {shown}"
    rows = desanet_json(lab.control_socket, "clients")["clients"]
    row = next(c for c in rows if c["mac"] == p.client_mac(1))
    assert row["plan"] == "capped8"
    assert (row["shaping"]["down"]["rate"], row["shaping"]["down"]["ceil"]) == (8 * M, 8 * M)
    assert (row["shaping"]["up"]["rate"], row["shaping"]["up"]["ceil"]) == (3 * M, 3 * M)
    set_plan(lab, 1, "default")


# -- (g) stats -------------------------------------------------------------------------------------


def _client_row(lab: LabInfo, k: int) -> dict[str, Any]:
    rows = desanet_json(lab.control_socket, "clients")["clients"]
    return next(c for c in rows if c["mac"] == p.client_mac(k))


def _kernel_leaf_kind() -> str:
    """The best leaf qdisc this kernel accepts, probed with the `tc` tool on a scratch device."""
    for kind in ("fq_codel", "cake"):
        proc = run_in(ns(UNAUTHORIZED), ["tc", "qdisc", "add", "dev", "lo", "root", "handle", "7:", kind],
                      timeout=5)
        if proc.returncode == 0:
            run_in(ns(UNAUTHORIZED), ["tc", "qdisc", "del", "dev", "lo", "root"], timeout=5)
            return kind
    return "pfifo"


def _sample_window(tree: dict[str, Any]) -> tuple[float, float] | None:
    """(start, end) wall-clock of the counters behind the down rates, when the daemon says."""
    down = tree.get("directions", {}).get("down", {})
    at, interval = down.get("sampled_at"), down.get("interval")
    if at is None or interval is None:
        return None
    return float(at) - float(interval), float(at)


def _stats_while_flowing(lab: LabInfo, k: int, cid: str, enough: Callable[[dict[str, Any]], bool],
                         short: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``desanet shaping --json``, client k's ``shaping`` row), both read from counters
    sampled while a download at the plan's rate was flowing.

    A row that is not ``enough`` (a starved iperf3 sent less than the plan allows) goes
    to ``short`` and is read again from a later sample, TRIES rows in all at most.

    With the reconcile loop's samples ("sampled_at"/"interval" per direction),
    waits for a sample whose whole interval lies inside the flow; a daemon
    without them samples on GET, so two reads with traffic in between. The
    download runs until then (a long ``-t``, ended here): a sampler slowed by a
    busy machine only makes the wait longer, within a generous deadline.
    """
    sock = lab.control_socket
    probe = desanet_json(sock, "shaping")
    down = probe.get("directions", {}).get("down", {})
    flow = Flow(k, PORTS[1], True, seconds=300, omit=0)
    try:
        if "sampled_at" not in down:  # a daemon whose GET /v1/shaping takes the sample itself
            flowing = _wait_flowing(cid, class_bytes(p.LAN_INTERFACE, cid), f"c{k}'s download to flow",
                                    timeout=60)
            desanet_json(sock, "shaping")  # takes a sample
            _wait_flowing(cid, flowing, "1 MB more of the download", grown=1_000_000, timeout=60)
            tree: dict[str, Any] = desanet_json(sock, "shaping")  # rates: averages between the two
            row = _client_row(lab, k)["shaping"]
            flow.interrupt()
            return tree, row

        interval = float(down.get("interval") or 5.0)
        read_at = 0.0  # when the last row that was not enough was read
        _wait_flowing(cid, class_bytes(p.LAN_INTERFACE, cid), f"c{k}'s download to flow past 1 MB",
                      grown=1_100_000, timeout=60)
        flowing_since = time.time()  # past slow start: the rate is steady from here on

        def sample_inside_flow() -> tuple[dict[str, Any], dict[str, Any]] | None:
            nonlocal read_at
            assert flow.proc.poll() is None, f"the download failed: {flow.proc.communicate()}"
            tree = desanet_json(sock, "shaping")
            window = _sample_window(tree)
            # inside the flow, and taken after the last row that fell short (if any): a new
            # measurement, not that one again
            if window is None or window[0] < flowing_since or window[1] <= read_at:
                return None
            # The row comes from this sample or a later one, which starts later still: inside
            # the flow too. (Demanding the very same sample never succeeded under load: three
            # CLI runs took longer than one sampling interval, so a new sample always came.)
            row = _client_row(lab, k)["shaping"]
            assert flow.proc.poll() is None, f"the download failed: {flow.proc.communicate()}"
            if not enough(row) and len(short) < TRIES - 1:
                short.append(row)
                read_at = time.time()
                return None
            return tree, row

        # generous: a starved sampler may skip a few rounds, TRIES samples may be needed; the
        # flow lasts longer than this wait
        got = wait_until(sample_inside_flow, 10 * interval + 60,
                         "a shaping sample taken entirely while the download was flowing", interval=0.2)
        flow.interrupt()  # the sample lies inside the flow: the flow was still running at its end
        return got
    finally:
        flow.stop()


def test_stats_in_clients_and_shaping_json(lab: LabInfo) -> None:
    set_plan(lab, 2, "capped")
    cid = client_cid(lab, 2)
    before = _client_row(lab, 2)["shaping"]
    assert before["class"] == cid and before["plan"] == "capped"
    bytes0 = (before["down"]["stats"] or {}).get("bytes", 0)
    rate = RATES["capped"][0]

    def rate_bps(row: dict[str, Any]) -> int:
        return int((row["down"]["stats"] or {}).get("rate_bps", 0))

    # The daemon's rate of a sampling interval inside the download: at most the ceil (+15 %),
    # never above; at least 70 % of it in one of up to TRIES samples (a starved sender).
    short: list[dict[str, Any]] = []
    tree, row = _stats_while_flowing(lab, 2, cid, lambda r: rate_bps(r) >= 0.7 * rate, short)
    stats = row["down"]["stats"]
    assert stats is not None, f"no stats for {cid}: {row}"
    assert stats["bytes"] > bytes0 + 1_000_000, f"bytes did not grow: {bytes0} -> {stats}"
    assert stats["packets"] > 0 and {"drops", "backlog", "overlimits", "rate_bps"} <= set(stats)
    rates = ", ".join(mbit(rate_bps(r)) for r in [*short, row])
    assert 0.7 * rate <= stats["rate_bps"] <= 1.15 * rate, f"rate_bps of each sample: {rates}"
    assert tree["enabled"] is True
    down = tree["directions"]["down"]
    assert down["device"] == p.LAN_INTERFACE
    assert down["classes"][cid]["rate_bps"] > 0
    assert {"uplink", "unauthorized", "local", "trusted"} <= set(down["classes"])
    assert tree["directions"]["up"]["device"] == p.WAN_INTERFACE
    record("stats", f"{cid} down {stats['bytes']} bytes, rate_bps {mbit(stats['rate_bps'])} "
           f"(plan 4 Mbit/s)")

    leaf = desanet_json(lab.control_socket, "status")["shaping"]["leaf_qdisc"]
    assert leaf in ("fq_codel", "cake", "pfifo")
    assert leaf == _kernel_leaf_kind(), f"status says {leaf}, the kernel accepts {_kernel_leaf_kind()}"
    qdiscs = gw("tc", "qdisc", "show", "dev", p.LAN_INTERFACE)
    assert re.search(rf"^qdisc {leaf} \S+ parent {cid}\b", qdiscs, re.M), qdiscs
    record("leaf qdisc", leaf)
    set_plan(lab, 2, "default")


# -- (h) unauthorized traffic ----------------------------------------------------------------------


def test_unauthorized_traffic_is_shaped_into_the_small_default_class(lab: LabInfo) -> None:
    k = UNAUTHORIZED
    before = class_bytes(p.LAN_INTERFACE, "1:2")
    proc = run_in(ns(k), ["curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                          f"http://{p.GOVERNMENT_HOST}/"], timeout=15)
    assert proc.returncode == 0, f"walled-garden fetch failed: {proc.stderr}"
    code, size = proc.stdout.split()
    assert code == "200", proc.stdout
    grew = class_bytes(p.LAN_INTERFACE, "1:2") - before
    assert grew >= int(size), f"1:2 grew by {grew} bytes, the page alone is {size}"
    # and a bulk download from the walled garden is held to unauthorized_down (1 Mbit)
    (got,) = best_of(lambda: (Flow(k, GARDEN_CLIENT_PORT, True, server=GARDEN),), [0.5 * M])
    shown = ", ".join(mbit(x) for x in got)
    record("unauthorized client, walled-garden download", f"{shown} (unauthorized_down 1 Mbit/s)")
    assert max(got) <= 1.05 * M, f"unauthorized traffic not held to its class: {shown}"
    assert max(got) >= 0.5 * M, f"the walled garden barely flows: {shown}"

