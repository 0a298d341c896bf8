"""`desanet tui`: the technician's terminal app (Textual), a client of the control API.

One app holds the latest answers of the daemon (status, clients, services,
the running config, recent events) and the box's own readings; the pages
render from it. Reads run as workers (never on the UI thread's critical
path): a poll every ``poll`` seconds and a long poll on the event stream,
each event prompting a fresh read. When nothing listens on the control
socket, the daemon-down page takes over; setup and diagnostics still work.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from textual import events
from textual.app import App

from gateway.errors import ControlError
from gateway.tui.api import TuiApi, daemon_down
from gateway.tui.base import PAGES, Key, Page, background, plain, translated
from gateway.tui.dialogs import error_text
from gateway.tui.host import HostReader, HostStats, PsutilHost, Throughput
from gateway.tui.i18n import Language, language, on_change, set_language, tr
from gateway.tui.terminal import TerminalProbe

# A runner of some checks (None: all) returning gateway.diag's CheckResult objects.
DiagRunner = Callable[[list[str] | None], Awaitable[list[Any]]]
EVENTS_KEPT = 50


@dataclass(frozen=True)
class Diagnostics:
    """The checks as the diagnostics page runs them (tests hand it a stand-in)."""

    names: list[str]
    run: DiagRunner
    titles: dict[str, tuple[str, str]] = field(default_factory=dict)  # name: (id, en)


def load_diagnostics(config_path: str | None = None) -> Diagnostics | None:
    """gateway.diag's checks, or None while that package is not installed."""
    try:
        from gateway.diag import CHECKS, run_checks  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name != "gateway.diag":
            raise  # installed but broken: say so, do not pretend it is missing
        return None
    titles = {str(name): (str(getattr(c, "title_id", name)), str(getattr(c, "title_en", name)))
              for name, c in dict(CHECKS).items()}

    async def run(only: list[str] | None) -> list[Any]:
        return list(await run_checks(names=only, config_path=config_path))

    return Diagnostics(list(titles), run, titles)


def wizard_class() -> type[Any] | None:
    """The setup wizard's screen (gateway/tui/wizard.py), when it is there."""
    try:
        from gateway.tui.wizard import SetupWizard  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name != "gateway.tui.wizard":
            raise  # installed but broken: say so, do not pretend it is missing
        return None
    return SetupWizard


