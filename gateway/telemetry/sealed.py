"""Sealed boxes: a secret sent to one operator through the broker (pure, no I/O).

A voucher batch created by a remote command answers with its codes; the
answer goes through the region's broker, its logs and anyone subscribed to
the response topic, so the codes travel sealed to the operator's X25519
public key, which the signed command carries (``recipient``). Only the
holder of the matching private key (made by ``desanet fleet keygen``) can
open the box.

Version 1 (``"alg": "X25519-HKDF-SHA256-CHACHA20POLY1305"``):

1. a fresh ephemeral X25519 key pair per box; ``shared = X25519(eph, recipient)``;
2. ``key = HKDF-SHA256(shared, salt = eph_pub || recipient_pub,
   info = "desanet sealed v1", 32 bytes)``: both public keys bind the key to
   this pair, so a box cannot be re-addressed;
3. ChaCha20-Poly1305 with a random 96-bit nonce over the plaintext, with
   ``aad`` (the caller's context, e.g. the site and command id) authenticated
   but not sent: a box moved into another answer does not open.

The box is JSON-ready: ``{"v": 1, "alg": ..., "epk": b64, "nonce": b64,
"ct": b64}`` (ciphertext with its 16-byte tag).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # cryptography (~7 MB resident) loads when a box is made or opened
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

VERSION = 1
ALG = "X25519-HKDF-SHA256-CHACHA20POLY1305"
KEY_PREFIX = "x25519:"
_INFO = b"desanet sealed v1"
_NONCE = 12


class SealError(ValueError):
    """A box that cannot be opened: not for this key, altered, or not a box at all."""


def public_key_text(key: X25519PublicKey) -> str:
    return KEY_PREFIX + base64.b64encode(key.public_bytes_raw()).decode()


def parse_public_key(text: object) -> X25519PublicKey:
    """``x25519:<base64 of 32 bytes>``; raises ValueError saying what is wrong."""
    if not isinstance(text, str) or not text.startswith(KEY_PREFIX):
        raise ValueError(f"{str(text)[:40]!r} is not an X25519 public key; write "
                         f"\"{KEY_PREFIX}<base64>\" as `desanet fleet keygen` writes it")
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{text[:40]!r}: the part after {KEY_PREFIX!r} is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"{text[:40]!r}: an X25519 public key is 32 bytes, found {len(raw)}")
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )

    key = X25519PublicKey.from_public_bytes(raw)
    try:  # a low-order point (e.g. all zero) gives no shared secret: refuse it here, not
        X25519PrivateKey.generate().exchange(key)  # after the vouchers were made
    except ValueError:
        raise ValueError(f"{text[:40]!r}: cannot seal to this key (a low-order point); "
                         "make one with `desanet fleet keygen`") from None
    return key


def _key(shared: bytes, epk: bytes, recipient: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(hashes.SHA256(), 32, salt=epk + recipient, info=_INFO).derive(shared)


def seal(plaintext: bytes, recipient: X25519PublicKey, aad: bytes = b"") -> dict[str, Any]:
    """A box only the private key of ``recipient`` opens (with the same ``aad``)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    eph = X25519PrivateKey.generate()
    epk = eph.public_key().public_bytes_raw()
    key = _key(eph.exchange(recipient), epk, recipient.public_bytes_raw())
    nonce = os.urandom(_NONCE)
    ct = ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)
    b64 = base64.b64encode
    return {"v": VERSION, "alg": ALG, "epk": b64(epk).decode(), "nonce": b64(nonce).decode(),
            "ct": b64(ct).decode()}


def open_box(box: Mapping[str, Any], key: X25519PrivateKey, aad: bytes = b"") -> bytes:
    """The plaintext of ``box``; raises SealError when it is not for ``key``, was altered,
    or is not a version 1 box."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    if not isinstance(box, Mapping) or box.get("v") != VERSION or box.get("alg") != ALG:
        raise SealError(f"not a sealed box of version {VERSION} ({ALG})")
    try:
        epk = base64.b64decode(box["epk"], validate=True)
        nonce = base64.b64decode(box["nonce"], validate=True)
        ct = base64.b64decode(box["ct"], validate=True)
    except (KeyError, TypeError, binascii.Error, ValueError):
        raise SealError("a sealed box needs base64 'epk', 'nonce' and 'ct'") from None
    if len(epk) != 32 or len(nonce) != _NONCE:
        raise SealError("a sealed box's 'epk' is 32 bytes and its 'nonce' 12")
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(epk))
    except ValueError:  # a low-order point: no shared secret
        raise SealError("a sealed box's 'epk' is not a usable X25519 key") from None
    try:
        return ChaCha20Poly1305(_key(shared, epk, key.public_key().public_bytes_raw())).decrypt(
            nonce, ct, aad)
    except InvalidTag:
        raise SealError("the box does not open with this key (sealed to another key, or "
                        "altered on the way)") from None
