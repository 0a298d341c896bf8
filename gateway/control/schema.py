"""Typed requests and answers of the control API, shared by the server and the clients.

A transport parses what arrived with :func:`parse_request` (or
:func:`parse_request_bytes`) and gets either a validated model or one
:class:`RequestInvalid` naming every problem, formatted like config file
problems (``gateway.config.loader.format_errors``) so that the CLI, the TUI
and MQTT commands show identical messages::

    field plan: ["school"] is not a plan name; write a name of 1..32 printable
    characters or null, e.g. "school"

Values are normalised on the way in: MACs to lower-case colon form, durations
to whole seconds, voucher codes to "XXXXX-XXXXX". Checks that need the running
config (is the plan in shaping.plans, is the IP inside the LAN) are the
core's, not this module's.

Answer models (``*Out``) allow extra keys, so a newer daemon adding a field
does not break an older client; ``to_json()`` gives back exactly the keys
that arrived (the CLI's ``--json`` output is a public contract).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from gateway.config.loader import format_errors
from gateway.config.schema import normalize_mac
from gateway.config.units import parse_duration
from gateway.errors import DesanetError, Invalid, VoucherError

# nftables refuses element timeouts of about 100 years and more; a year is
# already more than any session or voucher a village hands out.
MAX_DURATION = 366 * 86400
# A trial longer than a day is not a trial; "5m" is the usual.
MAX_CONFIRM = 86400
MAX_VOUCHERS_PER_REQUEST = 1000
MAX_DEVICES = 10
MAX_PLAN_NAME = 32
MAX_BATCH_NAME = 64
MAX_BY = 64
MAX_EVENTS_TIMEOUT = 60.0


class RequestInvalid(Invalid):
    """A request with one or more bad fields; ``problems`` has one line per problem.

    Each line starts with ``field <path>:``; ``field``/``found``/``expected``
    describe the first problem (what a client shows when it shows one).
    """

    def __init__(self, problems: list[str], fields: list[str], found: Any = None) -> None:
        self.problems = problems
        self.fields = fields
        self.field = fields[0] if fields else "body"
        self.found = found
        first = problems[0] if problems else "invalid request"
        self.expected = first.split(": ", 1)[1] if ": " in first else first
        self.example = None
        DesanetError.__init__(self, "; ".join(problems) or "invalid request")


# -- field types ---------------------------------------------------------------------


def _quote(value: object) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _mac(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{_quote(value)} is not a MAC address; write e.g. \"02:00:00:aa:bb:cc\"")
    return normalize_mac(value)


def _duration(value: object, limit: int = MAX_DURATION) -> int:
    seconds = parse_duration(value)  # type: ignore[arg-type]  # it checks the type itself
    if seconds > limit:
        days = f"{limit // 86400} days" if limit >= 2 * 86400 else f"{limit // 3600} hours"
        example = '"30d"' if limit >= 30 * 86400 else '"10m"'
        raise ValueError(f"{_quote(value)} is longer than {days}; write e.g. {example}")
    return seconds


def _optional_duration(value: object) -> int | None:
    return None if value is None else _duration(value)


def _confirm(value: object) -> int | None:
    return None if value is None else _duration(value, MAX_CONFIRM)


def _name(what: str, limit: int, example: str) -> Any:
    def check(value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip() or len(value) > limit \
                or not value.isprintable():
            raise ValueError(f"{_quote(value)} is not a {what}; write a name of 1..{limit} "
                             f"printable characters or null, e.g. \"{example}\"")
        return value
    return check


def _ipv4(value: object) -> str | None:
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError
        return str(ipaddress.IPv4Address(value.strip()))
    except ValueError:
        raise ValueError(f"{_quote(value)} is not an IPv4 address; write e.g. \"10.42.0.100\"") \
            from None


def _code(value: object) -> str:
    from gateway.portal.vouchers import normalize_code

    try:
        return normalize_code(value)  # type: ignore[arg-type]  # it checks the type itself
    except VoucherError as exc:
        raise ValueError(f"{_quote(value)} is not a voucher code ({exc}); "
                         "write e.g. \"K7MQX-3PAR9\"") from None


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{_quote(value)[:40]} is not text; send the TOML file's text as a string")
    return value


Mac = Annotated[str, PlainValidator(_mac), Field(examples=["02:00:00:aa:bb:cc"])]
RequestDuration = Annotated[int, PlainValidator(_duration), Field(examples=["1d"])]
OptionalDuration = Annotated[int | None, PlainValidator(_optional_duration), Field(examples=["4h"])]
ConfirmWindow = Annotated[int | None, PlainValidator(_confirm), Field(examples=["5m"])]
PlanName = Annotated[str | None, PlainValidator(_name("plan name", MAX_PLAN_NAME, "school")),
                     Field(examples=["school"])]
BatchName = Annotated[str | None, PlainValidator(_name("batch name", MAX_BATCH_NAME,
                                                       "2024-05-posyandu")),
                      Field(examples=["2024-05-posyandu"])]
# sheet: what staff call a batch, printed on the voucher sheet.
BatchTitle = Annotated[str | None, PlainValidator(_name("batch name", MAX_BATCH_NAME, "Posyandu Mei")),
                       Field(examples=["Posyandu Mei"])]
# office: who sells a batch ("Warung Bu Sari"), counted in the sales report.
SellerName = Annotated[str | None, PlainValidator(_name("seller name", MAX_BATCH_NAME,
                                                        "Warung Bu Sari")),
                       Field(examples=["Warung Bu Sari"])]
By = Annotated[str | None, PlainValidator(_name("name", MAX_BY, "budi")), Field(examples=["budi"])]
IPv4 = Annotated[str | None, PlainValidator(_ipv4), Field(examples=["10.42.0.100"])]
VoucherCode = Annotated[str, PlainValidator(_code), Field(examples=["K7MQX-3PAR9"])]
ConfigText = Annotated[str, PlainValidator(_text), Field(examples=["[site]\nname = ..."])]


# -- requests ------------------------------------------------------------------------


class Request(BaseModel):
    """A control request body: unknown keys are an error, values are normalised."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> dict[str, Any]:
        """The body to send (normalised values: seconds, canonical MAC and code)."""
        return self.model_dump(mode="json")


