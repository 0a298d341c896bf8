"""The printable voucher sheet: words, escaping, QR codes, Wi-Fi, plan labels, batches."""

from __future__ import annotations

import re
from typing import Any

import pytest
import segno

from gateway.config import Config, parse_config
from gateway.errors import ConfigError
from gateway.model import Voucher
from gateway.portal.printable import (
    SHEET_CSP,
    qr_svg,
    render_voucher_sheet,
    voucher_url,
    wifi_escape,
    wifi_payload,
)

HOSTILE = "<script>alert(1)</script>"
DEC_2_2026_0030_WITA = 1_796_142_600  # 1 Dec 2026 16:30 UTC: already 2 Dec in Makassar


def _cfg(site: dict[str, Any] | None = None, **sections: Any) -> Config:
    return parse_config(
        {
            "site": {"name": HOSTILE, "village": "Desa \"Suka'maju\" & Co", **(site or {})},
            "network": {"lan_interface": "br-lan", "wan_interface": "wan0",
                        "lan_address": "10.42.0.1/24"},
            "dhcp": {"range_start": "10.42.0.100", "range_end": "10.42.0.250"},
            **sections,
        }
    )


def _vouchers() -> list[Voucher]:
    return [
        Voucher(code="ABCDE-FGHJK", duration=4 * 3600, plan=None, created=0, batch="b1"),
        Voucher(code="23456-789AB", duration=86400 + 7200, plan="<b>cepat</b>", created=0,
                batch="b1", max_devices=2),
    ]


