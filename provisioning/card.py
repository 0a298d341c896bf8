"""The technician's card for one gateway: a printable HTML page, Bahasa Indonesia first.

It carries the site id and name, the Wi-Fi name and passphrase with a join QR
code (the same "WIFI:" payload and inline-SVG QR as the voucher sheet,
gateway/portal/printable.py), the SSH host key's fingerprint as
``ssh-keygen -l`` prints it (so the first SSH login is checked against paper,
not trusted blindly), and the certificate's end date. Like the voucher sheet
it declares its own Content-Security-Policy (no scripts, no fetches) and
escapes every value (autoescaping on).

The card holds the Wi-Fi passphrase: it is kept with the box, not posted.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import jinja2

from gateway.portal.printable import SHEET_CSP, qr_svg, wifi_payload
from provisioning.villages import Village


@dataclass(frozen=True)
class Card:
    village: Village
    ssh_fingerprint: str
    cert_not_after: int  # unix seconds


_TEMPLATE = """<!doctype html>
<html lang="id">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<title>Kartu teknisi / Technician card: {{ title }}</title>
<style>
body { font-family: sans-serif; margin: 0; color: #000; }
.card { border: 1px dashed #555; margin: 8mm; padding: 6mm; page-break-inside: avoid;
        break-inside: avoid; max-width: 180mm; }
h1 { font-size: 16pt; margin: 0 0 2mm 0; }
.site { font-family: monospace; font-size: 14pt; }
.en { color: #444; font-style: italic; }
.row { display: flex; gap: 6mm; align-items: flex-start; }
svg.qr { width: 40mm; height: 40mm; flex: none; }
.mono { font-family: monospace; font-size: 11pt; word-break: break-all; }
dt { font-weight: bold; margin-top: 2mm; }
dd { margin: 0; }
</style>
</head>
<body>
{% for c in cards %}
<section class="card">
<h1>{{ c.name }} <span class="site">({{ c.site_id }})</span></h1>
<div>{{ c.village }} &middot; {{ c.region }} &middot; {{ c.timezone }}</div>
<div class="row">
{% if c.wifi_qr %}{{ c.wifi_qr }}{% endif %}
<dl>
<dt>Nama Wi-Fi <span class="en">/ Wi-Fi name</span></dt>
<dd class="mono">{{ c.ssid }}</dd>
<dt>Kata sandi Wi-Fi <span class="en">/ Wi-Fi password</span></dt>
<dd class="mono">{{ c.passphrase or "(terbuka, tanpa sandi / open, no password)" }}</dd>
<dt>Sidik jari kunci SSH <span class="en">/ SSH host key fingerprint</span></dt>
<dd class="mono">{{ c.ssh }}</dd>
<dt>Sertifikat berlaku sampai <span class="en">/ Certificate valid until</span></dt>
<dd>{{ c.until }}</dd>
</dl>
</div>
<p>Pindai kode QR dengan kamera ponsel untuk bergabung ke Wi-Fi. Saat pertama kali masuk
lewat SSH, pastikan sidik jari yang ditampilkan sama persis dengan yang di kartu ini; jika
berbeda, jangan lanjutkan dan hubungi tim kabupaten.<br>
<span class="en">Scan the QR code with a phone camera to join the Wi-Fi. On the first SSH
login, check that the fingerprint shown is exactly the one on this card; if it differs, stop
and call the regional team.</span></p>
<p>Simpan kartu ini bersama perangkat (berisi kata sandi Wi-Fi).<br>
<span class="en">Keep this card with the device (it holds the Wi-Fi password).</span></p>
</section>
{% endfor %}
</body>
</html>
"""


def _env() -> jinja2.Environment:
    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def render_cards(cards: list[Card]) -> str:
    """One HTML page with every card in ``cards`` (one card: the device's own page)."""
    items = []
    for card in cards:
        v = card.village
        until = datetime.datetime.fromtimestamp(card.cert_not_after, datetime.UTC)
        items.append({
            "site_id": v.site_id, "name": v.name, "village": v.village, "region": v.region,
            "timezone": v.timezone, "ssid": v.ssid, "passphrase": v.passphrase,
            "wifi_qr": qr_svg(wifi_payload(v.ssid, v.passphrase)),
            "ssh": card.ssh_fingerprint, "until": f"{until:%Y-%m-%d}"})
    title = cards[0].village.site_id if len(cards) == 1 else f"{len(cards)} gateways"
    return _env().from_string(_TEMPLATE).render(csp=SHEET_CSP, title=title, cards=items)