class AuthRequest(Request):
    """POST /v1/clients/auth; ``ip`` defaults to the DHCP lease / neighbour entry."""

    mac: Mac
    ip: IPv4 = None
    duration: OptionalDuration = None
    plan: PlanName = None
    # A villager's voucher session is replaced only when asked for (refused otherwise).
    force: bool = Field(False, strict=True, examples=[False])


class DeauthRequest(Request):
    """POST /v1/clients/deauth."""

    mac: Mac


class PlanRequest(Request):
    """POST /v1/clients/plan; ``plan`` is required, null means the default plan."""

    mac: Mac
    plan: PlanName


class VoucherCreateRequest(Request):
    """POST /v1/vouchers; without ``batch`` the daemon names the batch."""

    count: int = Field(1, strict=True, ge=1, le=MAX_VOUCHERS_PER_REQUEST, examples=[10])
    duration: RequestDuration
    max_devices: int = Field(1, strict=True, ge=1, le=MAX_DEVICES, examples=[1])
    plan: PlanName = None
    batch: BatchName = None
    name: BatchTitle = None  # sheet
    seller: SellerName = None  # office: who sells the batch (the sales report)


class VoucherRevokeRequest(Request):
    """POST /v1/vouchers/revoke."""

    code: VoucherCode


class VoucherReleaseRequest(Request):
    """POST /v1/vouchers/release: free a device slot (``mac``) or all of them (null)."""

    code: VoucherCode
    mac: Mac | None = None


class ConfigApplyRequest(Request):
    """POST /v1/config/apply; with ``confirm`` the change is a trial of that many seconds."""

    text: ConfigText
    confirm: ConfirmWindow = None
    by: By = None


class ConfigTextRequest(Request):
    """POST /v1/config/diff."""

    text: ConfigText


class ByRequest(Request):
    """POST /v1/config/confirm, /v1/config/rollback (and /v1/reload): who asked."""

    by: By = None


class ConfirmRequest(Request):
    """POST /v1/config/confirm: who asked, and what proves their way in survived.

    Without ``proof`` the daemon refuses a confirm from the connection or login session
    that applied the trial (a script's apply-then-confirm proves nothing). ``"terminal"``
    says the client saw its own terminal answer after the change ran (the TUI's cursor
    position query, or a key the technician pressed): the technician's SSH or serial
    session carried a round trip through the new config, so the same login may confirm."""

    by: By = None
    proof: Literal["terminal"] | None = None


class EventsQuery(Request):
    """GET /v1/events?since=SEQ&timeout=SECONDS (query strings: numbers arrive as text)."""

    since: int = Field(0, ge=0, examples=[0])
    timeout: float = Field(25.0, ge=0, le=MAX_EVENTS_TIMEOUT, examples=[25])


R = TypeVar("R", bound=BaseModel)


