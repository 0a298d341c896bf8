"""Form tokens for the portal's login and logout forms (pure, injectable clock).

Theory of operation: a page from another site can make a villager's browser
post to ``http://portal.desa/logout`` (or ``/login``), and not every browser
says where the post came from (no ``Origin``, or ``Origin: null``). So each
form carries a token the other site cannot read: an HMAC, under a secret made
at start (never stored), of the client's address and MAC and of the current
time window. Nothing is kept per client; a token is valid in its window and
the next one (between ``window`` and twice that), and for that client only.

The same token goes into every form of a page (login by terms, by voucher,
logout): a page that can read one form can read them all, so separate
tokens per form would add nothing. A restart of the daemon makes new tokens;
a post with an old one gets the form again (403), not a login or logout.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

DEFAULT_WINDOW = 3 * 3600.0
FIELD = "csrf"  # the form field's name
TOKEN_BYTES = 16


class FormTokens:
    def __init__(self, secret: bytes | None = None, *, window: float = DEFAULT_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window}")
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self.window = window
        self._clock = clock

    def _sign(self, ip: str, mac: str | None, slot: int) -> str:
        message = f"{ip}|{mac or '-'}|{slot}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[: TOKEN_BYTES * 2]

    def _slot(self) -> int:
        return int(self._clock() // self.window)

    def issue(self, ip: str, mac: str | None) -> str:
        """The token to put in this client's forms now."""
        return self._sign(ip, mac, self._slot())

    def valid(self, token: str, ip: str, mac: str | None) -> bool:
        """True when ``token`` was issued to this client in this window or the last one."""
        if not token or len(token) != TOKEN_BYTES * 2:
            return False
        slot = self._slot()
        return any(hmac.compare_digest(token, self._sign(ip, mac, s)) for s in (slot, slot - 1))
