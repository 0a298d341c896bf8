"""A minimal stand-in for ``desanet fleet serve`` (bench/fleet_scale.py ``--consumer standin``).

Only for measuring the bench harness, or the fleet before `serve` exists: it
decodes every PUBLISH with ``gateway.fleet.table.unpack`` through a
:class:`FleetTable` (the one decoder every consumer uses), and stores in SQLite
(WAL) the latest state per gateway and one row per applied message keyed by
(site, session, seq) in the shape of serve's tables, so a duplicate is stored once, also when two instances in
one shared-subscription group write to the same file. Writes are batched: one
transaction at most every 50 ms. paho runs its network loop in its own thread
(``loop_start``), as a plain consumer would.

    python bench/_fleet_standin.py --broker mqtt://127.0.0.1:1883 --db sqlite:///f.db \
        [--group NAME] [--prefix desanet/v1] [--client-id ID]
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.fleet.table import FleetTable, Rejected, unpack

# The subset of serve's tables (gateway/fleet/store.py) that the bench reads.
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (site TEXT NOT NULL, session INTEGER NOT NULL,
    seq INTEGER NOT NULL, leaf TEXT NOT NULL, time REAL NOT NULL, hist INTEGER NOT NULL,
    received REAL NOT NULL, consumer TEXT NOT NULL, PRIMARY KEY (site, session, seq));
CREATE TABLE IF NOT EXISTS gateways (site TEXT PRIMARY KEY, online INTEGER, session INTEGER,
    last_seq INTEGER, messages INTEGER, duplicates INTEGER);
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--broker", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--prefix", default="desanet/v1")
    ap.add_argument("--group")
    ap.add_argument("--client-id", default="fleet-standin")
    args = ap.parse_args(argv)
    url = urlsplit(args.broker)
    if not args.db.startswith("sqlite:///"):
        ap.error("--db must be sqlite:///PATH")
    db = sqlite3.connect(args.db.removeprefix("sqlite:///"), timeout=30, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    table = FleetTable(args.prefix)
    lock = threading.Lock()
    pending: list[tuple[Any, ...]] = []
    dirty: set[str] = set()

    def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        now = time.time()
        with lock:
            table.apply(msg.topic, bytes(msg.payload), msg.retain, now)
            where = table.split(msg.topic)
            if where is None:
                return
            site, leaf = where
            dirty.add(site)
            if leaf == "status":
                return
            with contextlib.suppress(Rejected):
                for body in unpack(bytes(msg.payload), site, leaf):
                    pending.append((site, body["session"], body["seq"], leaf, body["time"],
                                    1 if body.get("hist") else 0, now, args.client_id))

    def on_connect(client: paho.Client, userdata: object, flags: Any, rc: Any, props: Any) -> None:
        head = f"$share/{args.group}/" if args.group else ""
        client.subscribe([(f"{head}{args.prefix}/+/{leaf}", 1)
                          for leaf in ("status", "telemetry", "event")])

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id,
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.on_message, client.on_connect = on_message, on_connect
    client.connect(url.hostname or "127.0.0.1", url.port or 1883, keepalive=60)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client.loop_start()
    try:
        while not stop.wait(0.05):
            with lock:
                rows, pending[:] = list(pending), []
                states = [(r.site, r.online, r.session, r.seq)
                          for r in (table.sites.get(site) for site in dirty) if r is not None]
                dirty.clear()
            if not rows and not states:
                continue
            with db:
                db.executemany("INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                db.executemany(
                    "INSERT INTO gateways VALUES (?, ?, ?, ?, 0, 0) ON CONFLICT (site) DO UPDATE "
                    "SET online = excluded.online, session = excluded.session, "
                    "last_seq = max(last_seq, excluded.last_seq) "
                    "WHERE excluded.session >= gateways.session", states)
    finally:
        client.loop_stop()
        client.disconnect()
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
