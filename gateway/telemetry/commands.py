"""Signed remote commands: the envelope, its signature and its checks (pure, no I/O).

The wire form (docs/mqtt.md "Commands", docs/schemas/command-request.schema.json)
---------------------------------------------------------------------------------
A request on ``<prefix>/<site>/cmd/req`` is a JSON object::

    {"v": 1, "body": "<the command, itself JSON, as a string>", "sig": "<base64>"}

``sig`` is the Ed25519 signature of the exact UTF-8 bytes of ``body``; the
signature travels beside the bytes it signs, so no canonical JSON is needed
(the gateway never re-serializes what it verifies). ``body`` decodes to::

    {"v": 1, "id": "...", "site": "...", "issued": <unix s>, "expires": <unix s>,
     "name": "deauth", "args": {...}}

Operator public keys are provisioned in ``telemetry.command_keys`` as
``ed25519:<base64 of the 32 raw key bytes>`` (what ``desanet fleet keygen``
prints); a signature made by any of them is accepted.

Checks, in order, each with a stable reason code in the response:
``malformed`` (the outer object or a body field; ``field`` names it),
``unsigned``, ``bad_signature`` (no provisioned key verifies it, which also
covers an unknown key), then, on the authenticated body, ``malformed`` again,
``other_site``, ``not_yet_valid`` (``issued`` more than :data:`CLOCK_SKEW`
seconds ahead of our clock), ``expired`` (``expires`` more than
:data:`CLOCK_SKEW` seconds behind it) and ``unknown_command``. ``replayed``
is the dispatcher's (it needs the record of seen ids). A command lives at most
:data:`MAX_LIFETIME` from ``issued`` to ``expires``, so that record stays small.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # cryptography (~7 MB resident) loads when a key is first used
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

VERSION = 1
CLOCK_SKEW = 300  # seconds a gateway's clock may be off (satellite boxes without RTC drift)
MAX_LIFETIME = 86400  # expires - issued, at most
MAX_REQUEST = 64 * 1024  # bytes of one request
KEY_PREFIX = "ed25519:"
ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{8,64}$")
SITE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# The commands this gateway knows; each maps to one GatewayOps call (dispatch.py).
NAMES = ("status", "rebirth", "deauth", "vouchers.revoke", "prefetch", "config.set",
         "vouchers.create", "reboot", "cert.install")

# reason codes of a refused command (the response's "reason")
UNSIGNED = "unsigned"
BAD_SIGNATURE = "bad_signature"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"
OTHER_SITE = "other_site"
REPLAYED = "replayed"
MALFORMED = "malformed"
UNKNOWN_COMMAND = "unknown_command"
REASONS = (UNSIGNED, BAD_SIGNATURE, EXPIRED, NOT_YET_VALID, OTHER_SITE, REPLAYED, MALFORMED,
           UNKNOWN_COMMAND)


class CommandRefused(Exception):
    """A request that is not carried out. ``reason`` is one of :data:`REASONS`; ``field``
    names the offending field of a malformed one; ``id`` / ``name`` are what the request
    claimed, when readable (used for correlation only, never trusted)."""

    def __init__(self, reason: str, message: str, field: str | None = None,
                 id: str | None = None, name: str | None = None) -> None:
        super().__init__(message)
        self.reason, self.field, self.id, self.name = reason, field, id, name


@dataclass(frozen=True)
class Command:
    """A verified command: signed by a provisioned key, for this site, valid now."""

    id: str
    site: str
    issued: int
    expires: int
    name: str
    args: Mapping[str, Any] = field(default_factory=dict)


# -- keys ---------------------------------------------------------------------------------


def public_key_text(key: Ed25519PublicKey) -> str:
    return KEY_PREFIX + base64.b64encode(key.public_bytes_raw()).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """``ed25519:<base64 of 32 bytes>``; raises ValueError saying what is wrong."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(public_key_bytes(text))


def public_key_bytes(text: str) -> bytes:
    """The 32 raw bytes of ``ed25519:<base64>``, checked without loading cryptography
    (which takes any 32 bytes; the config validates keys with this alone)."""
    if not text.startswith(KEY_PREFIX):
        raise ValueError(f"{text[:40]!r} does not start with {KEY_PREFIX!r}; write e.g. "
                         "\"ed25519:3vGQ...=\" as printed by `desanet fleet keygen`")
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{text[:40]!r}: the part after {KEY_PREFIX!r} is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"{text[:40]!r}: an Ed25519 public key is 32 bytes, found {len(raw)}")
    return raw


# -- making a request (the operator's side) -------------------------------------------------


def sealed_context(site: str, id: str, name: str) -> bytes:
    """What a sealed part of an answer is bound to (:mod:`gateway.telemetry.sealed`'s
    ``aad``): a box copied into another site's or command's answer does not open."""
    return f"desanet/v{VERSION} {site} {id} {name}".encode()


def body_json(id: str, site: str, name: str, args: Mapping[str, Any], issued: int,
              expires: int) -> str:
    return json.dumps({"v": VERSION, "id": id, "site": site, "issued": issued,
                       "expires": expires, "name": name, "args": dict(args)},
                      separators=(",", ":"), ensure_ascii=False)


