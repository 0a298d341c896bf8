"""The one errors module: domain errors that speak no transport.

A service raises one of the small family below; each transport maps it in
one table (``gateway/control/errors.py`` for the control API's HTTP status,
the MQTT command replies later map from the same classes). No error here
carries an HTTP status.

    DesanetError
      Invalid            a request or config value is wrong (field, found, expected, example)
        ConfigError      many problems of one config file at once
      NotFound           the thing named does not exist (no session for that MAC)
      Conflict           the request is valid but the state does not allow it now
      Refused            a rule says no; ``reason`` is a stable key (portal, vouchers, apply)
        PortalDenied, VoucherError, ApplyFailed
      Unavailable        something the request needs is down (upstream, daemon)
        UpstreamDown
      subsystem failures StoreError, FirewallError, ShapingError, ServiceError, LabError

Third-party exceptions are translated at the adapter boundary
(``raise FirewallError(...) from exc``) so callers handle our types only.
Every message says what was expected, what was found and what to do.
"""

from __future__ import annotations

from typing import Any


class DesanetError(Exception):
    """Base class for every error desanet raises on purpose."""


# -- request and state errors -------------------------------------------------------


class Invalid(DesanetError):
    """A value is wrong: names the field, what was found, what was expected, an example."""

    def __init__(self, field: str, found: Any, expected: str, example: str | None = None) -> None:
        self.field = field
        self.found = found
        self.expected = expected
        self.example = example
        text = f"field {field}: found {found!r}; expected {expected}"
        if example is not None:
            text += f", e.g. {example}"
        super().__init__(text)


class ConfigError(Invalid):
    """A config file is missing, unreadable or invalid.

    ``problems`` holds one human-readable line per problem, each starting with
    the field path, so a technician sees every mistake at once.
    """

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        self.field = problems[0].split(":", 1)[0] if problems else ""
        self.found = None
        self.expected = "a valid config"
        self.example = None
        head = f"{source}: " if source else ""
        DesanetError.__init__(self, head + "; ".join(problems))


class NotFound(DesanetError):
    """The thing a request names does not exist (a client with no session, a batch)."""


class Conflict(DesanetError):
    """The request is well formed but the current state does not allow it."""


class AmbiguousClient(Conflict):
    """A MAC holds several DHCP leases: "authorize that MAC" could open a copier's address.

    ``addresses`` lists them; the caller names one (``ip``). reason "several_leases".
    """

    def __init__(self, mac: str, addresses: list[str]) -> None:
        self.mac = mac
        self.addresses = addresses
        self.reason = "several_leases"
        super().__init__(
            f"{mac} holds {len(addresses)} DHCP leases ({', '.join(addresses)}): another "
            "device may be copying its MAC; not authorized. Check which address is the "
            "villager's (ask them, or look at the device) and pass it: --ip ADDRESS")


class Refused(DesanetError):
    """A rule refused the request; ``reason`` is a stable key for messages and clients."""

    def __init__(self, reason: str, message: str = "") -> None:
        self.reason = reason
        super().__init__(message or reason)


class PortalDenied(Refused):
    """Login refused for a reason the portal page explains.

    ``reason`` is a message key: "mode", "full", "blocked", "no_mac".
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(reason, message or f"login refused: {reason}")


class VoucherError(Refused):
    """A voucher code is unknown, used up, revoked or malformed.

    ``reason`` is a stable key the portal turns into a translated message:
    "malformed", "unknown", "revoked", "expired", "in_use", and for plans (Step 11)
    "time_used" (its time of use ran out) and "quota_used" (its quota ran out, cut).
    ``devices``: with "in_use", how many devices may use it at once (all in use now).
    """

    def __init__(self, reason: str, message: str = "", devices: int = 0) -> None:
        super().__init__(reason, message)
        self.devices = devices


class ApplyFailed(Refused):
    """A config could not be applied; every step already taken was undone.

    ``step`` names the step that failed ("dnsmasq", "firewall", "portal" ...).
    """

    def __init__(self, step: str, reason: str) -> None:
        self.step = step
        super().__init__("apply_failed", f"config not applied, step {step} failed: {reason}; "
                                         "every step already taken was undone, the running "
                                         "config stays")


class Unavailable(DesanetError):
    """Something the request needs is down (an upstream service, the daemon)."""


class UpstreamDown(Unavailable):
    """The upstream could not be used; ``status`` is the 5xx it sent, if any."""

    def __init__(self, text: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(text)


# -- subsystem failures ------------------------------------------------------------------


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


class SubmissionTooLarge(Invalid):
    """A form body is larger than the offline queue accepts."""

    def __init__(self, message: str) -> None:
        DesanetError.__init__(self, message)
        self.field = "body"
        self.found = None
        self.expected = message
        self.example = None


class OutboxStateError(Conflict):
    """A transition was asked of a submission that is not in a state allowing it."""


# -- transport side ------------------------------------------------------------------------


class ControlError(DesanetError):
    """An error answer of the control API, as the client sees it.

    Raised by the control client only (never by the core). ``status`` is the
    HTTP status of the answer, ``kind`` the error family the daemon named
    ("invalid", "not_found", "conflict", "refused", "unavailable", "internal").
    """

    def __init__(self, message: str, status: int = 400, kind: str = "",
                 field: str | None = None, reason: str | None = None) -> None:
        self.status = status
        self.kind = kind
        self.field = field
        self.reason = reason
        super().__init__(message)