class DesanetApp(App[None]):
    TITLE = "desanet"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #nav { height: 1; background: $panel; }
    .heading { text-style: bold; }
    DataTable { height: 1fr; }
    """
    KEYS: tuple[Key, ...] = (("l", "language", "English", "Bahasa"), ("q", "quit", "Keluar", "Quit"))

    def __init__(self, api: TuiApi, *, host: HostReader | None = None,
                 diagnostics: Diagnostics | None = None,
                 poll: float | None = 2.0, config_path: str | None = None,
                 lang: Language | None = None, systemd: bool | None = None) -> None:
        super().__init__()
        if lang is not None:
            set_language(lang)
        self.api = api
        self.host = host or PsutilHost()
        self.diagnostics = diagnostics
        self.poll = poll
        self.config_path = config_path
        # Whether the daemon-down page can start the daemon with systemctl (None: look).
        self.systemd = systemd
        self.status: dict[str, Any] = {}
        self.clients: list[dict[str, Any]] = []
        self.services: dict[str, Any] = {}
        self.config: dict[str, Any] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.host_stats: HostStats | None = None
        self.throughput = Throughput()
        self.loaded = False  # the first full read arrived (or the daemon was found down)
        self.is_down = False
        self.refreshes = 0
        self._since = 0
        self._refreshing = self._again = False
        self._failing = ""  # the periodic read's error last shown
        self._stop_listening = on_change(self._language_changed)
        self.terminal = TerminalProbe()

    def on_cursor_position(self, event: events.CursorPosition) -> None:
        """The terminal answered a position query (gateway/tui/terminal.py)."""
        self.terminal.answered()

    # -- start and stop ---------------------------------------------------------------

    def on_mount(self) -> None:
        from gateway.tui.screens import make_pages

        self._keys()
        for name, page in make_pages(self).items():
            self.install_screen(page, name)
        self.push_screen("dashboard")
        background(self, self._start, group="start")

    async def _start(self) -> None:
        await self.refresh_all()
        if self.poll is not None:
            self.set_interval(self.poll, self.request_refresh)
            background(self, self._follow, group="events")

    async def on_unmount(self) -> None:
        self._stop_listening()
        await self.api.close()

    # -- reading the daemon -------------------------------------------------------------

    def request_refresh(self) -> None:
        """Read everything again soon. Requests while a read runs make one more read after
        it, never a cancelled one: a busy event stream must not starve the screen."""
        if self._refreshing:
            self._again = True
            return
        self._refreshing = True
        background(self, self._refresh_loop, group="refresh")

    async def _refresh_loop(self) -> None:
        try:
            while True:
                self._again = False
                await self.refresh_all()
                if not self._again:
                    return
        finally:
            self._refreshing = False

    async def refresh_all(self) -> None:
        """Everything the pages show, read at once; the daemon-down page if nobody answers."""
        try:
            status, clients, services = await asyncio.gather(
                self.api.status(), self.api.clients(), self.api.services())
            if not self.config:
                self.config = (await self.api.config_show()).config
            if self._since == 0:  # what the event ring still holds, without waiting
                page = await self.api.events(0, 0)
                self.events.extend(e.to_json() for e in page.events)
                self._since = page.next
        except ControlError as exc:
            if daemon_down(exc):
                self.daemon_lost()
            elif str(exc) != self._failing:  # once per problem, not at every poll
                self._failing = str(exc)
                self.report(exc)
            self.loaded = True
            return
        self._failing = ""
        self.status, self.clients, self.services = status, clients, services
        wan = (self.config.get("network") or {}).get("wan_interface")
        try:
            self.host_stats = await self.host.read(wan)
            self.throughput.add(self.host_stats)
        except Exception as exc:  # a missing sensor must not hide the daemon's data
            self.log.warning(f"host read failed: {exc}")
        self.refreshes += 1
        self.loaded = True
        if self.is_down:
            self.daemon_back()
        self.show_all()

    async def _follow(self) -> None:
        """The event stream: each batch of events is shown and prompts a fresh read."""
        while True:
            try:
                page = await self.api.events(self._since, 25.0)
            except ControlError as exc:
                if daemon_down(exc):
                    self.daemon_lost()
                await asyncio.sleep(self.poll or 2.0)
                continue
            if page.events:
                self.events.extend(e.to_json() for e in page.events)
                if any(e.type.startswith("config_") for e in page.events):
                    self.config = {}  # plans, WAN interface: read the running config again
                self.request_refresh()
            self._since = page.next

    def show_all(self) -> None:
        for screen in self.screen_stack:
            if isinstance(screen, Page):
                screen.show()

    # -- the daemon going and coming back ---------------------------------------------

    def daemon_lost(self) -> None:
        if self.is_down or not self.screen_stack:  # (no screens: the app is closing)
            return
        self.is_down = True
        from gateway.tui.screens.down import DownScreen

        if self.screen is self.get_screen("diagnostics"):
            self.switch_screen("dashboard")  # so that 5 can open it over the down page
        self.push_screen(DownScreen())

    def daemon_back(self) -> None:
        from gateway.tui.screens.down import DownScreen

        self.is_down = False
        if not self.screen_stack:
            return
        # Off with the down page and whatever was opened over it (diagnostics).
        while len(self.screen_stack) > 2 and any(isinstance(s, DownScreen)
                                                 for s in self.screen_stack):
            self.pop_screen()

    def notify(self, message: str, *, title: str = "", severity: Any = "information",
               timeout: float | None = None, markup: bool = True) -> None:
        """Every toast as plain text (screens' notify lands here too): a daemon error, a
        batch or plan name or systemctl's output may hold "[/]" (a MarkupError when drawn)
        or "[@click=app.quit]", or terminal escapes."""
        super().notify(plain(message), title=plain(title), severity=severity,
                       timeout=timeout, markup=False)

    def report(self, exc: BaseException) -> None:
        self.notify(error_text(exc), title=tr("Galat", "Error"), severity="error", timeout=8)

    # -- keys -----------------------------------------------------------------------------

    def action_page(self, name: str) -> None:
        if not isinstance(self.screen, Page):
            return  # a dialog or the wizard is open: it is closed first (Esc)
        if self.is_down and name != "diagnostics":
            self.notify(tr("Daemon mati: hanya diagnosa dan pengaturan tersedia.",
                           "Daemon down: only diagnostics and setup are available."))
            return
        if self.is_down:
            if self.screen is not self.get_screen(name):
                self.push_screen(name)
            return
        self.switch_screen(name)

    def action_setup(self) -> None:
        if not isinstance(self.screen, Page):
            return
        wizard = wizard_class()
        if wizard is None:
            self.notify(tr("Wizard pengaturan belum terpasang.",
                           "The setup wizard is not installed."))
            return
        # Pass only what the wizard's constructor asks for (it is written separately).
        offered = {"api": self.api, "socket_path": self.api.socket_path,
                   "config_path": self.config_path}
        params = inspect.signature(wizard).parameters
        self.push_screen(wizard(**{k: v for k, v in offered.items() if k in params}))

    def action_language(self) -> None:
        set_language("en" if language() == "id" else "id")

    def _keys(self) -> None:
        # The page keys are shown on the navigation line, not again in the footer.
        self._bindings = translated(self.KEYS)
        for key, name, _, _ in PAGES:
            self._bindings.bind(key, f"page('{name}')", show=False)
        self._bindings.bind("w", "setup", show=False)
        self.refresh_bindings()

    def _language_changed(self, _: Language) -> None:
        self._keys()
        for screen in self.screen_stack:
            if isinstance(screen, Page):
                background(self, screen.retranslate, group="language")


def run(socket_path: str, lang: Language | None = None, config_path: str | None = None) -> int:
    """`desanet tui`: run the app in this terminal until the technician quits."""
    from gateway.tui.api import ControlApi

    app = DesanetApp(ControlApi(socket_path), diagnostics=load_diagnostics(config_path),
                     config_path=config_path, lang=lang)
    app.run()
    return 0
