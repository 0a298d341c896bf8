"""Every TUI page as an SVG snapshot at 80x24, in Bahasa Indonesia and in English.

The data is fixed (tests/unit/tuikit.py: a fake control API, host and diagnostics)
so a picture changes only when what the technician sees changes. After a
deliberate change: `pytest tests/unit/test_tui_snapshots.py --snapshot-update`,
then look at the new SVGs before committing them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from textual.pilot import Pilot

from gateway.tui.app import DesanetApp
from gateway.tui.i18n import Language, set_language
from tests.unit.tuikit import FakeApi, FakeHost, StandInDiag

SAMPLES = 12  # throughput reads before the picture: a sparkline with a shape


@pytest.fixture(autouse=True)
def _language() -> Iterator[None]:
    yield
    set_language("id")


async def _until(pilot: Pilot[Any], cond: Callable[[], bool], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "timed out preparing the snapshot"
        await pilot.pause(0.02)


def _prepare(keys: tuple[str, ...]) -> Callable[[Pilot[Any]], Any]:
    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, DesanetApp)
        await _until(pilot, lambda: app.loaded)
        if not app.is_down:
            for _ in range(SAMPLES):
                await app.refresh_all()
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
        screen = app.screen
        await _until(pilot, lambda: getattr(screen, "loaded", True)
                     and not getattr(screen, "running", False))
        await pilot.pause()

    return run_before


PAGES = {
    "dashboard": (),
    "clients": ("2",),
    "vouchers": ("3",),
    "services": ("4",),
    "diagnostics": ("5", "a"),
}


@pytest.mark.parametrize("lang", ["id", "en"])
@pytest.mark.parametrize("page", list(PAGES))
def test_page(snap_compare: Any, page: str, lang: Language) -> None:
    app = DesanetApp(FakeApi(), host=FakeHost(), diagnostics=StandInDiag().pair(), poll=None,
                     lang=lang)
    assert snap_compare(app, terminal_size=(80, 24), run_before=_prepare(PAGES[page]))


@pytest.mark.parametrize("lang", ["id", "en"])
def test_daemon_down(snap_compare: Any, lang: Language) -> None:
    app = DesanetApp(FakeApi(down=True), host=FakeHost(), diagnostics=StandInDiag().pair(),
                     poll=None, lang=lang, systemd=True)
    assert snap_compare(app, terminal_size=(80, 24), run_before=_prepare(()))


def test_language_switch_at_run_time(snap_compare: Any) -> None:
    """Start in Bahasa Indonesia on the clients page, press l: everything in English."""
    app = DesanetApp(FakeApi(), host=FakeHost(), poll=None, lang="id")
    assert snap_compare(app, terminal_size=(80, 24), run_before=_prepare(("2", "l")))
