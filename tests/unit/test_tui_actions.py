"""Pilot tests of the TUI's main actions against the real control API.

The real routes (gateway/control/api.py) and the real core (on corekit's fakes
for the kernel) serve a unix socket in a temporary directory; the app talks
to it through its real client. Each test waits on a condition, never a time.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, Static

from gateway.model import ClientView
from gateway.tui.api import ControlApi
from gateway.tui.app import DesanetApp
from gateway.tui.dialogs import Form
from gateway.tui.i18n import set_language
from gateway.tui.screens.diagnostics import DiagnosticsScreen
from gateway.tui.screens.down import DownScreen
from tests.unit.conftest import make_config
from tests.unit.corekit import Core, build_core
from tests.unit.tuikit import FakeHost, StandInDiag

MAC, IP = "02:00:00:00:00:01", "10.42.0.101"
MAC2, IP2 = "02:00:00:00:00:02", "10.42.0.102"


@pytest.fixture(autouse=True)
def _language() -> Iterator[None]:
    yield
    set_language("id")  # process-wide: the next test starts in the default


@pytest.fixture
def sock_path() -> Iterator[str]:
    folder = tempfile.mkdtemp(prefix="dn-tui-", dir="/tmp")  # short: sun_path is 108 bytes
    yield os.path.join(folder, "control.sock")
    shutil.rmtree(folder, ignore_errors=True)


async def serve(core: Core, path: str) -> web.AppRunner:
    # An app's event long poll may be open at the end: do not wait out its 25 s.
    runner = web.AppRunner(core.control_app(), shutdown_timeout=0.5)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    return runner


@pytest.fixture
async def core(tmp_path: Path) -> Core:
    c = build_core(tmp_path, make_config(shaping={"enabled": True, "plans": {
        "school": {"down": "4mbit", "up": "1mbit"}}}))
    c.neighbours.add(IP, MAC)
    c.neighbours.add(IP2, MAC2)
    await c.start()
    return c


@pytest.fixture
async def served(core: Core, sock_path: str) -> AsyncIterator[str]:
    runner = await serve(core, sock_path)
    yield sock_path
    await runner.cleanup()


async def until(pilot: Pilot[None], cond: Callable[[], bool], what: str,
                timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.02)


def app_on(path: str, **kw: object) -> DesanetApp:
    return DesanetApp(ControlApi(path), host=FakeHost(), poll=None, lang="en", **kw)  # type: ignore[arg-type]


async def test_deauthorize_a_client(core: Core, served: str) -> None:
    await core.sessions.authorize(MAC, IP, "terms")
    app = app_on(served)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded, "the first read")
        await pilot.press("2")
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 2, "two client rows")
        key = app.screen.selected_key(table)  # type: ignore[attr-defined]
        assert key == MAC
        await pilot.press("d")
        assert isinstance(app.screen, Form)
        await pilot.press("y")
        await until(pilot, lambda: not core.firewall.authorized, "the session to end")
        assert "session_ended" in core.event_types()
        # the list is read again: the client is back on the portal, still listed
        await until(pilot, lambda: not any(c.get("authorized") for c in app.clients),
                    "the refreshed list")


async def test_release_a_vouchers_device(core: Core, served: str) -> None:
    # A villager changed phones: the old phone is released from the voucher, its session
    # ends, and the voucher's slot is free for the new one.
    _, made = await core.vouchers.create_batch(1, 3600, batch="b")
    code = made[0].code
    await core.sessions.login_voucher(ClientView(IP, MAC, None), code)
    app = app_on(served)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded, "the first read")
        await pilot.press("2")
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 2, "two client rows")
        assert app.screen.selected_key(table) == MAC  # type: ignore[attr-defined]
        await pilot.press("x")
        assert isinstance(app.screen, Form)
        await pilot.press("y")
        await until(pilot, lambda: not core.firewall.authorized, "the session to end")
        await until(pilot, lambda: not any(c.get("authorized") for c in app.clients),
                    "the refreshed list")
    [voucher] = await core.store.vouchers()
    assert voucher.devices == () and not voucher.revoked
    assert "voucher_released" in core.event_types()


async def test_deauth_cancelled_changes_nothing(core: Core, served: str) -> None:
    await core.sessions.authorize(MAC, IP, "terms")
    app = app_on(served)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded, "the first read")
        await pilot.press("2")
        await until(pilot, lambda: app.screen.query_one(DataTable).row_count == 2, "rows")
        await pilot.press("d", "n")
        await until(pilot, lambda: not isinstance(app.screen, Form), "the dialog to close")
    assert (MAC, IP) in core.firewall.authorized


async def test_create_vouchers_invalid_then_valid(core: Core, served: str) -> None:
    app = app_on(served)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded, "the first read")
        await pilot.press("3", "n")
        form = app.screen
        assert isinstance(form, Form)
        form.query_one("#f-name", Input).value = "Posyandu Mei"
        form.query_one("#f-seller", Input).value = "Warung Bu Sari"
        form.query_one("#f-count", Input).value = "3"
        form.query_one("#f-duration", Input).value = "soon"
        form.query_one("#f-name", Input).focus()
        await pilot.press("enter")
        error = form.query_one("#error", Static)
        await until(pilot, lambda: "duration" in str(error.render()), "the field's error")
        assert app.screen is form  # the form stays open with what was typed
        assert await core.store.vouchers() == []
        form.query_one("#f-duration", Input).value = "1d"
        await pilot.press("enter")
        await until(pilot, lambda: app.screen is not form, "the form to close")
        made = await core.store.vouchers()
        assert len(made) == 3
        assert {v.batch_name for v in made} == {"Posyandu Mei"}
        assert {v.seller for v in made} == {"Warung Bu Sari"}
        assert {v.duration for v in made} == {86400}
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 3, "the new vouchers listed")


async def test_export_voucher_sheet(core: Core, served: str, tmp_path: Path) -> None:
    await core.ops.create_vouchers(2, 3600, 1, None, None, "Karang Taruna")
    app = app_on(served)
    target = tmp_path / "usb" / "sheet.html"
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded, "the first read")
        await pilot.press("3")
        await until(pilot, lambda: app.screen.query_one(DataTable).row_count == 2, "rows")
        await pilot.press("e")
        form = app.screen
        assert isinstance(form, Form)
        form.query_one("#f-path", Input).value = str(target)
        form.query_one("#f-path", Input).focus()
        await pilot.press("enter")
        await until(pilot, lambda: app.screen is not form, "the export")
    html = target.read_text()
    assert "Karang Taruna" in html
    for v in await core.store.vouchers():
        assert v.code in html


async def test_run_diagnostics(core: Core, served: str) -> None:
    diag = StandInDiag()
    app = app_on(served, diagnostics=diag.pair())
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded, "the first read")
        await pilot.press("5")
        screen = app.screen
        assert isinstance(screen, DiagnosticsScreen)
        await pilot.press("a")
        await until(pilot, lambda: screen.runs == 1, "the checks to run")
        assert sorted(map(tuple, diag.calls)) == sorted((n,) for n in screen.names)
        table = screen.query_one(DataTable)
        verdicts = [str(table.get_row_at(i)[1]) for i in range(table.row_count)]
        assert verdicts == ["[ OK ]", "[FAIL]", "[WARN]", "[ OK ]", "[SKIP]"]
        await pilot.press("down", "enter")  # the rogue DHCP check alone
        await until(pilot, lambda: screen.runs == 2, "one check to run")
        assert diag.calls[-1] == ["dhcp_rogue"]
        assert "Rogue DHCP server" in str(table.get_row_at(1)[0])  # the check's title
        advice = str(screen.query_one("#advice", Static).render())
        assert "Unplug the other router" in advice


async def test_daemon_down_then_back(core: Core, sock_path: str) -> None:
    diag = StandInDiag()
    app = app_on(sock_path, diagnostics=diag.pair())
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DownScreen), "the daemon-down page")
        text = str(app.screen.query_one("#message", Static).render())
        assert "NOT RUNNING" in text and sock_path in text
        await pilot.press("2")  # pages that need the daemon stay closed
        assert isinstance(app.screen, DownScreen)
        await pilot.press("5")  # diagnostics work without it
        assert isinstance(app.screen, DiagnosticsScreen)
        await pilot.press("a")
        await until(pilot, lambda: app.screen.runs == 1, "the checks")  # type: ignore[attr-defined]
        await pilot.press("escape")
        assert isinstance(app.screen, DownScreen)
        runner = await serve(core, sock_path)  # the daemon comes up
        try:
            await pilot.press("r")
            await until(pilot, lambda: not app.is_down and app.status.get("site"), "the daemon")
            assert not any(isinstance(s, DownScreen) for s in app.screen_stack)
            assert app.status["site"] == "Hotspot Desa Uji"
        finally:
            await runner.cleanup()


async def test_w_opens_the_setup_wizard_with_the_socket(
        served: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wizard is written separately (gateway/tui/wizard.py): the app pushes its
    SetupWizard screen with what its constructor asks for."""
    from textual.screen import Screen

    opened: list[dict[str, object]] = []

    class SetupWizard(Screen[None]):
        def __init__(self, client: object = None, config_path: str | None = None, *,
                     socket_path: str | None = None) -> None:
            super().__init__()
            opened.append({"client": client, "config_path": config_path,
                           "socket_path": socket_path})

    module = types.ModuleType("gateway.tui.wizard")
    module.SetupWizard = SetupWizard  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gateway.tui.wizard", module)
    app = app_on(served, config_path="/etc/desanet/gateway.toml")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded, "the first read")
        await pilot.press("w")
        await until(pilot, lambda: isinstance(app.screen, SetupWizard), "the wizard")
        await pilot.press("2")  # page keys do not replace the open wizard
        assert isinstance(app.screen, SetupWizard)
    assert opened == [{"client": None, "config_path": "/etc/desanet/gateway.toml",
                       "socket_path": served}]


