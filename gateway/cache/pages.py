"""Pages the gateway renders itself for the local services catalog (id/en).

They reuse the portal's base template and Jinja2 environment (autoescape on),
and say plainly when what is shown is an offline copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway import timefmt
from gateway.config.schema import Config, GovService
from gateway.portal.i18n import LANGUAGE_NAMES, pick_language, translator
from gateway.portal.templating import render

MESSAGES: dict[str, dict[str, str]] = {
    "id": {
        "catalog_title": "Layanan pemerintah",
        "catalog_intro": "Layanan ini bisa dibuka tanpa masuk hotspot. Saat internet desa "
                         "terputus, Anda tetap bisa membuka salinan yang tersimpan.",
        "state_online": "Terhubung",
        "state_offline": "Salinan offline dari {when}",
        "state_offline_none": "Tidak tersedia saat ini",
        "state_unknown": "Belum diperiksa",
        "open": "Buka",
        "queue_note": "Formulir yang dikirim saat jaringan putus disimpan dan dikirim otomatis "
                      "nanti.",
        "check_title": "Cek status kiriman",
        "check_label": "Nomor referensi",
        "check_hint": "Nomor ini ada di tanda terima saat Anda mengirim formulir.",
        "check_button": "Cek",
        "receipt_title": "Formulir Anda tersimpan",
        "receipt_body": "Jaringan ke {service} sedang terputus. Formulir Anda sudah disimpan "
                        "dengan aman di hotspot desa dan akan dikirim otomatis setelah "
                        "jaringan pulih.",
        "receipt_ref": "Nomor referensi Anda:",
        "receipt_keep": "Catat nomor ini atau simpan tangkapan layar ini untuk mengecek status "
                        "kiriman nanti.",
        "sub_title": "Status kiriman {ref}",
        "sub_heading": "Status kiriman",
        "sub_state_queued": "Menunggu jaringan, akan dikirim otomatis.",
        "sub_state_sending": "Sedang dikirim.",
        "sub_state_unknown": "Belum dipastikan sampai. Formulir dikirim ulang dengan aman dan "
                             "tidak akan tercatat dua kali.",
        "sub_state_delivered": "Sudah terkirim ke layanan.",
        "sub_state_rejected": "Sudah sampai, tetapi ditolak oleh layanan (kode {status}).",
        "sub_created": "Disimpan: {when}",
        "sub_delivered": "Terkirim: {when}",
        "sub_not_found": "Nomor referensi tidak ditemukan. Periksa lagi nomor yang Anda ketik.",
        "unavailable_title": "Layanan tidak dapat dibuka",
        "unavailable_body": "{service} sedang tidak dapat dihubungi dan halaman ini belum "
                            "tersimpan di hotspot. Coba lagi nanti.",
        "queue_off_body": "{service} sedang tidak dapat dihubungi, dan formulir layanan ini "
                          "tidak bisa disimpan untuk dikirim nanti. Coba lagi nanti.",
        "too_large_form": "Formulir terlalu besar. Hotspot desa hanya menerima formulir sampai "
                          "{limit} MB, dan tidak ada yang disimpan. Kecilkan lampirannya (misalnya "
                          "foto) lalu kirim lagi.",
        "form_cut_short": "Formulir tidak terkirim utuh (sambungan terputus saat mengirim). "
                          "Tidak ada yang disimpan. Silakan kirim lagi.",
        "queue_refused_title": "Formulir belum bisa disimpan",
        "queue_full_body": "Antrean formulir di hotspot desa sedang penuh, jadi formulir Anda "
                           "tidak disimpan. Coba lagi nanti atau hubungi kantor desa.",
        "queue_disk_body": "Penyimpanan hotspot desa hampir penuh, jadi formulir Anda tidak "
                           "disimpan. Coba lagi nanti atau hubungi kantor desa.",
        "queue_client_body": "Anda sudah mengirim banyak formulir dalam satu jam terakhir, jadi "
                             "formulir ini tidak disimpan. Coba lagi nanti.",
        "receipt_state": "Status:",
        "receipt_saved_at": "Disimpan: {when}",
        "not_found_service": "Layanan ini tidak ada di katalog desa.",
        # proxy (Step 6)
        "method_not_allowed": "Permintaan {method} tidak dilayani di sini. Buka halaman ini "
                              "dari katalog layanan desa.",
        "bad_path": "Alamat ini tidak bisa dibuka (berisi bagian yang tidak diizinkan, "
                    "misalnya \"..\"). Buka layanan dari katalog desa.",
        "busy_title": "Tunggu sebentar",
        "busy_body": "Ponsel Anda sedang mengunduh beberapa halaman sekaligus dari layanan ini. "
                     "Tunggu sampai selesai, lalu coba lagi.",
    },
    "en": {
        "catalog_title": "Government services",
        "catalog_intro": "These services open without logging in to the hotspot. When the "
                         "village's internet link is down, you can still open the stored copy.",
        "state_online": "Connected",
        "state_offline": "Offline copy from {when}",
        "state_offline_none": "Not available right now",
        "state_unknown": "Not checked yet",
        "open": "Open",
        "queue_note": "Forms sent while the link is down are stored and delivered later.",
        "check_title": "Check a submission",
        "check_label": "Reference number",
        "check_hint": "You find this number on the receipt you got when you sent a form.",
        "check_button": "Check",
        "receipt_title": "Your form is saved",
        "receipt_body": "The link to {service} is down. Your form is stored safely on the "
                        "village hotspot and will be sent automatically when the link is back.",
        "receipt_ref": "Your reference number:",
        "receipt_keep": "Write this number down or take a screenshot to check the status later.",
        "sub_title": "Submission {ref}",
        "sub_heading": "Submission status",
        "sub_state_queued": "Waiting for the link; it will be sent automatically.",
        "sub_state_sending": "Being sent now.",
        "sub_state_unknown": "Not confirmed yet. The form is being resent safely and will not "
                             "be recorded twice.",
        "sub_state_delivered": "Delivered to the service.",
        "sub_state_rejected": "Delivered, but the service refused it (code {status}).",
        "sub_created": "Saved: {when}",
        "sub_delivered": "Delivered: {when}",
        "sub_not_found": "No submission has that reference number. Check what you typed.",
        "unavailable_title": "Service unavailable",
        "unavailable_body": "{service} cannot be reached and this page is not stored on the "
                            "hotspot yet. Please try again later.",
        "queue_off_body": "{service} cannot be reached, and this service's forms cannot be "
                          "stored for later. Please try again later.",
        "too_large_form": "The form is too large. The village hotspot accepts forms up to "
                          "{limit} MB, and nothing was saved. Make the attachment (a photo, "
                          "say) smaller and send it again.",
        "form_cut_short": "The form did not arrive whole (the connection broke while sending). "
                          "Nothing was saved. Please send it again.",
        "queue_refused_title": "The form cannot be saved yet",
        "queue_full_body": "The village hotspot's queue of forms is full, so your form was not "
                           "saved. Try again later or ask the village office.",
        "queue_disk_body": "The village hotspot's storage is almost full, so your form was not "
                           "saved. Try again later or ask the village office.",
        "queue_client_body": "You sent many forms in the last hour, so this one was not saved. "
                             "Try again later.",
        "receipt_state": "Status:",
        "receipt_saved_at": "Saved: {when}",
        "not_found_service": "This service is not in the village catalog.",
        # proxy (Step 6)
        "method_not_allowed": "{method} requests are not served here. Open this page from "
                              "the village services catalog.",
        "bad_path": "This address cannot be opened (it has a part that is not allowed, such "
                    "as \"..\"). Open the service from the village catalog.",
        "busy_title": "Please wait a moment",
        "busy_body": "Your phone is already downloading several pages from this service at "
                     "once. Wait until they finish, then try again.",
    },
}


def t_for(lang: str) -> Any:
    portal_t = translator(lang)
    own = MESSAGES.get(lang, MESSAGES["id"])

    def t(key: str, **values: object) -> str:
        if key in own:
            return own[key].format(**values)
        return str(portal_t(key, **values))

    return t


def pick_lang(request: web.Request, cfg: Config) -> str:
    """Same choice as the portal's: ?lang=, the lang cookie, the phone's languages."""
    return pick_language(request.query.get("lang"), request.cookies.get("lang"),
                         request.headers.get("Accept-Language"), cfg.site.language)


def local_time(cfg: Config, lang: str, ts: float | None) -> str:
    """A date for villagers: the site's time zone, with WIB/WITA/WIT."""
    return timefmt.format_datetime(ts, cfg.site.timezone, lang)


@dataclass(frozen=True)
class ServiceView:
    service: GovService
    state_text: str
    online: bool


def page(cfg: Config, lang: str, template: str, title_key: str, status: int = 200,
         path: str = "/", **context: object) -> web.Response:
    t = t_for(lang)
    other = "en" if lang == "id" else "id"
    html = render(
        template, lang=lang, t=t, title=t(title_key, **context), site_name=cfg.site.name,
        village=cfg.site.village, contact=cfg.site.contact, other_lang=other,
        other_lang_name=LANGUAGE_NAMES[other],
        other_lang_href=f"{path}{'&' if '?' in path else '?'}lang={other}",
        url=None, **context,
    )
    resp = web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; img-src data:")
    if request_lang_set := context.get("set_lang"):
        resp.set_cookie("lang", str(request_lang_set), max_age=365 * 86400, samesite="Lax")
    return resp


def message(cfg: Config, lang: str, status: int, title_key: str, text: str) -> web.Response:
    return page(cfg, lang, "message.html", title_key, status=status, message=text,
                home_href="/")
