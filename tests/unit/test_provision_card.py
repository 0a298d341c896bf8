"""The technician's card: site, Wi-Fi join QR, SSH fingerprint; Indonesian first; escaped."""

from __future__ import annotations

import re
from dataclasses import replace

from markupsafe import escape

from gateway.portal.printable import SHEET_CSP, qr_svg, wifi_payload
from provisioning.card import Card, render_cards
from provisioning.villages import parse_villages
from tests.unit.provkit import CSV

FP = "SHA256:lYQUZi+yR4rtIEMN8IsqcrWwiNhq04eq7HPtXM/Flrk"


def test_the_card_carries_site_wifi_qr_and_fingerprint_in_both_languages() -> None:
    village = parse_villages(CSV)[0]
    html = render_cards([Card(village, FP, 1_859_317_981)])
    assert "jabar-sukamaju" in html and "Hotspot Desa Sukamaju" in html and FP in html
    assert "Sukamaju;Net" in html and village.passphrase in html
    # the QR is the voucher sheet's: the WIFI: payload with ';' escaped
    assert wifi_payload("Sukamaju;Net", village.passphrase).startswith("WIFI:T:WPA;S:Sukamaju\\;Net;P:")
    assert str(qr_svg(wifi_payload("Sukamaju;Net", village.passphrase))) in html
    assert html.index("Kata sandi Wi-Fi") < html.index("Wi-Fi password")
    assert html.index("Sidik jari kunci SSH") < html.index("SSH host key fingerprint")
    assert f'content="{escape(SHEET_CSP)}"' in html and "<script" not in html
    assert "2028-" in html  # the certificate's end date


def test_an_open_network_gets_a_nopass_qr_and_says_so() -> None:
    village = parse_villages(CSV)[1]
    html = render_cards([Card(village, FP, 1_859_317_981)])
    assert str(qr_svg(wifi_payload("Lembah WiFi", ""))) in html
    assert "terbuka, tanpa sandi" in html


def test_values_are_escaped() -> None:
    village = replace(parse_villages(CSV)[0], name="<script>alert(1)</script>", region="A & B")
    html = render_cards([Card(village, FP, 1_859_317_981)])
    assert "<script>alert" not in html and "&lt;script&gt;" in html and "A &amp; B" in html


def test_a_batch_page_has_one_card_per_village() -> None:
    villages = parse_villages(CSV)
    html = render_cards([Card(v, FP, 1_859_317_981) for v in villages])
    assert len(re.findall(r'<section class="card">', html)) == 2
