"""The TUI's pages; :func:`make_pages` builds one of each for the app to install."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.tui.base import Page

if TYPE_CHECKING:
    from gateway.tui.app import DesanetApp


def make_pages(app: DesanetApp) -> dict[str, Page]:
    from gateway.tui.screens.clients import ClientsScreen
    from gateway.tui.screens.dashboard import DashboardScreen
    from gateway.tui.screens.diagnostics import DiagnosticsScreen
    from gateway.tui.screens.services import ServicesScreen
    from gateway.tui.screens.vouchers import VouchersScreen

    return {"dashboard": DashboardScreen(), "clients": ClientsScreen(),
            "vouchers": VouchersScreen(), "services": ServicesScreen(),
            "diagnostics": DiagnosticsScreen(app.diagnostics)}
