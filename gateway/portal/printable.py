"""Printable voucher sheet: an A4 HTML page of cut-out cards.

Village staff print it from a browser and cut along the dashed lines. Each
card carries the site name, the code in a large monospace font, how long it
lasts, the plan, and three steps to use it. All values are escaped.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.schema import Config
from gateway.model import Voucher
from gateway.portal.i18n import format_duration, supported, translator
from gateway.portal.templating import render


@dataclass(frozen=True, slots=True)
class _Card:
    code: str
    valid: str
    plan: str | None
    devices: str | None


def render_voucher_sheet(cfg: Config, vouchers: list[Voucher], lang: str) -> str:
    """HTML for printing ``vouchers`` on A4, in ``lang`` ("id" or "en")."""
    lang = supported(lang) or cfg.site.language
    t = translator(lang)
    cards = [
        _Card(
            code=v.code,
            valid=t("sheet_valid", duration=format_duration(v.duration, lang)),
            plan=t("sheet_plan", plan=v.plan) if v.plan else None,
            devices=t("sheet_devices", n=v.max_devices) if v.max_devices > 1 else None,
        )
        for v in vouchers
    ]
    return render(
        "voucher_sheet.html",
        lang=lang,
        t=t,
        title=t("sheet_title", site=cfg.site.name),
        site_name=cfg.site.name,
        village=cfg.site.village,
        portal_url=cfg.portal_url,
        cards=cards,
    )
