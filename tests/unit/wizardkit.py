"""The setup wizard alone in a tiny app (the real TUI app pushes it the same way)."""

from __future__ import annotations

from textual.app import App

from gateway.control.aclient import AsyncControlClient
from gateway.tui.wizard import SetupWizard


class WizardApp(App[None]):
    def __init__(self, client: AsyncControlClient | None, config_path: str | None = None,
                 socket_path: str | None = None) -> None:
        super().__init__()
        self.animation_level = "none"  # no scroll animation for Pilot to wait out
        self.wizard = SetupWizard(client, config_path, socket_path=socket_path)

    def on_mount(self) -> None:
        self.push_screen(self.wizard)
