"""The voucher service: named batches, revocation, release, and the rules of redeeming.

Redeeming happens inside a login (:meth:`SessionService.authorize` calls the
store's ``redeem_voucher``, one transaction: first use starts the clock,
``max_devices`` bounds the phones). This service creates and revokes.
"""

from __future__ import annotations

import logging
import secrets
import unicodedata
from collections.abc import Callable

from gateway.clock import Clock
from gateway.config.schema import Config
from gateway.core.events import (
    EndReason,
    EventBus,
    VoucherBatchCreated,
    VoucherReleased,
    VoucherRevoked,
)
from gateway.core.plans import voucher_terms
from gateway.core.sessions import SessionService
from gateway.core.voucher_codes import generate_codes
from gateway.errors import Invalid
from gateway.model import Voucher
from gateway.ports import SessionStorePort

log = logging.getLogger("desanet.vouchers")

MAX_BATCH_NAME = 64  # fits a card's line on the printed sheet


def check_batch_name(name: str | None) -> str:
    """The batch name, trimmed ("" for none). Raises Invalid("name") for one that is too
    long or holds control characters (it is printed, logged and shown in terminals)."""
    if name is None:
        return ""
    text = name.strip() if isinstance(name, str) else name
    if not isinstance(text, str) or len(text) > MAX_BATCH_NAME or not text.isprintable():
        raise Invalid("name", name, f"a batch name of at most {MAX_BATCH_NAME} printable "
                      "characters", '"Posyandu Mei"')
    return text


def check_seller(name: str | None) -> str:
    """A seller's name, trimmed ("" for none): the batch name's rules, field "seller"."""
    try:
        return check_batch_name(name)
    except Invalid:
        raise Invalid("seller", name, f"a seller name of at most {MAX_BATCH_NAME} printable "
                      "characters", '"Bu Sari"') from None


def batch_id(name: str, now: int, salt: str) -> str:
    """A batch id to type after --batch: "posyandu-mei-3f2a" from a name, else
    "<creation time>-3f2a"."""
    plain = unicodedata.normalize("NFKD", name.lower()).encode("ascii", "ignore").decode()
    slug = "-".join("".join(ch if ch.isalnum() else " " for ch in plain).split())[:40].strip("-")
    return f"{slug or now}-{salt}"


class VoucherService:
    def __init__(self, config: Callable[[], Config], store: SessionStorePort,
                 sessions: SessionService, clock: Clock, bus: EventBus) -> None:
        self._config = config
        self.store = store
        self.sessions = sessions
        self.clock = clock
        self.bus = bus

    async def create_batch(self, count: int, duration: int, max_devices: int = 1,
                           plan: str | None = None, batch: str | None = None,
                           name: str | None = None, seller: str | None = None,
                           ) -> tuple[str, list[Voucher]]:
        """Create ``count`` unused vouchers in one transaction; return the batch id.

        ``name`` is what staff call the batch ("Posyandu Mei", printed on the sheet);
        without ``batch`` the id is made from it. Vouchers are numbered 1..N in their
        batch. Each stores its plan's price now (a later price change applies to new
        batches only) and ``seller``, who sells the batch (office: the sales report).
        Raises Invalid (unknown plan, bad name or seller: nothing created), StoreError.
        """
        self.sessions.check_plan(plan)
        duration, max_devices, price = voucher_terms(self._config(), plan, duration, max_devices)
        label = check_batch_name(name)
        who = check_seller(seller)
        now = self.clock.now()
        ident = batch or batch_id(label, now, secrets.token_hex(2))
        made = [
            Voucher(code=c, duration=duration, plan=plan, created=now, batch=ident,
                    max_devices=max_devices, batch_name=label, price=price, seller=who)
            for c in generate_codes(count)
        ]
        stored = await self.store.add_vouchers(made)
        log.info("created %d voucher(s) in batch %s", count, ident)
        self.bus.publish(VoucherBatchCreated(ident, count, plan, duration))
        return ident, stored

    async def list(self, batch: str | None = None) -> list[Voucher]:
        return await self.store.vouchers(batch)

    async def revoke(self, code: str) -> Voucher:
        """Revoke a voucher and end every session it opened, in the kernel too.

        Raises VoucherError("unknown").
        """
        voucher, ended = await self.store.revoke_voucher(code, self.clock.now())
        await self.sessions.cut_off_ended(ended, EndReason.VOUCHER_REVOKED)
        log.info("revoked voucher %s (%d session(s) ended)", code, len(ended))
        self.bus.publish(VoucherRevoked(code, len(ended)))
        return voucher

    async def release(self, code: str, mac: str | None = None) -> Voucher:
        """Free the device slot of ``mac`` (None: all of them) so another phone may use
        the voucher (a villager changed phones); its sessions end at once, its clock
        keeps running. Raises VoucherError("unknown").
        """
        voucher, ended = await self.store.release_voucher(code, mac, self.clock.now())
        await self.sessions.cut_off_ended(ended, EndReason.VOUCHER_RELEASED)
        log.info("released voucher %s for %s (%d session(s) ended)", code, mac or "every device",
                 len(ended))
        self.bus.publish(VoucherReleased(code, mac, len(ended)))
        return voucher
