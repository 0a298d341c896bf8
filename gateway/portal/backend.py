"""What the portal HTTP app needs from the daemon, as a small protocol.

The daemon implements it with the store and the firewall; unit tests use a
fake that keeps sessions in a dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.model import Session


@dataclass(frozen=True, slots=True)
class ClientView:
    ip: str
    mac: str | None  # None when the address is not on the LAN (no neighbour entry)
    session: Session | None


class PortalBackend(Protocol):
    def now(self) -> int: ...

    async def identify(self, ip: str) -> ClientView:
        """Who is behind this LAN address right now."""

    async def login_terms(self, client: ClientView) -> Session:
        """Authorize after the terms were accepted; raise PortalDenied when not allowed."""

    async def login_voucher(self, client: ClientView, code: str) -> Session:
        """Redeem a canonical voucher code; raise VoucherError(reason) or PortalDenied."""

    async def logout(self, client: ClientView) -> None: ...


class PortalDenied(Exception):
    """Login refused for a reason the page explains (``reason`` is a message key)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason  # e.g. "mode", "full", "blocked", "no_mac"
        super().__init__(reason)
