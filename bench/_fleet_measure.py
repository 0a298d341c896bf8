"""What bench/fleet_scale.py measures: the store's progress, memory and CPU, and the result.

The consumer's database is the ground truth: the ``messages`` table of `desanet
fleet serve` (gateway/fleet/store.py; bench/_fleet_standin.py writes the same
columns) holds one row per stored (site, session, seq), and ``gateways`` the
latest status per site. Rows get rowids in commit order, so polling the highest
rowid tells when each message became stored.
"""

from __future__ import annotations

import bisect
import contextlib
import sqlite3
import statistics
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from _fleet_sim import Fleet

POLL = 0.05  # seconds between polls of the highest rowid: the lag's resolution


class Poller(threading.Thread):
    """Polls the database: messages stored (highest rowid, with when it was first seen),
    gateways stored online and offline."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.stored = self.online = self.offline = 0
        self.times: list[float] = []
        self.rowids: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.db, timeout=30)
        tick = 0
        try:
            while not self._halt.wait(POLL):
                with contextlib.suppress(sqlite3.OperationalError):  # tables not made yet
                    top = conn.execute("SELECT max(rowid) FROM messages").fetchone()[0] or 0
                    if top > self.stored:
                        self.times.append(time.time())
                        self.rowids.append(top)
                        self.stored = top
                    if tick % 4 == 0:
                        on, off = conn.execute(
                            "SELECT count(*) FILTER (WHERE online = 1), "
                            "count(*) FILTER (WHERE online = 0) FROM gateways").fetchone()
                        self.online, self.offline = on, off
                tick += 1
        finally:
            conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def stored_at(self, rowid: int) -> float:
        """When the poll first saw ``rowid`` stored."""
        return self.times[bisect.bisect_left(self.rowids, rowid)]


class Sampler(threading.Thread):
    """Peak RSS per group of processes every 0.5 s; CPU seconds at named marks."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        super().__init__(daemon=True)
        self.procs = {g: [psutil.Process(pid) for pid in pids] for g, pids in groups.items()}
        self.peak = dict.fromkeys(groups, 0)
        self.marks: dict[str, tuple[float, dict[str, float]]] = {}
        self._halt = threading.Event()

    def _sample(self) -> None:
        for group, procs in self.procs.items():
            with contextlib.suppress(psutil.Error):
                self.peak[group] = max(self.peak[group], sum(p.memory_info().rss for p in procs))

    def run(self) -> None:
        while not self._halt.wait(0.5):
            self._sample()

    def mark(self, name: str) -> None:
        cpu = {}
        for group, procs in self.procs.items():
            total = 0.0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
            cpu[group] = total
        self.marks[name] = (time.monotonic(), cpu)
        self._sample()

    def cpu_percent(self, start: str, end: str) -> dict[str, float]:
        (t0, a), (t1, b) = self.marks[start], self.marks[end]
        return {g: 100 * (b[g] - a[g]) / max(t1 - t0, 1e-9) for g in a}

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(values)
    cut = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {"p50": cut[49], "p99": cut[98], "max": ordered[-1]}


def _ms(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 10 else f"{seconds * 1000:,.0f} ms"


def pct(q: dict[str, float]) -> str:
    return " / ".join(_ms(q[k]) for k in ("p50", "p99", "max"))


def analyse(db: Path, fleet: Fleet, marks: dict[str, Any], poller: Poller,
            sampler: Sampler) -> dict[str, Any]:
    """Compare what was published with what was stored; the figures of one run."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT rowid, site, session, seq, time, received FROM messages").fetchall()
        wills = conn.execute("SELECT count(*) FROM gateways WHERE online = 0").fetchone()[0]
    finally:
        conn.close()
    # when each message was handed to paho, exactly (a batched report's "time" is whole seconds)
    sent = {(link.gw.site, link.gw.session, seq): at
            for link in fleet.links for seq, at in enumerate(link.gw.sent, 1)}
    published = set(sent)
    stored = {(site, session, seq) for _, site, session, seq, _, _ in rows}
    boundary: dict[str, int] = marks["boundary"]
    lag: dict[str, list[float]] = {"steady": [], "burst": []}
    receipt: dict[str, list[float]] = {"steady": [], "burst": []}
    last = {"steady": 0.0, "burst": 0.0}
    for rowid, site, session, seq, _, received in rows:
        made = sent.get((site, session, seq))
        if made is None:
            continue  # not published: counted as unexpected below
        phase = "steady" if seq <= boundary.get(site, 0) else "burst"
        at = poller.stored_at(rowid)
        lag[phase].append(at - made)
        receipt[phase].append(received - made)
        last[phase] = max(last[phase], at)
    steady_n, burst_n = len(lag["steady"]), len(lag["burst"])
    mb = 1024 * 1024
    return {
        "published": len(published), "stored": len(rows), "distinct": len(stored),
        "loss": len(published - stored), "unexpected": len(stored - published),
        "duplicates": len(rows) - len(stored),
        "ramp_s": marks["ramp_s"], "all_online_s": marks["all_online_s"],
        "steady_messages": steady_n,
        "steady_offered_rate": marks["steady_sent"] / (marks["steady_end"] - marks["steady_start"]),
        "steady_rate": steady_n / max(last["steady"] - marks["steady_start"], 1e-9),
        "steady_lag": quantiles(lag["steady"]), "steady_receipt_lag": quantiles(receipt["steady"]),
        "burst_messages": burst_n, "burst_publishes": marks.get("burst_publishes"),
        # PUBLISHes (a batch is one) the broker acknowledged a second during the burst
        "burst_acked_rate": (marks.get("burst_publishes") or burst_n)
        / max(marks["burst_acked"] - marks["burst_start"], 1e-9),
        "burst_stored_rate": burst_n / max(last["burst"] - marks["burst_start"], 1e-9),
        "burst_lag": quantiles(lag["burst"]), "burst_receipt_lag": quantiles(receipt["burst"]),
        "wills": wills, "wills_s": marks["wills_s"],
        "lost_connections": marks["lost_connections"], "connect_retries": marks["connect_retries"],
        "rss_mb": {g: v / mb for g, v in sampler.peak.items()},
        "cpu_burst": sampler.cpu_percent("burst", "burst_end"),
    }
