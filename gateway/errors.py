"""The one errors module.

Third-party exceptions are translated at the adapter boundary
(``raise FirewallError(...) from exc``) so callers handle our types only.
Every message says what was expected, what was found and what to do.
"""

from __future__ import annotations


class DesanetError(Exception):
    """Base class for every error desanet raises on purpose."""


class ConfigError(DesanetError):
    """A config file is missing, unreadable or invalid.

    ``problems`` holds one human-readable line per problem, each starting with
    the field path, so a technician sees every mistake at once.
    """

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(problems))


class StoreError(DesanetError):
    """The SQLite state store failed."""


class FirewallError(DesanetError):
    """nftables refused a ruleset or a set operation."""


class ShapingError(DesanetError):
    """tc (via netlink) refused a qdisc or class change."""


class ServiceError(DesanetError):
    """A child service (dnsmasq, hostapd) could not be configured or started."""


class LabError(DesanetError):
    """The virtual village could not be built, queried or torn down."""


class ControlError(DesanetError):
    """A control API request failed; ``status`` is the HTTP-like status code."""

    def __init__(self, message: str, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


class VoucherError(DesanetError):
    """A voucher code is unknown, used up, revoked or malformed.

    ``reason`` is a stable key the portal turns into a translated message:
    "malformed", "unknown", "revoked", "expired", "in_use".
    """

    def __init__(self, reason: str, message: str = "") -> None:
        self.reason = reason
        super().__init__(message or reason)


class SubmissionTooLarge(DesanetError):
    """A form body is larger than the offline queue accepts."""


class OutboxStateError(DesanetError):
    """A transition was asked of a submission that is not in a state allowing it."""