async def test_daemon_stops_while_the_app_runs(core: Core, sock_path: str) -> None:
    """Polling and the event stream notice the daemon going; diagnostics stay at hand."""
    runner = await serve(core, sock_path)
    app = DesanetApp(ControlApi(sock_path), host=FakeHost(), poll=0.2, lang="en",
                     diagnostics=StandInDiag().pair())
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.refreshes >= 2, "reads while the daemon runs")
        await pilot.press("5")
        assert isinstance(app.screen, DiagnosticsScreen)
        await runner.cleanup()  # the daemon stops
        await until(pilot, lambda: isinstance(app.screen, DownScreen), "the daemon-down page")
        await pilot.press("5")
        await until(pilot, lambda: isinstance(app.screen, DiagnosticsScreen), "diagnostics")
        await pilot.press("escape")
        assert isinstance(app.screen, DownScreen)
        runner = await serve(core, sock_path)  # and comes back: polling finds it
        try:
            await until(pilot, lambda: not app.is_down, "the daemon back")
            await until(pilot, lambda: not isinstance(app.screen, DownScreen), "the page")
        finally:
            await runner.cleanup()


async def test_authorize_then_change_plan(core: Core, served: str) -> None:
    app = app_on(served)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded, "the first read")
        await pilot.press("2")
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 2, "two portal clients")
        await pilot.press("down")
        assert app.screen.selected_key(table) == MAC2  # type: ignore[attr-defined]
        await pilot.press("a")
        form = app.screen
        assert isinstance(form, Form)
        form.query_one("#f-duration", Input).value = "2h"
        form.query_one("#f-plan", Input).value = "nosuchplan"
        form.query_one("#f-duration", Input).focus()
        await pilot.press("enter")
        error = form.query_one("#error", Static)
        await until(pilot, lambda: "plan" in str(error.render()), "the unknown plan named")
        assert not core.firewall.authorized
        form.query_one("#f-plan", Input).value = ""
        await pilot.press("enter")
        await until(pilot, lambda: (MAC2, IP2) in core.firewall.authorized, "the client online")
        await until(pilot, lambda: any(c.get("mac") == MAC2 and c.get("authorized")
                                       for c in app.clients), "the refreshed list")
        assert app.screen.selected_key(table) == MAC2  # type: ignore[attr-defined]
        await pilot.press("p")
        form = app.screen
        assert isinstance(form, Form)
        form.query_one("#f-plan", Input).value = "school"
        form.query_one("#f-plan", Input).focus()
        await pilot.press("enter")
        await until(pilot, lambda: app.screen is not form, "the plan change")
        sessions = {s.mac: s for s in await core.sessions.active()}
        assert sessions[MAC2].plan == "school"
        assert sessions[MAC2].expires - sessions[MAC2].started == 2 * 3600


