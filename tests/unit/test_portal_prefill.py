"""A voucher card's QR code opens /?voucher=CODE: the login page fills the code in."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest

from tests.unit.test_portal_app import HOSTILE, get, make_cfg, portal


def _field(body: str) -> str:
    found = re.search(r'<input type="text" id="voucher" name="voucher" value="([^"]*)"', body)
    assert found is not None, body
    return found.group(1)


@pytest.mark.parametrize(("given", "filled"), [
    ("ABCDE-FGHJK", "ABCDE-FGHJK"),
    ("abcde fghjk", "ABCDE-FGHJK"),  # typed by hand from the card: normalised
])
async def test_a_valid_code_is_filled_in_and_its_card_comes_first(given: str, filled: str) -> None:
    async with portal() as client:
        resp = await get(client, "/?voucher=" + quote(given))
        body = await resp.text()
        assert resp.status == 200
        assert _field(body) == filled
        assert body.index('id="kode"') < body.index('value="terms"')  # the voucher card first


@pytest.mark.parametrize("given", [
    HOSTILE,
    '"><script>alert(1)</script>',
    "ABCDE-FGHJK\"onfocus=\"alert(1)",
    "ABCDE-FGHJ",  # one symbol short
    "OOOOO-11111",  # look-alikes not in the alphabet
    "A" * 5000,
    "",
])
async def test_anything_else_is_not_echoed(given: str) -> None:
    async with portal() as client:
        resp = await get(client, "/?voucher=" + quote(given))
        body = await resp.text()
        assert resp.status == 200
        assert _field(body) == ""
        assert "<script" not in body and "alert(1)" not in body and "AAAAAAAAAA" not in body
        assert body.index('value="terms"') < body.index('id="kode"')  # the usual order


async def test_terms_only_portal_ignores_the_code() -> None:
    async with portal(make_cfg(mode="terms")) as client:
        body = await (await get(client, "/?voucher=ABCDE-FGHJK")).text()
        assert 'id="voucher"' not in body and "ABCDE-FGHJK" not in body
