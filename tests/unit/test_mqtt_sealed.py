"""Sealed boxes (gateway/telemetry/sealed.py): only the recipient's key opens one, and any
change to the box or its context makes it fail, with the untouched box opening beside it."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gateway.telemetry import sealed

KEY = X25519PrivateKey.generate()
AAD = b"desanet/v1 s1 cmd-0001 vouchers.create"
SECRET = b'{"codes":["ABCDE-FGHJK"]}'


def test_a_box_opens_with_the_recipients_key_and_hides_the_plaintext() -> None:
    box = sealed.seal(SECRET, KEY.public_key(), AAD)
    assert (box["v"], box["alg"]) == (1, sealed.ALG)
    assert b"ABCDE" not in repr(box).encode()
    assert sealed.open_box(box, KEY, AAD) == SECRET
    # a fresh ephemeral key each time: two boxes of one secret differ
    assert sealed.seal(SECRET, KEY.public_key(), AAD)["epk"] != box["epk"]


def test_another_key_cannot_open_it() -> None:
    box = sealed.seal(SECRET, KEY.public_key(), AAD)
    with pytest.raises(sealed.SealError, match="does not open"):
        sealed.open_box(box, X25519PrivateKey.generate(), AAD)
    assert sealed.open_box(box, KEY, AAD) == SECRET  # positive control


def _flip(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[len(raw) // 2] ^= 1
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("part", ["ct", "nonce", "epk"])
def test_a_changed_box_does_not_open(part: str) -> None:
    box = sealed.seal(SECRET, KEY.public_key(), AAD)
    bad = {**box, part: _flip(box[part])}
    with pytest.raises(sealed.SealError):
        sealed.open_box(bad, KEY, AAD)
    assert sealed.open_box(box, KEY, AAD) == SECRET


def test_a_box_moved_to_another_context_does_not_open() -> None:
    box = sealed.seal(SECRET, KEY.public_key(), AAD)
    with pytest.raises(sealed.SealError):
        sealed.open_box(box, KEY, b"desanet/v1 s2 cmd-0001 vouchers.create")


@pytest.mark.parametrize("box", [
    {}, {"v": 2, "alg": sealed.ALG}, {"v": 1, "alg": sealed.ALG, "epk": "!!", "nonce": "", "ct": ""},
    {"v": 1, "alg": sealed.ALG, "epk": base64.b64encode(b"x" * 31).decode(),
     "nonce": base64.b64encode(b"n" * 12).decode(), "ct": ""},
    {"v": 1, "alg": sealed.ALG, "epk": base64.b64encode(bytes(32)).decode(),  # low order
     "nonce": base64.b64encode(b"n" * 12).decode(), "ct": base64.b64encode(b"c" * 20).decode()},
])
def test_what_is_not_a_box_is_refused_with_a_seal_error(box: dict[str, Any]) -> None:
    with pytest.raises(sealed.SealError):
        sealed.open_box(box, KEY, AAD)


def test_public_key_text_round_trips_and_bad_text_says_why() -> None:
    text = sealed.public_key_text(KEY.public_key())
    assert text.startswith("x25519:")
    assert sealed.parse_public_key(text).public_bytes_raw() == KEY.public_key().public_bytes_raw()
    for bad, words in [("ed25519:AAAA", "not an X25519"), ("x25519:***", "not base64"),
                       ("x25519:" + base64.b64encode(b"x" * 31).decode(), "32 bytes"),
                       ("x25519:" + base64.b64encode(bytes(32)).decode(), "cannot seal"),
                       ("x25519:" + base64.b64encode(bytes([1]) + bytes(31)).decode(),
                        "cannot seal"),
                       (None, "not an X25519")]:
        with pytest.raises(ValueError, match=words):
            sealed.parse_public_key(bad)
