"""The phone browser harness itself (tests/integration/browser.py): it runs in the lab
client's namespace, and a test process that dies leaves nothing behind that could
break the next run."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from desanet_lab import LabInfo, LabSpec
from desanet_lab import netns as nsa
from tests.integration.conftest import (
    INTERNET_URL,
    LAB_TOOLS,
    PORTAL,
    ROOT,
    LabFactory,
    require_root,
    require_tools,
    unique_prefix,
    wait_until,
)

pytest.importorskip("selenium", reason="needs selenium (a dev extra: pip install -e '.[dev]')")

from tests.integration.browser import missing_browser, open_browser

_missing = missing_browser()
pytestmark = [
    pytest.mark.integration, require_root, require_tools(*LAB_TOOLS),
    pytest.mark.skipif(bool(_missing), reason=f"needs {', '.join(_missing)} "
                       "(apt-get install chromium chromium-driver; `bash .ci/setup` does)"),
]

PREFIX = unique_prefix("bh")
BROWSER_PROGRAMS = (b"chromium", b"chromedriver", b"netns_relay")


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    return make_lab(LabSpec(prefix=PREFIX, clients=1))


def browser_pids(ns: str) -> list[int]:
    """Processes in ``ns`` that belong to a browser (Chromium, chromedriver, the relay)."""
    found = []
    for pid in nsa.namespace_pids(ns):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if any(name in cmdline for name in BROWSER_PROGRAMS):
            found.append(pid)
    return found


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout), f"no line from the test process within {timeout:g} s"
        return proc.stdout.readline().strip()


def test_a_killed_test_process_leaves_no_browser_behind(lab: LabInfo, tmp_path: Path) -> None:
    ns = lab.client(1).name
    assert not browser_pids(ns)
    # A test process that opens a browser and is then killed -9 (a crashed or cancelled run).
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from tests.integration.browser import open_browser
        with open_browser({ns!r}, Path({str(tmp_path / "killed")!r})) as b:
            b.open({INTERNET_URL!r})
            print(b.url, b.temp, flush=True)
            sys.stdin.read()
    """)
    victim = subprocess.Popen([sys.executable, "-c", script], cwd=str(ROOT), text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        url, temp = read_line(victim, 60).split()
        assert browser_pids(ns), f"no browser process in {ns} while the test runs"
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
    # It really was a browser in the client's namespace, sent to the portal by the gateway.
    assert url.startswith(f"{PORTAL}/?url="), url
    assert Path(temp).is_dir()

    wait_until(lambda: not browser_pids(ns), 15, f"the killed test's browser in {ns} to end")
    # The next browser starts cleanly in the same namespace and removes the dead one's temp dir.
    with open_browser(ns, tmp_path / "next") as b:
        assert not Path(temp).exists(), "the killed test's temp dir was not swept"
        b.open(INTERNET_URL)
        b.wait_url(lambda u: u.startswith(f"{PORTAL}/"), "the portal")
        assert browser_pids(ns)
    assert not browser_pids(ns), "close() left browser processes behind"
