from __future__ import annotations

import random
import re
from typing import Any

import pytest

from gateway.errors import VoucherError
from gateway.portal.vouchers import (
    ALPHABET,
    CODE_LENGTH,
    entropy_bits,
    generate_code,
    generate_codes,
    is_valid_code,
    normalize_code,
)

CODE_RE = re.compile(r"^[2-9A-HJ-NP-Z]{5}-[2-9A-HJ-NP-Z]{5}$")


def test_alphabet_has_32_unambiguous_symbols() -> None:
    assert len(ALPHABET) == 32
    assert len(set(ALPHABET)) == 32
    assert not set("01IO") & set(ALPHABET)
    assert set("23456789") <= set(ALPHABET)
    assert "".join(sorted(ALPHABET)) == ALPHABET


def test_entropy() -> None:
    assert entropy_bits(CODE_LENGTH) == pytest.approx(50.0)
    assert entropy_bits() >= 40
    assert entropy_bits(0) == 0
    with pytest.raises(ValueError):
        entropy_bits(-1)


def test_generated_code_shape() -> None:
    for _ in range(200):
        code = generate_code()
        assert CODE_RE.match(code), code
        assert normalize_code(code) == code


def test_seeded_rng_is_reproducible() -> None:
    assert generate_code(random.Random(7)) == generate_code(random.Random(7))
    assert generate_codes(5, random.Random(1)) == generate_codes(5, random.Random(1))


def test_generate_codes_unique() -> None:
    codes = generate_codes(2000)
    assert len(codes) == 2000
    assert len(set(codes)) == 2000
    assert all(CODE_RE.match(c) for c in codes)
    assert generate_codes(0) == []
    with pytest.raises(ValueError):
        generate_codes(-1)


def test_generate_codes_unique_despite_repeating_rng() -> None:
    class Repeating(random.Random):
        """Produces every code twice in a row: 2222222222, 2222222222, 3333333333, ..."""

        def __init__(self) -> None:
            super().__init__(3)
            self.calls = 0

        def choice(self, seq: Any) -> Any:
            block = self.calls // (2 * CODE_LENGTH)
            self.calls += 1
            return seq[block % len(seq)]

    assert generate_codes(3, Repeating()) == ["22222-22222", "33333-33333", "44444-44444"]


def test_symbols_are_roughly_uniform() -> None:
    rng = random.Random(42)
    counts = dict.fromkeys(ALPHABET, 0)
    for code in generate_codes(3200, rng):
        for ch in code.replace("-", ""):
            counts[ch] += 1
    expected = 3200 * CODE_LENGTH / 32
    assert all(0.8 * expected < n < 1.2 * expected for n in counts.values())


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("ABCDE-FGHJK", "ABCDE-FGHJK"),
        ("abcde-fghjk", "ABCDE-FGHJK"),
        ("ABCDEFGHJK", "ABCDE-FGHJK"),
        ("abcdefghjk", "ABCDE-FGHJK"),
        ("  abcde fghjk  ", "ABCDE-FGHJK"),
        ("AB-CD-EF-GH-JK", "ABCDE-FGHJK"),
        ("ABCDE--FGHJK", "ABCDE-FGHJK"),
        ("-ABCDE-FGHJK-", "ABCDE-FGHJK"),
        ("ABCDE\u2013FGHJK", "ABCDE-FGHJK"),  # en dash from a phone keyboard
        ("23456 789ab", "23456-789AB"),
        ("zzzzz\tzzzzz", "ZZZZZ-ZZZZZ"),
    ],
)
def test_normalize_accepts(typed: str, canonical: str) -> None:
    assert normalize_code(typed) == canonical
    assert is_valid_code(typed)


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "   ",
        "ABCDE",
        "ABCDE-FGHJ",  # 9 symbols
        "ABCDE-FGHJKL",  # 11 symbols
        "ABCDE-FGHJ0",  # zero
        "ABCDE-FGHJO",  # letter O
        "ABCDE-FGHJ1",  # one
        "ABCDE-FGHJI",  # letter I
        "ABCDE-FGHJ!",
        "ABCDE/FGHJK",
        "ÄBCDE-FGHJK",
        "ABCDE-FGHJK" + " " * 100,
        "<script>x</script>",
    ],
)
def test_normalize_rejects(typed: str) -> None:
    with pytest.raises(VoucherError) as info:
        normalize_code(typed)
    assert info.value.reason == "malformed"
    assert not is_valid_code(typed)