def parse_request(model: type[R], data: object) -> R:
    """Validate ``data`` (decoded JSON or a query dict) as ``model``.

    Raises :class:`RequestInvalid` (an :class:`~gateway.errors.Invalid`) listing
    every problem, each line "field <path>: <message>".
    """
    if not isinstance(data, dict):
        raise RequestInvalid(
            [f"field body: {_quote(data)[:60]} is not a JSON object; send e.g. "
             f"{json.dumps(_example_body(model))}"], ["body"], data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        fields = [_loc(err["loc"]) or "body" for err in errors]
        problems = [
            "field " + line.replace("(top level): ", "body: ", 1)
            for line in format_errors(exc, root=model)
        ]
        found = errors[0].get("input") if errors else None
        raise RequestInvalid(problems, fields, found) from None


def parse_request_bytes(model: type[R], raw: bytes | str) -> R:
    """Decode a JSON body (empty means {}) and validate it like :func:`parse_request`."""
    if not raw or not raw.strip():
        return parse_request(model, {})
    try:
        # The fast path (pydantic-core parses and validates in one pass); any problem
        # is reported by the slow path below, with every field named.
        return model.model_validate_json(raw)
    except ValidationError:
        pass
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestInvalid([f"field body: not JSON ({exc})"], ["body"]) from None
    return parse_request(model, data)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _example_body(model: type[BaseModel]) -> dict[str, Any]:
    return {name: f.examples[0] for name, f in model.model_fields.items()
            if f.is_required() and f.examples}


# -- answers -------------------------------------------------------------------------


class Out(BaseModel):
    """An answer of the daemon. Extra keys are kept; ``to_json()`` returns what arrived."""

    model_config = ConfigDict(extra="allow")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


Number = int | float  # unix times: ints stay ints, floats stay floats


class SessionOut(Out):
    """A client row: an authorized session, or (``authorized`` false) a DHCP client."""

    mac: str
    ip: str
    authorized: bool = True
    started: int | None = None
    expires: int | None = None
    remaining: int | None = None
    idle_timeout: int | None = None
    source: str | None = None
    voucher: str | None = None
    plan: str | None = None


class VoucherOut(Out):
    code: str
    duration: int
    plan: str | None = None
    created: int
    batch: str
    max_devices: int = 1
    first_used: int | None = None
    revoked: bool = False
    devices: list[str] = Field(default_factory=list)
    state: str
    batch_name: str = ""  # sheet: "" for a batch without a name
    serial: int = 0  # sheet: 1..N within the batch
    price: int = 0  # office: rupiah, the plan's price when created
    seller: str = ""  # office: who sells it ("" unknown)
    imported: bool = False  # office: sold before desanet (vouchers import)
    expires: int | None = None  # first_used + duration; None until first use
    created_iso: str | None = None  # the times in ISO 8601 with the site's offset
    first_used_iso: str | None = None
    expires_iso: str | None = None


class ConfigChangeOut(Out):
    """One changed config value; ``old``/``new`` are None when the key was added/removed."""

    path: str
    old: Any = None
    new: Any = None


class TrialOut(Out):
    """A config on trial: rolled back at ``deadline`` unless confirmed."""

    started: Number
    deadline: Number
    previous_version: str
    by: str | None = None


class RefusalOut(Out):
    time: Number
    reason: str


class EventOut(Out):
    """One event of the bus; the other keys depend on ``type``."""

    seq: int
    time: Number
    type: str


class ConfigStatusOut(Out):
    version: str
    path: str | None = None
    last_change: EventOut | None = None
    trial: TrialOut | None = None
    last_refusal: RefusalOut | None = None


class EventsOut(Out):
    events: list[EventOut]
    next: int
    boot: int | None = None  # when the daemon started: a new value means it restarted
    gap: bool = False  # some events were pushed out of the ring before they were read


class ConfigShowOut(Out):
    version: str
    path: str | None = None
    config: dict[str, Any]
    text: str


class ConfigDiffOut(Out):
    changes: list[ConfigChangeOut]


class ConfigApplyOut(Out):
    applied: bool
    version: str
    previous_version: str | None = None
    changes: list[ConfigChangeOut] = Field(default_factory=list)
    trial: TrialOut | None = None


class ConfigConfirmOut(Out):
    confirmed: bool
    version: str


class ConfigRollbackOut(Out):
    rolled_back: bool
    version: str


class ReloadOut(Out):
    reloaded: bool
    version: str | None = None
    changes: list[ConfigChangeOut] = Field(default_factory=list)


class ErrorOut(Out):
    """The body of every error answer (see ``gateway.control.errors``)."""

    error: str
    kind: str = "internal"
    field: str | None = None
    reason: str | None = None
    step: str | None = None
    problems: list[str] | None = None


__all__ = [
    "MAX_BATCH_NAME", "MAX_CONFIRM", "MAX_DURATION", "MAX_VOUCHERS_PER_REQUEST",
    "AuthRequest", "ByRequest", "ConfigApplyOut", "ConfigApplyRequest", "ConfigChangeOut",
    "ConfigConfirmOut", "ConfigDiffOut", "ConfigRollbackOut", "ConfigShowOut", "ConfigStatusOut",
    "ConfigTextRequest", "DeauthRequest", "ErrorOut", "EventOut", "EventsOut", "EventsQuery",
    "Out", "PlanRequest", "RefusalOut", "ReloadOut", "Request", "RequestInvalid", "SessionOut",
    "TrialOut", "VoucherCreateRequest", "VoucherOut", "VoucherReleaseRequest",
    "VoucherRevokeRequest", "parse_request",
    "parse_request_bytes",
]
