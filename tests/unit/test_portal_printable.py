from __future__ import annotations

from gateway.config import Config, parse_config
from gateway.model import Voucher
from gateway.portal.printable import render_voucher_sheet

HOSTILE = "<script>alert(1)</script>"


def _cfg() -> Config:
    return parse_config(
        {
            "site": {"name": HOSTILE, "village": "Desa \"Suka'maju\" & Co"},
            "network": {"lan_interface": "br-lan", "wan_interface": "wan0",
                        "lan_address": "10.42.0.1/24"},
            "dhcp": {"range_start": "10.42.0.100", "range_end": "10.42.0.250"},
        }
    )


def _vouchers() -> list[Voucher]:
    return [
        Voucher(code="ABCDE-FGHJK", duration=4 * 3600, plan=None, created=0, batch="b1"),
        Voucher(code="23456-789AB", duration=86400 + 7200, plan="<b>cepat</b>", created=0,
                batch="b1", max_devices=2),
    ]


def test_sheet_in_indonesian() -> None:
    html = render_voucher_sheet(_cfg(), _vouchers(), "id")
    assert '<html lang="id">' in html
    assert "ABCDE-FGHJK" in html and "23456-789AB" in html
    assert "Berlaku 4 jam sejak pertama dipakai" in html
    assert "Berlaku 1 hari 2 jam sejak pertama dipakai" in html
    assert "Untuk 2 perangkat" in html
    assert "http://portal.desa/" in html
    assert "size:A4" in html
    assert html.count('class="card"') == 2


def test_sheet_is_escaped_and_in_english() -> None:
    html = render_voucher_sheet(_cfg(), _vouchers(), "en")
    assert '<html lang="en">' in html
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>cepat</b>" not in html
    assert "Plan: &lt;b&gt;cepat&lt;/b&gt;" in html
    assert "Desa &#34;Suka&#39;maju&#34; &amp; Co" in html
    assert "Valid for 4 hours from first use" in html
    assert "Type the code above" in html


def test_empty_sheet_and_unknown_language() -> None:
    html = render_voucher_sheet(_cfg(), [], "fr")
    assert '<html lang="id">' in html
    assert 'class="card"' not in html
