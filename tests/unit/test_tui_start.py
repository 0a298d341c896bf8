"""Starting the daemon from the daemon-down page (gateway/tui/start.py): which command,
what the page says, and the key ``s`` running it (Pilot, keys only). The lab test
(tests/integration/test_tui_start_lab.py) starts the real daemon the same way."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import Static

from gateway.tui.screens.down import DownScreen
from gateway.tui.start import ENV, run_start, start_argv
from tests.unit.conftest import make_config
from tests.unit.corekit import Core, build_core
from tests.unit.test_tui_actions import app_on, serve
from tests.unit.wizardkit import until


@pytest.fixture
def sock_path() -> Iterator[str]:
    folder = tempfile.mkdtemp(prefix="dn-st-", dir="/tmp")  # short: sun_path is 108 bytes
    yield os.path.join(folder, "control.sock")
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    os.rmdir(folder)


@pytest.fixture
async def core(tmp_path: Path) -> Core:
    c = build_core(tmp_path, make_config())
    await c.start()
    return c


@pytest.fixture
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)


def test_the_command_override_then_systemd_then_none(no_override: None) -> None:
    assert start_argv({ENV: "python3 -m desanet_lab.start --prefix 'a b'"}, systemd=True) == \
        ["python3", "-m", "desanet_lab.start", "--prefix", "a b"]  # the override wins
    assert start_argv({}, systemd=True) == ["systemctl", "start", "desanet"]
    assert start_argv({ENV: "   "}, systemd=True) == ["systemctl", "start", "desanet"]
    assert start_argv({}, systemd=False) is None
    with pytest.raises(ValueError, match=f"{ENV} is not a command line"):
        start_argv({ENV: "sh -c 'unclosed"})


async def test_run_start_reports_exit_output_and_a_command_still_running(
        tmp_path: Path) -> None:
    ok = await run_start(["sh", "-c", "echo started"])
    assert (ok.ok, ok.output, ok.running) == (True, "started", False)
    bad = await run_start(["sh", "-c", "echo 'Unit desanet.service not found.' >&2; exit 5"])
    assert (bad.ok, bad.output) == (False, "Unit desanet.service not found.")
    silent = await run_start(["sh", "-c", "exit 3"])
    assert not silent.ok and "exit 3" in silent.output
    missing = await run_start([str(tmp_path / "no-such-command")])
    assert not missing.ok and "no-such-command" in missing.output
    # A command that does not end (e.g. the daemon itself): left running, not waited for.
    slow = await run_start(["sleep", "600"], wait=0.2)
    assert slow.process is not None
    try:
        assert (slow.ok, slow.running, slow.process.returncode) == (True, True, None)
    finally:
        slow.process.send_signal(signal.SIGTERM)
        await slow.process.wait()


async def test_s_runs_the_start_command_and_the_daemon_comes_up(
        core: Core, sock_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The in-process core cannot be started by a child process, so the command stands in
    # for `systemctl start`: it says it runs, then waits (on a FIFO) until the test has
    # served the core, and only then ends. The lab test starts a real daemon this way.
    flag, fifo = tmp_path / "started", tmp_path / "ready"
    os.mkfifo(fifo)
    monkeypatch.setenv(ENV, shlex.join(["sh", "-c", f"touch {flag}; read go < {fifo}"]))
    app = app_on(sock_path, systemd=False)  # the override works without systemd too
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DownScreen), "the daemon-down page")
        text = str(app.screen.query_one("#message", Static).render())
        assert "Press s to start it (sh -c 'touch " in text, text
        assert not flag.exists()
        await pilot.press("s")
        await until(pilot, flag.exists, "the start command")
        runner = await serve(core, sock_path)
        try:
            await asyncio.to_thread(fifo.write_text, "go\n")  # the command ends now
            await until(pilot, lambda: not app.is_down and bool(app.status.get("site")),
                        "the daemon read after the command ended")
            assert not any(isinstance(s, DownScreen) for s in app.screen_stack)
        finally:
            await runner.cleanup()


async def test_a_failing_start_says_why_and_stays_down(
        sock_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "sh -c 'echo Job for desanet.service failed. >&2; exit 1'")
    app = app_on(sock_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DownScreen), "the daemon-down page")
        await pilot.press("s")
        await until(pilot, lambda: any("Job for desanet.service failed." in n.message
                                       for n in app._notifications), "the failure shown")
        assert isinstance(app.screen, DownScreen) and app.is_down


async def test_without_systemd_or_a_command_the_page_says_run_it_by_hand(
        sock_path: str, no_override: None) -> None:
    app = app_on(sock_path, systemd=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DownScreen), "the daemon-down page")
        text = str(app.screen.query_one("#message", Static).render())
        assert "No systemd here: run `desanet run" in text
        await pilot.press("s")
        await until(pilot, lambda: any("run `desanet run` yourself" in n.message
                                       for n in app._notifications), "the hint")
