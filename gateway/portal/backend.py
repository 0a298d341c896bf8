"""What the portal HTTP app needs from the daemon, as a small protocol.

The core's SessionService implements it; unit tests use a fake that keeps
sessions in a dict.
"""

from __future__ import annotations

from typing import Protocol

from gateway.errors import PortalDenied
from gateway.model import ClientView, Session

__all__ = ["ClientView", "PortalBackend", "PortalDenied"]


class PortalBackend(Protocol):
    def now(self) -> int: ...

    async def identify(self, ip: str) -> ClientView:
        """Who is behind this LAN address right now."""

    async def login_terms(self, client: ClientView) -> Session:
        """Authorize after the terms were accepted; raise PortalDenied when not allowed."""

    async def login_voucher(self, client: ClientView, code: str) -> Session:
        """Redeem a canonical voucher code; raise VoucherError(reason) or PortalDenied."""

    async def logout(self, client: ClientView) -> None: ...
