"""Voucher codes for the portal: the rules live in the core (gateway.core.voucher_codes)."""

from gateway.core.voucher_codes import (
    ALPHABET,
    CODE_LENGTH,
    entropy_bits,
    format_code,
    generate_code,
    generate_codes,
    is_valid_code,
    normalize_code,
)

__all__ = ["ALPHABET", "CODE_LENGTH", "entropy_bits", "format_code", "generate_code",
           "generate_codes", "is_valid_code", "normalize_code"]
