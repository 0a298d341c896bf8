"""Pure session rules: how long a login lasts and which sessions must end."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from gateway.config.schema import Config
from gateway.core.usage import time_left
from gateway.errors import VoucherError
from gateway.model import Session, SessionSource, Voucher


def new_session(
    cfg: Config,
    mac: str,
    ip: str,
    now: int,
    source: SessionSource,
    voucher: Voucher | None = None,
    duration: int | None = None,
    plan: str | None = None,
) -> Session:
    """Build the session a login grants.

    A voucher's clock starts at its first use, so a second device or a
    re-login on the same voucher gets only what is left of it.
    """
    if voucher is not None:
        refuse_used_up(cfg, voucher)
        start = voucher.first_used if voucher.first_used is not None else now
        expires = start + voucher.duration
        plan = voucher.plan
    else:
        expires = now + (duration or cfg.portal.session_length)
    return Session(
        mac=mac,
        ip=ip,
        started=now,
        expires=expires,
        idle_timeout=cfg.portal.idle_timeout,
        source=source,
        voucher=voucher.code if voucher else None,
        plan=plan,
    )


def refuse_used_up(cfg: Config, voucher: Voucher) -> None:
    """Raise VoucherError when the voucher's plan limits are used up: its time of use
    ("time_used") or, cut off, its quota ("quota_used"). Validity is the store's check."""
    left = time_left(cfg, voucher)
    if left is not None and left <= 0:
        raise VoucherError("time_used")
    if voucher.quota_state == "cut":
        raise VoucherError("quota_used")


def idle_sessions(
    sessions: Iterable[Session], active: Mapping[tuple[str, str], int], now: int
) -> list[Session]:
    """Sessions whose activity element has expired in the kernel.

    ``active`` is the kernel's activity set (every forwarded packet refreshes
    it). A session younger than its idle timeout cannot be idle yet; that
    guards the moment between a login and its first packet.
    """
    return [
        s for s in sessions
        if (s.mac, s.ip) not in active and now - s.started >= s.idle_timeout
    ]


def stale_kernel_entries(
    sessions: Iterable[Session], authorized: Iterable[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Kernel authorizations with no active session behind them."""
    wanted = {(s.mac, s.ip) for s in sessions}
    return [key for key in authorized if key not in wanted]


# -- identity (lan): whose address a MAC may claim -------------------------------------


def leased_addresses(leases: Mapping[str, str], mac: str) -> list[str]:
    """The addresses the DHCP leases give ``mac`` (sorted); two or more mean someone
    asked for a lease in its name (another client id, same MAC)."""
    mac = mac.lower()
    return sorted((ip for ip, m in leases.items() if m.lower() == mac), key=_ip_key)


def _ip_key(ip: str) -> tuple[int, str]:
    try:
        return int(ipaddress.IPv4Address(ip)), ip
    except ValueError:
        return -1, ip


def takeover_refused(current: Session | None, ip: str, source: SessionSource,
                     leases: Mapping[str, str]) -> bool:
    """True when a portal login must not replace ``current``.

    A portal login (terms or voucher) proves nothing about who owns the MAC:
    anyone can copy it. So a login from ``ip`` never ends the same MAC's live
    session on another address while that address is still leased to the MAC
    (its owner is still there). When the old address's lease is gone or went
    to another MAC, the phone really moved (a new lease) and the login
    replaces the old session as before. Staff (``manual``) may always
    replace; a re-login from the same address is the owner's own.
    """
    if current is None or current.ip == ip or source == "manual":
        return False
    return leases.get(current.ip, "").lower() == current.mac.lower()


def missing_kernel_entries(
    sessions: Iterable[Session],
    authorized: Iterable[tuple[str, str]],
    active: Mapping[tuple[str, str], int],
    now: int,
    listed_at: float,
) -> list[Session]:
    """Live sessions the kernel does not let out although it should.

    A session missing from ``auth4`` (the kernel lost it: a crash between the
    store's commit and the kernel write, a table flushed by hand), or missing
    from ``active4`` while younger than its idle timeout (it cannot be idle
    yet). Sessions started within a second or two of ``listed_at`` (when the
    kernel's sets were listed) are left out: their entries may have gone in
    after the listing.
    """
    auth = set(authorized)
    return [
        s for s in sessions
        if s.started + 2 < listed_at and (
            (s.mac, s.ip) not in auth
            or ((s.mac, s.ip) not in active and now - s.started < s.idle_timeout))
    ]
