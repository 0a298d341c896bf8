"""The operator's X25519 key: what voucher codes (and any later secret) are sealed to.

``desanet fleet keygen --out KEY`` writes it beside the signing key, as
``KEY.x25519`` (PKCS#8 PEM, mode 0600); ``fleet send`` reads it from there
(or ``--seal-key``), puts its public half into a ``vouchers.create`` as
``recipient`` and opens the sealed codes of the answer. It is a key of its
own, not derived from the Ed25519 signing key: a key is used for one thing.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.config.loader import write_file_atomic
from gateway.errors import DesanetError
from gateway.telemetry import commands as c
from gateway.telemetry import sealed

SUFFIX = ".x25519"
SEALING = ("vouchers.create",)  # the commands whose answers carry sealed codes


class SealKeyError(DesanetError):
    """The X25519 key cannot be written, read or used."""


def seal_key_path(signing_key: str | Path) -> Path:
    return Path(f"{signing_key}{SUFFIX}")


def write_seal_key(path: Path, force: bool = False) -> str:
    """A new X25519 private key at ``path`` (0600); its public key text (``x25519:...``)."""
    if path.exists() and not force:
        raise SealKeyError(f"{path} exists; not overwriting it (--force replaces it: the codes "
                           "sealed to the old key can then no longer be opened)")
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        write_file_atomic(path, pem.decode())
    except OSError as exc:
        raise SealKeyError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return sealed.public_key_text(key.public_key())


def load_seal_key(path: str | Path) -> X25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SealKeyError(f"cannot read the operator's X25519 key {path}: {exc.strerror or exc}"
                           "; `desanet fleet keygen --out KEY` writes it as KEY.x25519 (for a "
                           "key made before, add one with --seal-only)") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SealKeyError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, X25519PrivateKey):
        raise SealKeyError(f"{path} is not an X25519 key; make one with `desanet fleet keygen`")
    return key


def open_answer(answer: dict[str, Any], key: X25519PrivateKey, site: str) -> dict[str, Any]:
    """``answer`` with every sealed part of its result (and of a replay's first answer)
    opened: ``codes_sealed`` becomes ``codes``. Raises SealKeyError when one does not open."""
    out = copy.deepcopy(answer)
    for holder in (out, out.get("first")):
        if not isinstance(holder, dict) or not isinstance(holder.get("result"), dict):
            continue
        result = holder["result"]
        box = result.get("codes_sealed")
        if box is None:
            continue
        context = c.sealed_context(site, str(holder.get("id")), str(holder.get("name")))
        try:
            result["codes"] = json.loads(sealed.open_box(box, key, context))["codes"]
        except (sealed.SealError, ValueError, KeyError, TypeError) as exc:
            raise SealKeyError(f"the answer's codes do not open with this X25519 key: {exc}") \
                from None
        del result["codes_sealed"]
    return out
