"""bench/fleet_scale.py keeps working: its quick mode (200 simulated gateways, a real
Mosquitto, the consumer in one and two instances) stores every message exactly once and
every Will, single and batched; and its loss check does notice a message the consumer did
not store."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.integration.conftest import require_tools

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"

pytestmark = [pytest.mark.integration, require_tools("mosquitto")]


def test_quick_run_stores_every_message_once(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    # --batched: the burst goes out as the daemon sends a backlog (several reports a PUBLISH);
    # the steady phase still sends one message a PUBLISH, so both wire forms are checked
    proc = subprocess.run([sys.executable, str(BENCH / "fleet_scale.py"), "--quick", "--batched",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    expected = "serve" if (ROOT / "gateway" / "fleet" / "serve.py").exists() else "standin"
    assert report["consumer"] == expected
    results = report["results"]
    assert [(r["n"], r["consumers"]) for r in results] == [(200, 1), (200, 2)]
    for r in results:
        assert r["published"] > 0
        assert (r["loss"], r["unexpected"], r["duplicates"]) == (0, 0, 0), r
        assert r["stored"] == r["published"]
        assert r["wills"] == r["n"]
        assert r["steady_messages"] > 0 and r["burst_messages"] == 200 * 5
        assert r["burst_publishes"] < r["burst_messages"]  # the reports were batched
    assert "two consumers / one" in proc.stdout


def test_loss_check_counts_a_message_not_stored(tmp_path: Path) -> None:
    sys.path[:0] = [str(BENCH)]
    try:
        from _fleet_measure import analyse
        from _fleet_sim import SimGateway
    finally:
        del sys.path[0]
    gw = SimGateway("s-1", "desanet/v1")
    for t in range(4):
        gw.next(1000.0 + t)
    db = tmp_path / "fleet.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE messages (site, session, seq, time, received)")
    conn.execute("CREATE TABLE gateways (site, online)")
    stored = [1, 2, 4]  # seq 3 never stored; seq 9 was never published
    for seq in [*stored, 9]:
        conn.execute("INSERT INTO messages VALUES ('s-1', 1, ?, 1000.0, 1000.5)", (seq,))
    conn.commit()
    conn.close()
    fleet = SimpleNamespace(links=[SimpleNamespace(gw=gw)])
    poller = SimpleNamespace(stored_at=lambda rowid: 1001.0)
    marks = {"boundary": {"s-1": 2}, "ramp_s": 0, "all_online_s": 0, "steady_sent": 2,
             "steady_start": 999.0, "steady_end": 1001.0, "burst_start": 1001.0,
             "burst_acked": 1002.0, "wills_s": 0, "lost_connections": 0, "connect_retries": 0}
    sampler = SimpleNamespace(peak={}, cpu_percent=lambda a, b: {})
    r = analyse(db, fleet, marks, poller, sampler)  # type: ignore[arg-type]
    assert (r["published"], r["stored"], r["loss"], r["unexpected"]) == (4, 4, 1, 1)
    # positive control: with seq 3 stored and 9 gone, nothing is missing
    conn = sqlite3.connect(db)
    conn.execute("UPDATE messages SET seq = 3 WHERE seq = 9")
    conn.commit()
    conn.close()
    r = analyse(db, fleet, marks, poller, sampler)  # type: ignore[arg-type]
    assert (r["loss"], r["unexpected"]) == (0, 0)