def _svgs(html: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", html, flags=re.S)


def _modules(svg: str) -> set[tuple[int, int]]:
    """The dark modules drawn by a segno SVG path (border included), read back from it."""
    path = re.search(r'\sd="([^"]+)"', svg)
    assert path is not None, svg
    x = y = 0.0
    dark: set[tuple[int, int]] = set()
    for op, args in re.findall(r"([MmHh])([-\d. ]+)", path.group(1)):
        nums = [float(n) for n in args.split()]
        if op == "M":
            x, y = nums
        elif op == "m":
            x, y = x + nums[0], y + nums[1]
        else:
            length = int(nums[0]) if op == "h" else int(nums[0] - x)
            dark.update((int(x) + i, int(y)) for i in range(length))
            x += length
    return dark


def _encodes(svg: str, text: str, border: int = 2) -> bool:
    """True when ``svg`` draws exactly the QR symbol of ``text``."""
    expected = {(c + border, r + border)
                for r, row in enumerate(segno.make(text, error="m", micro=False).matrix)
                for c, bit in enumerate(row) if bit}
    return _modules(svg) == expected


def test_sheet_in_indonesian() -> None:
    html = render_voucher_sheet(_cfg(), _vouchers(), "id")
    assert '<html lang="id">' in html
    assert "ABCDE-FGHJK" in html and "23456-789AB" in html
    assert "Berlaku 4 jam sejak pertama dipakai" in html
    assert "Berlaku 1 hari 2 jam sejak pertama dipakai" in html
    assert "Untuk 2 perangkat" in html
    assert "Buka http://portal.desa/ di browser" in html
    assert "halaman web apa saja" not in html  # https pages cannot be redirected
    assert "Sambungkan HP ke Wi-Fi hotspot desa." in html  # no SSID configured
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
    assert "Open http://portal.desa/ in the browser" in html
    assert "Type the code above" in html


def test_empty_sheet_and_unknown_language() -> None:
    html = render_voucher_sheet(_cfg(), [], "fr")
    assert '<html lang="id">' in html
    assert 'class="card"' not in html


def test_the_default_language_is_the_sites() -> None:
    html = render_voucher_sheet(_cfg({"language": "en"}), _vouchers())
    assert '<html lang="en">' in html and "Valid for 4 hours" in html


# -- QR codes ----------------------------------------------------------------------------


def test_each_card_has_a_qr_code_that_opens_the_portal_with_its_code() -> None:
    cfg = _cfg(portal={"hostname": "wifi.sukamaju.desa", "http_port": 8080})
    assert voucher_url(cfg, "ABCDE-FGHJK") == "http://wifi.sukamaju.desa:8080/?voucher=ABCDE-FGHJK"
    html = render_voucher_sheet(cfg, _vouchers(), "id")
    svgs = _svgs(html)
    assert len(svgs) == 2  # one per card, no Wi-Fi code without an SSID
    assert _encodes(svgs[0], "http://wifi.sukamaju.desa:8080/?voucher=ABCDE-FGHJK")
    assert _encodes(svgs[1], "http://wifi.sukamaju.desa:8080/?voucher=23456-789AB")
    # negative control: the reader tells codes apart
    assert not _encodes(svgs[0], "http://wifi.sukamaju.desa:8080/?voucher=23456-789AB")
    assert svgs[0] == str(qr_svg(voucher_url(cfg, "ABCDE-FGHJK")))


def test_the_sheet_fits_its_content_policy() -> None:
    cfg = _cfg({"wifi_ssid": "Desa", "wifi_password": "rahasia123"})
    html = render_voucher_sheet(cfg, _vouchers(), "id")
    policy = SHEET_CSP.replace("'", "&#39;")  # as an attribute value, entity-encoded
    assert f'<meta http-equiv="Content-Security-Policy" content="{policy}">' in html
    assert "script-src" not in SHEET_CSP and "img-src" not in SHEET_CSP  # i.e. 'none'
    # nothing the policy would block or that fetches anything: no scripts, images,
    # data: URIs, links, event handlers or external references
    for banned in ("<script", "<img", "<object", "<iframe", "<link", "data:", "href=", "src=",
                   "url(", "xlink"):
        assert banned not in html.lower(), banned
    assert not re.search(r"<[^>]*\son\w+\s*=", html)  # no event handler attributes
    svgs = _svgs(html)
    assert len(svgs) == 4  # a login code and a Wi-Fi code on each of the two cards
    for svg in svgs:
        assert set(re.findall(r"<(\w+)", svg)) == {"svg", "path"}  # geometry only
        assert "voucher" not in svg and "WIFI" not in svg and "rahasia" not in svg


@pytest.mark.parametrize(("raw", "escaped"), [
    ("Hotspot Desa", "Hotspot Desa"),
    ("a;b", "a\\;b"),
    ("a,b:c", "a\\,b\\:c"),
    ('say "hi"', 'say \\"hi\\"'),
    ("back\\slash", "back\\\\slash"),
    ("\\;", "\\\\\\;"),  # the backslash is escaped first, so nothing is escaped twice
    ("Kopi ☕ Sukamaju", "Kopi ☕ Sukamaju"),
])
def test_wifi_escaping(raw: str, escaped: str) -> None:
    assert wifi_escape(raw) == escaped


def test_wifi_payloads() -> None:
    assert wifi_payload("Desa;1", 'p"a:ss,wd') == 'WIFI:T:WPA;S:Desa\\;1;P:p\\"a\\:ss\\,wd;;'
    assert wifi_payload("Hotspot Desa") == "WIFI:T:nopass;S:Hotspot Desa;;"


def test_a_configured_wifi_is_named_and_has_a_join_code() -> None:
    cfg = _cfg({"wifi_ssid": "Hotspot; \"Desa\"", "wifi_password": "sukamaju2024"})
    html = render_voucher_sheet(cfg, _vouchers()[:1], "id")
    assert "Sambungkan HP ke Wi-Fi \u201cHotspot; &#34;Desa&#34;\u201d." in html
    assert "Kata sandi Wi-Fi: sukamaju2024" in html
    login, wifi = _svgs(html)
    assert _encodes(wifi, 'WIFI:T:WPA;S:Hotspot\\; \\"Desa\\";P:sukamaju2024;;')
    assert _encodes(login, "http://portal.desa/?voucher=ABCDE-FGHJK")
    assert "Pindai untuk Wi-Fi" in html and "Pindai untuk masuk" in html

    open_net = render_voucher_sheet(_cfg({"wifi_ssid": "Hotspot Desa"}), _vouchers()[:1], "en")
    assert "Join the Wi-Fi \u201cHotspot Desa\u201d." in open_net
    assert "password" not in open_net.lower()
    assert _encodes(_svgs(open_net)[1], "WIFI:T:nopass;S:Hotspot Desa;;")


@pytest.mark.parametrize(("site", "field"), [
    ({"wifi_password": "sukamaju2024"}, "site"),  # a password without a network name
    ({"wifi_ssid": "x" * 33}, "site.wifi_ssid"),
    ({"wifi_ssid": "Desa\u00e9" * 7}, "site.wifi_ssid"),  # 35 bytes in UTF-8
    ({"wifi_ssid": "Desa\nRT"}, "site.wifi_ssid"),
    ({"wifi_ssid": "Desa", "wifi_password": "short"}, "site.wifi_password"),
    ({"wifi_ssid": "Desa", "wifi_password": "kata sandi\u00e9"}, "site.wifi_password"),
])
def test_bad_wifi_settings_name_the_field(site: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        _cfg(site)
    assert any(line.startswith(field) for line in info.value.problems), info.value.problems


# -- plan labels, batches, validity ------------------------------------------------------

PLANS = {"shaping": {"plans": {
    "paket-harian": {"down": "2mbit", "up": "1mbit", "label_id": "Paket Harian"},
    "school": {"down": "2mbit", "up": "1mbit", "label_id": "Paket Sekolah",
               "label_en": "School plan"},
    "malam": {"down": "1mbit", "up": "1mbit"},
}}}


@pytest.mark.parametrize(("plan", "lang", "label"), [
    ("school", "id", "Paket Sekolah"),
    ("school", "en", "School plan"),
    ("paket-harian", "id", "Paket Harian"),
    ("paket-harian", "en", "Paket Harian"),  # no English label: the Indonesian one
    ("malam", "id", "Malam"),  # no label: made from the name
    ("gone-plan", "en", "Gone plan"),  # a plan removed from the config since
])
def test_plan_labels(plan: str, lang: str, label: str) -> None:
    cfg = _cfg(**PLANS)
    assert cfg.shaping.plan_label(plan, lang) == label
    v = Voucher(code="ABCDE-FGHJK", duration=3600, plan=plan, created=0, batch="b")
    word = "Paket" if lang == "id" else "Plan"
    assert f"{word}: {label}<" in render_voucher_sheet(cfg, [v], lang)


@pytest.mark.parametrize("label", ["", "  ", "Paket\nHarian", "x" * 41])
def test_bad_plan_labels_name_the_field(label: str) -> None:
    plans = {"shaping": {"plans": {"school": {"down": "2mbit", "up": "1mbit",
                                              "label_en": label}}}}
    with pytest.raises(ConfigError) as info:
        _cfg(**plans)
    assert any(p.startswith("shaping.plans.school.label_en") for p in info.value.problems)


def test_batch_name_serial_and_dates_in_the_site_time_zone() -> None:
    cfg = _cfg({"timezone": "Asia/Makassar"})
    fresh = Voucher(code="ABCDE-FGHJK", duration=3600, plan=None,
                    created=DEC_2_2026_0030_WITA, batch="posyandu-mei-ab12",
                    batch_name="Posyandu <Mei>", serial=7)
    running = Voucher(code="23456-789AB", duration=86400, plan=None,
                      created=DEC_2_2026_0030_WITA, batch="x", serial=8,
                      first_used=DEC_2_2026_0030_WITA)
    html = render_voucher_sheet(cfg, [fresh, running], "id")
    assert "Posyandu &lt;Mei&gt; · No. 7 · dibuat 2 Des 2026" in html
    assert "No. 8 · dibuat 2 Des 2026" in html  # unnamed batch
    assert "Berlaku sampai 3 Des 2026 00:30 WITA" in html
    english = render_voucher_sheet(cfg, [running], "en")
    assert "Valid until 3 Dec 2026 00:30 WITA" in english and "made 2 Dec 2026" in english
