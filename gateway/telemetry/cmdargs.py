"""The arguments of the remote commands that change the gateway's config and vouchers.

Built from the control API's own request models and field types
(gateway/control/schema.py), so a command and the matching control request
accept the same values and refuse the same ones with the same words; only
what is particular to a command sent through the broker is added here.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, PlainValidator

from gateway.control.schema import ConfigText, ConfirmWindow, Request, VoucherCreateRequest
from gateway.telemetry import sealed

DEFAULT_CONFIRM = 300  # seconds; the trial's window when the command names none
VERSION_RE = re.compile(r"^[0-9a-f]{12}$")


def _recipient(value: object) -> str:
    try:
        sealed.parse_public_key(value)
    except ValueError as exc:
        raise ValueError(f"{exc}; the voucher codes are sealed to it") from None
    assert isinstance(value, str)
    return value


def _version(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not VERSION_RE.match(value):
        raise ValueError(f"{str(value)[:40]!r} is not a config version; write the 12 hex "
                         "digits `desanet config show` or the status message names, e.g. "
                         "\"3f2a9c0b7d1e\"")
    return value


Recipient = Annotated[str, PlainValidator(_recipient), Field(examples=["x25519:..."])]
ConfigVersion = Annotated[str | None, PlainValidator(_version), Field(examples=["3f2a9c0b7d1e"])]


class ConfigSetArgs(Request):
    """``config.set``: the whole new config file, applied as a trial of ``confirm``
    seconds, refused when the running config is not ``expected_version`` (a stale edit)."""

    text: ConfigText
    confirm: ConfirmWindow = DEFAULT_CONFIRM
    expected_version: ConfigVersion = None


class VoucherCreateArgs(VoucherCreateRequest):
    """``vouchers.create``: the control API's request, plus the operator's X25519 public
    key the codes are sealed to (required: codes never travel in clear)."""

    recipient: Recipient
