"""Plain data shared by the planners, the store and the adapters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SessionSource = Literal["terms", "voucher", "manual"]
QuotaState = Literal["", "slow", "cut"]
# plans: (plan, validity -> vouchers.duration, shared devices -> max_devices); None: keep
PlanStamp = tuple[str, int | None, int | None]
VoucherLimits = tuple[str, int, int]  # (code, duration, max_devices) of one voucher


@dataclass(frozen=True, slots=True)
class Session:
    """One authorized client. Times are Unix seconds (integers)."""

    mac: str  # lower-case, colon separated
    ip: str  # IPv4 address leased to the client
    started: int
    expires: int  # absolute end of the session
    idle_timeout: int  # seconds without traffic before the client must log in again
    source: SessionSource
    voucher: str | None = None
    plan: str | None = None

    def remaining(self, now: int) -> int:
        return max(0, self.expires - now)


@dataclass(frozen=True, slots=True)
class Voucher:
    code: str  # canonical form "ABCDE-FGHJK": 10 symbols, no 0/O/1/I
    duration: int  # seconds of access from first use
    plan: str | None
    created: int
    batch: str
    max_devices: int = 1
    first_used: int | None = None
    revoked: bool = False
    devices: tuple[str, ...] = ()  # MACs that redeemed it
    batch_name: str = ""  # what staff called the batch ("Posyandu Mei"); "" when unnamed
    serial: int = 0  # 1..N within the batch, printed on the sheet; the store numbers them
    # plans (Step 11): usage so far and what was sold (docs/plans.md)
    used_seconds: int = 0  # time of use: seconds some device of it was online (idle excluded)
    bytes_down: int = 0  # counted in the kernel, over every device of the voucher
    bytes_up: int = 0
    quota_state: QuotaState = ""  # "" within quota, "slow" fair use, "cut" used up
    price: int = 0  # rupiah: the plan's price when the voucher was created
    seller: str = ""  # who sells it (a batch's seller); "" unknown
    imported: bool = False  # sold before desanet (vouchers import), not made here

    def state(self, now: int) -> str:
        if self.revoked:
            return "revoked"
        if self.first_used is None:
            return "unused"
        if self.first_used + self.duration <= now:
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class ClientView:
    """Who is behind one LAN address right now, as the portal sees it."""

    ip: str
    mac: str | None  # None when the address is not on the LAN (no neighbour entry)
    session: Session | None
    voucher: Voucher | None = None  # the session's voucher (plans: what the status page shows)
