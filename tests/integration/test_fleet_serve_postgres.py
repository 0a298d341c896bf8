"""`desanet fleet serve --db postgresql://...` against a real PostgreSQL.

The test starts a throwaway cluster (Debian's postgresql package: initdb and
pg_ctl as the postgres user, in a temp dir of its own, on a free loopback
port, trust authentication) and removes it afterwards; a leftover of a crashed
run is another temp dir and port, so it never gets in the way.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.mosquitto import Broker, free_port
from tests.integration.serve_harness import Gateway, Serve, scrape, traffic, wait_until

pytestmark = [pytest.mark.integration]
psycopg = pytest.importorskip("psycopg")


def _bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


class Cluster:
    """A throwaway PostgreSQL cluster (see the module docstring); ``url`` is its database."""

    def __init__(self, bindir: Path) -> None:
        pg = pwd.getpwnam("postgres")
        self.bindir = bindir
        self.top = Path(tempfile.mkdtemp(prefix="desanet-pg-"))
        os.chown(self.top, pg.pw_uid, pg.pw_gid)
        self.data, self.port = self.top / "data", free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/fleet"

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", "postgres", "--", str(self.bindir / tool), *args],
                              capture_output=True, text=True, timeout=120)

    def create(self) -> None:
        done = self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        assert done.returncode == 0, done.stderr
        self.start()
        with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE fleet")

    def start(self) -> None:
        done = self.run("pg_ctl", "-D", str(self.data), "-l", str(self.top / "log"), "-w", "-o",
                        f"-p {self.port} -k {self.top} -c listen_addresses=127.0.0.1 -c fsync=off",
                        "start")
        assert done.returncode == 0, done.stderr + (self.top / "log").read_text()

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.top, ignore_errors=True)


@pytest.fixture
def postgres() -> Iterator[Cluster]:
    """A fresh database on a throwaway cluster, removed afterwards."""
    bindir = _bin()
    if bindir is None or os.geteuid() != 0:
        pytest.skip("needs root and Debian's postgresql package (apt-get install postgresql)")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("needs the postgres user (apt-get install postgresql)")
    cluster = Cluster(bindir)
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.remove()


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as c:
        return list(c.execute(sql).fetchall())


def test_two_instances_share_one_postgresql(mosquitto: Broker, postgres: Cluster,
                                            tmp_path: Path) -> None:
    url, port = postgres.url, free_port()
    a = Serve(tmp_path, mosquitto, url, "pg-a", "g1", port).start()
    b = Serve(tmp_path, mosquitto, url, "pg-b", "g1").start()
    sites = [Gateway(mosquitto, f"desa-{i}", session=2) for i in range(3)]
    try:
        copies = 0
        for gw in sites:
            gw.status()
        for gw in sites:
            copies += traffic(gw, 80)
        total = sum(gw.seq for gw in sites)
        wait_until(lambda: query(url, "SELECT COUNT(*) FROM messages")[0][0] == total
                   and query(url, "SELECT SUM(duplicates) FROM gateways")[0][0] == copies,
                   60, f"{total} messages and {copies} copies")
        for gw in sites:
            site = gw.who.site
            seqs = query(url, f"SELECT seq FROM messages WHERE site = '{site}' ORDER BY seq")
            assert [s[0] for s in seqs] == list(range(1, gw.seq + 1))
            row = query(url, "SELECT online, session, messages, clients, last_seq FROM "
                                  f"gateways WHERE site = '{site}'")[0]
            assert row == (1, 2, gw.seq, gw.seq, gw.seq)  # the last message is telemetry
        split = dict(query(url, "SELECT consumer, COUNT(*) FROM messages GROUP BY consumer"))
        assert set(split) == {"pg-a", "pg-b"}, split
        assert 'desanet_gateway_online{site="desa-0"} 1.0' in scrape(port)
    finally:
        for gw in sites:
            gw.close()
        a.stop()
        b.stop()


def test_a_database_outage_loses_nothing(mosquitto: Broker, postgres: Cluster,
                                         tmp_path: Path) -> None:
    """PostgreSQL goes away mid-stream: serve keeps the batch, acknowledges nothing,
    retries, reconnects; once the database is back every message is stored once."""
    url = postgres.url
    s = Serve(tmp_path, mosquitto, url, "pg-outage").start()
    gw = Gateway(mosquitto, "desa-db", session=1)
    try:
        gw.status()
        traffic(gw, 10, dup_every=0)
        wait_until(lambda: query(url, "SELECT COUNT(*) FROM messages")[0][0] == 10, 30, "10")
        postgres.stop()
        traffic(gw, 30, dup_every=0)
        wait_until(lambda: "cannot store" in s.text(), 30, "a failed batch in the log")
        postgres.start()
        wait_until(lambda: query(url, "SELECT COUNT(*) FROM messages")[0][0] == 40, 90,
                   "all 40 after the database came back")
        seqs = [r[0] for r in query(url, "SELECT seq FROM messages ORDER BY seq")]
        assert seqs == list(range(1, 41))
        assert query(url, "SELECT messages, duplicates, clients FROM gateways") == [(40, 0, 40)]
        assert s.exited() is None  # it waited, it did not give up
    finally:
        gw.close()
        s.stop()
