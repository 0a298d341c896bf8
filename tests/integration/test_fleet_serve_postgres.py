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


@pytest.fixture
def postgres() -> Iterator[str]:
    """The URL of a fresh database on a throwaway cluster."""
    bindir = _bin()
    if bindir is None or os.geteuid() != 0:
        pytest.skip("needs root and Debian's postgresql package (apt-get install postgresql)")
    try:
        pg = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("needs the postgres user (apt-get install postgresql)")
    top = Path(tempfile.mkdtemp(prefix="desanet-pg-"))
    os.chown(top, pg.pw_uid, pg.pw_gid)
    data, port = top / "data", free_port()

    def as_pg(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True,
                              text=True, timeout=120)

    try:
        done = as_pg(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                     "--no-sync")
        assert done.returncode == 0, done.stderr
        done = as_pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(top / "log"), "-w",
                     "-o", f"-p {port} -k {top} -c listen_addresses=127.0.0.1 -c fsync=off",
                     "start")
        assert done.returncode == 0, done.stderr + (top / "log").read_text()
        base = f"postgresql://postgres@127.0.0.1:{port}"
        with psycopg.connect(f"{base}/postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE fleet")
        yield f"{base}/fleet"
    finally:
        as_pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(top, ignore_errors=True)


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as c:
        return list(c.execute(sql).fetchall())


def test_two_instances_share_one_postgresql(mosquitto: Broker, postgres: str,
                                            tmp_path: Path) -> None:
    port = free_port()
    a = Serve(tmp_path, mosquitto, postgres, "pg-a", "g1", port).start()
    b = Serve(tmp_path, mosquitto, postgres, "pg-b", "g1").start()
    sites = [Gateway(mosquitto, f"desa-{i}", session=2) for i in range(3)]
    try:
        copies = 0
        for gw in sites:
            gw.status()
        for gw in sites:
            copies += traffic(gw, 80)
        total = sum(gw.seq for gw in sites)
        wait_until(lambda: query(postgres, "SELECT COUNT(*) FROM messages")[0][0] == total
                   and query(postgres, "SELECT SUM(duplicates) FROM gateways")[0][0] == copies,
                   60, f"{total} messages and {copies} copies")
        for gw in sites:
            site = gw.who.site
            seqs = query(postgres, f"SELECT seq FROM messages WHERE site = '{site}' ORDER BY seq")
            assert [s[0] for s in seqs] == list(range(1, gw.seq + 1))
            row = query(postgres, "SELECT online, session, messages, clients, last_seq FROM "
                                  f"gateways WHERE site = '{site}'")[0]
            assert row == (1, 2, gw.seq, gw.seq, gw.seq)  # the last message is telemetry
        split = dict(query(postgres, "SELECT consumer, COUNT(*) FROM messages GROUP BY consumer"))
        assert set(split) == {"pg-a", "pg-b"}, split
        assert 'desanet_gateway_online{site="desa-0"} 1.0' in scrape(port)
    finally:
        for gw in sites:
            gw.close()
        a.stop()
        b.stop()
