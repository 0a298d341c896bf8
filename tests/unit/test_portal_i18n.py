from __future__ import annotations

import string

import pytest

from gateway.portal.i18n import (
    CATALOG,
    format_duration,
    format_remaining,
    parse_accept_language,
    pick_language,
    translate,
)


def test_catalogs_have_the_same_keys_and_placeholders() -> None:
    assert set(CATALOG["id"]) == set(CATALOG["en"])
    fmt = string.Formatter()
    for key in CATALOG["id"]:
        fields = {
            lang: {name for _, name, _, _ in fmt.parse(CATALOG[lang][key]) if name}
            for lang in ("id", "en")
        }
        assert fields["id"] == fields["en"], key


@pytest.mark.parametrize(
    ("query", "cookie", "accept", "default", "expected"),
    [
        (None, None, None, "id", "id"),
        (None, None, None, "en", "en"),
        ("en", None, None, "id", "en"),
        ("EN", None, None, "id", "en"),
        ("fr", None, None, "id", "id"),
        (None, "en", None, "id", "en"),
        ("id", "en", "en", "en", "id"),
        (None, "xx", "en-US,en;q=0.9", "id", "en"),
        (None, None, "en-US,en;q=0.9,id;q=0.8", "id", "en"),
        (None, None, "id-ID,id;q=0.9,en-US;q=0.8", "en", "id"),
        (None, None, "fr-FR,fr;q=0.9", "id", "id"),
        (None, None, "fr;q=1, en;q=0.2, id;q=0.5", "en", "id"),
        (None, None, "en;q=0", "id", "id"),
        (None, None, "en;q=bogus", "id", "id"),
        (None, None, "", "id", "id"),
        (None, None, None, "xx", "id"),
    ],
)
def test_pick_language(
    query: str | None, cookie: str | None, accept: str | None, default: str, expected: str
) -> None:
    assert pick_language(query, cookie, accept, default) == expected


def test_parse_accept_language_dedupes() -> None:
    assert parse_accept_language("en-GB, en-US;q=0.9, id;q=0.1") == ["en", "id"]
    assert parse_accept_language("*") == []


@pytest.mark.parametrize(
    ("seconds", "lang", "expected"),
    [
        (0, "id", "kurang dari 1 menit"),
        (59, "en", "less than a minute"),
        (60, "en", "1 minute"),
        (3600, "id", "1 jam"),
        (4 * 3600, "en", "4 hours"),
        (86400 + 2 * 3600, "en", "1 day 2 hours"),
        (3 * 86400 + 90 * 60, "id", "3 hari 1 jam 30 menit"),
    ],
)
def test_format_duration(seconds: int, lang: str, expected: str) -> None:
    assert format_duration(seconds, lang) == expected


@pytest.mark.parametrize(
    ("seconds", "lang", "expected"),
    [
        (30, "id", "kurang dari 1 menit"),
        (125, "en", "2 minutes"),
        (3600, "en", "1 hour"),
        (3 * 3600 + 59 * 60 + 59, "id", "3 jam 59 menit"),
        (26 * 3600 + 60, "en", "26 hours 1 minute"),
    ],
)
def test_format_remaining(seconds: int, lang: str, expected: str) -> None:
    assert format_remaining(seconds, lang) == expected


def test_translate_falls_back() -> None:
    assert translate("xx", "logout_button") == "Keluar"
    assert translate("en", "no_such_key") == "no_such_key"
    assert translate("en", "rate_limited", seconds=12).startswith("Too many")


@pytest.mark.parametrize(("lang", "positional"), [("id", ("di atas", "di bawah")),
                                                   ("en", ("above", "below"))])
def test_voucher_terms_sentence_names_no_position(lang: str, positional: tuple[str, ...]) -> None:
    """login.html puts the voucher card above the terms after a wrong code, below otherwise."""
    text = translate(lang, "voucher_accepts_terms").lower()
    assert not any(word in text for word in positional)
    assert ("ketentuan penggunaan" if lang == "id" else "terms of use") in text


@pytest.mark.parametrize("key", ["voucher_revoked", "voucher_expired", "voucher_where"])
def test_vouchers_are_asked_for_at_the_village_office(key: str) -> None:
    assert "kantor desa" in translate("id", key)
    assert "village office" in translate("en", key)
