"""Domain error -> control API answer: the one table.

Every class of ``gateway/errors.py`` is mapped here to an HTTP status and a
``kind`` (the error family a client branches on). A class not in the table
takes the entry of its nearest ancestor in the MRO; the unit test
``tests/unit/test_control_errors.py`` lists every class of ``gateway.errors``
and fails for one that has no entry of its own, so a new error is mapped on
purpose, not by accident.

The body of every error answer::

    {"error": "<message naming the field>", "kind": "invalid|not_found|conflict|
     refused|unavailable|internal", "field": "...", "reason": "...", "step": "...",
     "problems": ["field x: ...", ...]}

``field``, ``reason``, ``step`` and ``problems`` appear when the error has them.
An exception that is not a :class:`DesanetError` is a bug: 500, kind
"internal", a message naming its type and never its traceback (that goes to
the daemon log, which is the caller's job).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from gateway import errors as E


class Mapping(NamedTuple):
    status: int
    kind: str


INVALID = "invalid"
NOT_FOUND = "not_found"
CONFLICT = "conflict"
REFUSED = "refused"
UNAVAILABLE = "unavailable"
INTERNAL = "internal"
KINDS = (INVALID, NOT_FOUND, CONFLICT, REFUSED, UNAVAILABLE, INTERNAL)

TABLE: dict[type[BaseException], Mapping] = {
    E.DesanetError: Mapping(500, INTERNAL),
    E.Invalid: Mapping(400, INVALID),
    E.ConfigError: Mapping(400, INVALID),
    E.SubmissionTooLarge: Mapping(413, INVALID),
    E.NotFound: Mapping(404, NOT_FOUND),
    E.Conflict: Mapping(409, CONFLICT),
    E.AmbiguousClient: Mapping(409, CONFLICT),  # reason "several_leases"
    E.OutboxStateError: Mapping(409, CONFLICT),
    E.Refused: Mapping(409, REFUSED),
    E.PortalDenied: Mapping(409, REFUSED),
    # Unknown, revoked, expired and used-up codes: "no usable voucher by that code".
    # A malformed code never gets here: the request schema refuses it (400 invalid).
    E.VoucherError: Mapping(404, REFUSED),
    # The config was valid but a step of applying it failed; all undone.
    E.ApplyFailed: Mapping(422, REFUSED),
    E.Unavailable: Mapping(503, UNAVAILABLE),
    E.UpstreamDown: Mapping(503, UNAVAILABLE),
    E.StoreError: Mapping(500, INTERNAL),
    E.FirewallError: Mapping(500, INTERNAL),
    E.ShapingError: Mapping(500, INTERNAL),
    E.ServiceError: Mapping(500, INTERNAL),
    E.LabError: Mapping(500, INTERNAL),
    # Only a client raises it; a daemon relaying one (a proxied call) keeps its status.
    E.ControlError: Mapping(502, INTERNAL),
}

_INTERNAL = Mapping(500, INTERNAL)
KIND_OF_STATUS = {400: INVALID, 404: NOT_FOUND, 409: CONFLICT, 422: REFUSED, 503: UNAVAILABLE}


def mapping_for(exc_type: type[BaseException]) -> Mapping:
    """The table entry of the most specific class in ``exc_type``'s MRO."""
    for cls in exc_type.__mro__:
        found = TABLE.get(cls)
        if found is not None:
            return found
    return _INTERNAL


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for ``exc``; see the module docstring."""
    if not isinstance(exc, E.DesanetError):
        return 500, {"error": f"internal error ({type(exc).__name__}); see the daemon log",
                     "kind": INTERNAL}
    status, kind = mapping_for(type(exc))
    if isinstance(exc, E.ControlError):  # old code raising ControlError(message, status)
        status, kind = exc.status, exc.kind or KIND_OF_STATUS.get(exc.status, INTERNAL)
    body: dict[str, Any] = {"error": str(exc) or type(exc).__name__, "kind": kind}
    for key in ("field", "reason", "step"):
        value = getattr(exc, key, None)
        if isinstance(value, str) and value:
            body[key] = value
    problems = getattr(exc, "problems", None)
    if isinstance(problems, list) and problems:
        body["problems"] = [str(p) for p in problems]
    return status, body


__all__ = ["CONFLICT", "INTERNAL", "INVALID", "KINDS", "KIND_OF_STATUS", "NOT_FOUND", "REFUSED", "TABLE",
           "UNAVAILABLE", "Mapping", "error_body", "mapping_for"]