def sign(body: str, key: Ed25519PrivateKey) -> bytes:
    """The request payload carrying ``body`` and its signature."""
    sig = base64.b64encode(key.sign(body.encode())).decode()
    return json.dumps({"v": VERSION, "body": body, "sig": sig},
                      separators=(",", ":"), ensure_ascii=False).encode()


# -- verifying one (the gateway's side) ------------------------------------------------------


def _loads(text: str | bytes) -> Any:
    """json.loads, with nesting too deep for it a ValueError like any other bad JSON (it
    raises RecursionError, which escaped the refusals: no answer, a traceback logged)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


def _claims(body: object) -> tuple[str | None, str | None]:
    """The id and name a body claims, for correlating a refusal (unverified)."""
    try:
        data = _loads(body) if isinstance(body, str) else None
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    cid, name = data.get("id"), data.get("name")
    return (cid if isinstance(cid, str) and ID_RE.match(cid) else None,
            name if isinstance(name, str) and name in NAMES else None)


def verify(payload: bytes, keys: Iterable[Ed25519PublicKey], site: str, now: float,
           skew: int = CLOCK_SKEW) -> Command:
    """The command in ``payload``, or raise :class:`CommandRefused` (see the module doc)."""
    if len(payload) > MAX_REQUEST:
        raise CommandRefused(MALFORMED, f"the request is {len(payload)} bytes; at most "
                             f"{MAX_REQUEST}", "body")
    try:
        outer = _loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise CommandRefused(MALFORMED, "the request is not JSON", "body") from None
    if not isinstance(outer, dict):
        raise CommandRefused(MALFORMED, "the request is not a JSON object", "body")
    body = outer.get("body")
    cid, name = _claims(body)
    if not isinstance(body, str):
        raise CommandRefused(MALFORMED, "\"body\" must be the command as a JSON string", "body",
                             cid, name)
    sig = outer.get("sig")
    if sig is None or sig == "":
        raise CommandRefused(UNSIGNED, "the request carries no signature (\"sig\")", "sig",
                             cid, name)
    try:
        raw_sig = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
    except (binascii.Error, ValueError):
        raw_sig = b""
    if len(raw_sig) != 64:
        raise CommandRefused(MALFORMED, "\"sig\" must be the base64 of a 64-byte Ed25519 "
                             "signature", "sig", cid, name)
    if not any(_verifies(k, raw_sig, body.encode()) for k in keys):
        raise CommandRefused(BAD_SIGNATURE, "the signature is not that of a provisioned "
                             "operator key (telemetry.command_keys)", "sig", cid, name)
    command = _parse_body(body)
    if command.site != site:
        raise CommandRefused(OTHER_SITE, f"the command is for site {command.site!r}, this is "
                             f"{site!r}", "site", command.id, name)
    if command.issued > now + skew:
        raise CommandRefused(NOT_YET_VALID, f"issued {command.issued - now:.0f} s in the future "
                             f"(more than the {skew} s clock skew allowed)", "issued",
                             command.id, name)
    if command.expires < now - skew:
        raise CommandRefused(EXPIRED, f"expired {now - command.expires:.0f} s ago", "expires",
                             command.id, name)
    if command.name not in NAMES:
        raise CommandRefused(UNKNOWN_COMMAND, f"unknown command {command.name[:40]!r}; known: "
                             f"{', '.join(NAMES)}", "name", command.id)
    return command


def _verifies(key: Ed25519PublicKey, sig: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(sig, data)
    except InvalidSignature:
        return False
    return True


def _parse_body(body: str) -> Command:
    cid, name = _claims(body)

    def bad(fld: str, expected: str) -> CommandRefused:
        return CommandRefused(MALFORMED, f"field {fld}: expected {expected}", fld, cid, name)
    try:
        data = _loads(body)
    except ValueError:
        raise bad("body", "a JSON object") from None
    if not isinstance(data, dict):
        raise bad("body", "a JSON object")
    if data.get("v") != VERSION:
        raise bad("v", f"{VERSION}")
    if not isinstance(data.get("id"), str) or not ID_RE.match(data["id"]):
        raise bad("id", "8-64 letters, digits, '_', '.', ':' or '-'")
    if not isinstance(data.get("site"), str) or not SITE_RE.match(data["site"]):
        raise bad("site", "a site id, e.g. \"jabar-sukamaju\"")
    for key in ("issued", "expires"):
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(key, "unix seconds (an integer)")
    if data["expires"] <= data["issued"]:
        raise bad("expires", "later than issued")
    if data["expires"] - data["issued"] > MAX_LIFETIME:
        raise bad("expires", f"at most {MAX_LIFETIME} s after issued")
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise bad("name", f"one of {', '.join(NAMES)}")
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise bad("args", "a JSON object")
    extra = set(data) - {"v", "id", "site", "issued", "expires", "name", "args"}
    if extra:
        raise bad(sorted(extra)[0], "no such field")
    return Command(data["id"], data["site"], data["issued"], data["expires"], data["name"], args)
