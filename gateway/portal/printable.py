"""Printable voucher sheet: an A4 HTML page of cut-out cards.

Village staff print it from a browser and cut along the dashed lines. Each
card carries the site name, the code in a large monospace font, how long it
lasts, the plan's label, the batch name and the voucher's serial number, the
steps to use it, and QR codes: one that opens the portal with the code
filled in and, when ``site.wifi_ssid`` is set, one that joins the Wi-Fi.

The QR codes are inline SVG markup (segno), not images: the page needs no
``img-src`` and no ``data:`` URI, and carries its own Content-Security-Policy
(no scripts, no fetches) because it is opened from a file. The SVG holds
only path geometry, never the encoded text. Every other value is escaped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from urllib.parse import urlencode

import segno
from markupsafe import Markup

from gateway.config.schema import Config
from gateway.model import Voucher
from gateway.portal.i18n import format_duration, supported, translator
from gateway.portal.templating import render
from gateway.timefmt import format_date, format_datetime

# The policy the sheet declares for itself: inline styles and inline SVG only.
SHEET_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

# Characters a Wi-Fi QR payload needs escaped (the ZXing "WIFI:" format that
# Android and iOS cameras read): backslash first, so escapes are not doubled.
_WIFI_SPECIAL = ("\\", ";", ",", ":", '"')


def voucher_url(cfg: Config, code: str) -> str:
    """The portal address that opens the login page with ``code`` filled in."""
    return f"{cfg.portal_url}?{urlencode({'voucher': code})}"


def wifi_escape(text: str) -> str:
    for ch in _WIFI_SPECIAL:
        text = text.replace(ch, "\\" + ch)
    return text


def wifi_payload(ssid: str, password: str = "") -> str:
    """The text of a Wi-Fi join QR code: WPA with a password, else an open network."""
    if password:
        return f"WIFI:T:WPA;S:{wifi_escape(ssid)};P:{wifi_escape(password)};;"
    return f"WIFI:T:nopass;S:{wifi_escape(ssid)};;"


def qr_svg(payload: str) -> Markup:
    """``payload`` as an inline ``<svg>`` element sized by CSS (class "qr").

    Error correction M survives a smudged or folded paper card. Safe to insert
    unescaped: segno writes only the geometry, never ``payload`` itself.
    """
    out = io.BytesIO()
    segno.make(payload, error="m", micro=False).save(
        out, kind="svg", xmldecl=False, svgns=True, omitsize=True, border=2, scale=1,
        svgclass="qr", lineclass=None, dark="#000",
    )
    return Markup(out.getvalue().decode("ascii").strip())


@dataclass(frozen=True, slots=True)
class _Card:
    code: str
    valid: str
    plan: str | None
    devices: str | None
    batch: str  # "Posyandu Mei · No. 7 · dibuat 2 Des 2026"
    login_qr: Markup
    price: str | None = None  # office: "Rp 5.000"; None for a free voucher


def format_rupiah(amount: int) -> str:
    """Rupiah as Indonesians write them: "Rp 5.000", "Rp 1.250.000" (dot for thousands)."""
    sign = "-" if amount < 0 else ""
    return f"{sign}Rp {abs(int(amount)):,}".replace(",", ".")


def _valid(v: Voucher, cfg: Config, lang: str) -> str:
    t = translator(lang)
    if v.first_used is not None:  # already running: say until when, in the village's time
        until = format_datetime(v.first_used + v.duration, cfg.site.timezone, lang)
        return t("sheet_until", when=until)
    return t("sheet_valid", duration=format_duration(v.duration, lang))


def _batch_line(v: Voucher, cfg: Config, lang: str) -> str:
    t = translator(lang)
    parts = [v.batch_name] if v.batch_name else []
    if v.serial:
        parts.append(t("sheet_serial", serial=v.serial))
    parts.append(t("sheet_created", date=format_date(v.created, cfg.site.timezone, lang)))
    return " · ".join(parts)


def render_voucher_sheet(cfg: Config, vouchers: list[Voucher], lang: str | None = None) -> str:
    """HTML for printing ``vouchers`` on A4, in ``lang`` ("id" or "en"; default and for
    anything else: the site's language)."""
    lang = supported(lang) or cfg.site.language
    t = translator(lang)
    cards = [
        _Card(
            code=v.code,
            valid=_valid(v, cfg, lang),
            plan=t("sheet_plan", plan=cfg.shaping.plan_label(v.plan, lang)) if v.plan else None,
            devices=t("sheet_devices", n=v.max_devices) if v.max_devices > 1 else None,
            batch=_batch_line(v, cfg, lang),
            login_qr=qr_svg(voucher_url(cfg, v.code)),
            price=format_rupiah(v.price) if v.price > 0 else None,
        )
        for v in vouchers
    ]
    site = cfg.site
    wifi_qr = qr_svg(wifi_payload(site.wifi_ssid, site.wifi_password)) if site.wifi_ssid else None
    return render(
        "voucher_sheet.html",
        lang=lang,
        t=t,
        csp=SHEET_CSP,
        title=t("sheet_title", site=site.name),
        site_name=site.name,
        village=site.village,
        portal_url=cfg.portal_url,
        step1=t("sheet_step1_ssid", ssid=site.wifi_ssid) if site.wifi_ssid else t("sheet_step1"),
        wifi_password=t("sheet_wifi_password", password=site.wifi_password)
        if site.wifi_ssid and site.wifi_password else None,
        wifi_qr=wifi_qr,
        cards=cards,
    )
