"""Voucher codes: generation and normalization (pure, no I/O).

A code is 10 symbols from a 32-symbol alphabet, so each symbol carries
5 bits and a code carries 50 bits of entropy. The alphabet leaves out the
look-alikes 0/O and 1/I, so a code read aloud or copied from paper by
hand survives. Codes are shown as two groups of five, "ABCDE-FGHJK".

``normalize_code`` is forgiving about presentation (lower case, spaces,
missing or extra dashes) and strict about content: anything that is not
exactly ten alphabet symbols is ``VoucherError("malformed")``.
"""

from __future__ import annotations

import math
import random
import secrets

from gateway.errors import VoucherError

# Digits 2-9 and A-Z without I and O: 8 + 24 = 32 symbols.
ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
CODE_LENGTH = 10
GROUP_SIZE = 5
SEPARATOR = "-"

# Characters people (or phone keyboards) put between the groups.
_IGNORED = frozenset(" \t\r\n-_.\u2010\u2011\u2012\u2013\u2014\u2212\u00a0")
# Guard against pathological input before doing any work on it.
_MAX_INPUT = 64

assert len(ALPHABET) == 32 and len(set(ALPHABET)) == 32


def entropy_bits(length: int = CODE_LENGTH, alphabet_size: int = len(ALPHABET)) -> float:
    """Bits of entropy of a uniformly random code of ``length`` symbols."""
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    return length * math.log2(alphabet_size)


def format_code(symbols: str) -> str:
    """Insert the group separator into ten bare symbols."""
    groups = [symbols[i : i + GROUP_SIZE] for i in range(0, len(symbols), GROUP_SIZE)]
    return SEPARATOR.join(groups)


def generate_code(rng: secrets.SystemRandom | random.Random | None = None) -> str:
    """A fresh code in display form. Uses the OS CSPRNG unless ``rng`` is given
    (tests pass a seeded ``random.Random`` for reproducible codes)."""
    source = rng if rng is not None else secrets.SystemRandom()
    return format_code("".join(source.choice(ALPHABET) for _ in range(CODE_LENGTH)))


def generate_codes(
    count: int, rng: secrets.SystemRandom | random.Random | None = None
) -> list[str]:
    """``count`` distinct codes, in generation order."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    source = rng if rng is not None else secrets.SystemRandom()
    seen: set[str] = set()
    codes: list[str] = []
    while len(codes) < count:
        code = generate_code(source)
        if code not in seen:
            seen.add(code)
            codes.append(code)
    return codes


def normalize_code(text: str) -> str:
    """Canonical "XXXXX-XXXXX" form of what a user typed.

    Raises ``VoucherError("malformed")`` when the text is not ten alphabet
    symbols once case, spaces and dashes are ignored.
    """
    if not isinstance(text, str) or len(text) > _MAX_INPUT:
        raise VoucherError("malformed", "a voucher code has 10 letters and digits")
    bare = "".join(ch for ch in text.upper() if ch not in _IGNORED)
    if len(bare) != CODE_LENGTH:
        raise VoucherError(
            "malformed", f"a voucher code has {CODE_LENGTH} letters and digits, got {len(bare)}"
        )
    if any(ch not in ALPHABET for ch in bare):
        raise VoucherError(
            "malformed", "a voucher code uses digits 2-9 and letters other than I and O"
        )
    return format_code(bare)


def is_valid_code(text: str) -> bool:
    try:
        normalize_code(text)
    except VoucherError:
        return False
    return True