async def test_revoke_a_voucher(core: Core, served: str) -> None:
    _, made = await core.ops.create_vouchers(2, 3600, 1, None, None, "Posyandu")
    app = app_on(served)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded, "the first read")
        await pilot.press("3")
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 2, "the vouchers")
        code = app.screen.selected_key(table)  # type: ignore[attr-defined]
        await pilot.press("c", "y")
        await until(pilot, lambda: "dicabut" in str(table.get_row(code)[1])
                    or "revoked" in str(table.get_row(code)[1]), "the list read again")
    state = {v.code: v.revoked for v in await core.store.vouchers()}
    assert state == {made[0].code: code == made[0].code, made[1].code: code == made[1].code}


class StubSite:
    """The local-services site as GatewayOps sees it (the real one needs upstreams)."""

    def __init__(self) -> None:
        self.runs = 0
        self.last: dict[str, object] = {}

    def status_json(self) -> dict[str, object]:
        return {"enabled": True, "hostname": "layanan.desa",
                "cache": {"hit_ratio": 0.5, "entries": 1, "bytes": 1, "max_bytes": 2},
                "services": {"dukcapil": {"state": "online", "requests": 4, "errors": 0,
                                          "cache": {"hits": 2, "misses": 1,
                                                    "hit_ratio": 0.6667}}},
                "outbox": {"queued": 1}, "prefetch": {"runs": self.runs, **self.last}}

    async def prefetch(self, only_missing: bool = False) -> dict[str, object]:
        self.runs += 1
        self.last = {"started": 1, "finished": 2, "results": {"a": "ok", "b": "ok"}}
        return self.last


async def test_start_a_prefetch(core: Core, served: str) -> None:
    site = StubSite()
    core.servers.local = site  # type: ignore[assignment]
    app = app_on(served)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.loaded, "the first read")
        await pilot.press("4")
        summary = app.screen.query_one("#summary", Static)
        assert "Prefetch: never" in str(summary.render())
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 1, "the catalog")
        assert "67%" in [str(cell) for cell in table.get_row("dukcapil")]  # its own ratio
        await pilot.press("p")
        await until(pilot, lambda: site.runs == 1, "the prefetch")
        await until(pilot, lambda: "2 ok of 2" in str(summary.render()), "the result shown")
