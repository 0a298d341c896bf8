"""Portal messages in Bahasa Indonesia (the default) and English.

Messages are plain text; templates escape them like any other value, so a
catalog entry can never inject markup. ``{name}`` placeholders are filled
with :func:`str.format`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from gateway.portal.plan_texts import PLAN_CATALOG

LANGUAGES: Final = ("id", "en")
DEFAULT_LANGUAGE: Final = "id"
LANGUAGE_NAMES: Final = {"id": "Bahasa Indonesia", "en": "English"}

Translator = Callable[..., str]

CATALOG: Final[dict[str, dict[str, str]]] = {
    "id": {
        "title_login": "Masuk ke internet",
        "title_status": "Anda sudah terhubung",
        "title_denied": "Tidak dapat masuk",
        "title_not_found": "Halaman tidak ditemukan",
        "title_error": "Permintaan tidak dapat diproses",
        "welcome": "Selamat datang di hotspot {village}.",
        "terms_heading": "Ketentuan penggunaan",
        "accept_button": "Setuju dan sambungkan",
        "voucher_heading": "Punya voucher?",
        "voucher_label": "Kode voucher",
        "voucher_hint": "10 huruf dan angka, contoh:",
        "voucher_button": "Masuk dengan voucher",
        # Not "di atas": after a wrong code the voucher card comes first (login.html).
        "voucher_accepts_terms": (
            "Dengan memakai voucher, Anda menyetujui ketentuan penggunaan hotspot ini."
        ),
        "connected": "Anda sudah terhubung ke internet.",
        "time_left": "Sisa waktu: {remaining}",
        "continue_to": "Lanjut ke {url}",
        "logout_button": "Keluar",
        "back_home": "Kembali ke halaman utama",
        "contact": "Bantuan: {contact}",
        "not_found": "Alamat yang Anda buka tidak ada di portal ini.",
        "bad_request": "Formulir tidak lengkap. Silakan coba lagi dari halaman utama.",
        "too_large": "Data yang dikirim terlalu besar.",
        "server_error": (
            "Maaf, portal sedang mengalami gangguan. Silakan coba beberapa saat lagi atau "
            "hubungi pengelola hotspot."
        ),
        "cross_origin": "Formulir ini harus dikirim dari halaman portal. Silakan coba lagi.",
        "rate_limited": (
            "Terlalu banyak percobaan memasukkan kode voucher. Tunggu {seconds} detik, "
            "lalu coba lagi."
        ),
        "voucher_malformed": (
            "Kode voucher tidak sesuai format. Kode terdiri atas 10 huruf dan angka; "
            "huruf I dan O serta angka 0 dan 1 tidak dipakai."
        ),
        "voucher_unknown": "Kode voucher tidak dikenal. Periksa lagi kode yang Anda ketik.",
        "voucher_revoked": (
            "Voucher ini sudah dibatalkan. Silakan minta voucher baru di kantor desa."
        ),
        "voucher_expired": (
            "Masa berlaku voucher ini sudah habis. Minta voucher baru di kantor desa."
        ),
        "voucher_in_use": "Voucher ini sedang dipakai di perangkat lain.",
        "voucher_other": "Voucher tidak dapat dipakai saat ini.",
        "denied_mode": "Cara masuk ini tidak tersedia di hotspot ini.",
        "denied_full": "Hotspot sedang penuh. Silakan coba beberapa saat lagi.",
        "denied_blocked": "Perangkat ini diblokir. Hubungi pengelola hotspot.",
        "denied_no_mac": (
            "Perangkat Anda tidak dikenali. Sambungkan ulang ke Wi-Fi, lalu coba lagi."
        ),
        "denied_other": "Anda tidak dapat masuk saat ini. Hubungi pengelola hotspot.",
        "less_than_minute": "kurang dari 1 menit",
        "unit_day": "{n} hari",
        "unit_days": "{n} hari",
        "unit_hour": "{n} jam",
        "unit_hours": "{n} jam",
        "unit_minute": "{n} menit",
        "unit_minutes": "{n} menit",
        "sheet_title": "Voucher internet {site}",
        "sheet_code": "Kode voucher",
        "sheet_valid": "Berlaku {duration} sejak pertama dipakai",
        "sheet_plan": "Paket: {plan}",
        "sheet_devices": "Untuk {n} perangkat",
        "sheet_step1": "Sambungkan HP ke Wi-Fi hotspot desa.",
        "sheet_step2": "Buka {url} di browser, atau pindai kode QR-nya.",
        "sheet_step3": "Ketik kode di atas, lalu tekan \u201cMasuk dengan voucher\u201d.",
        "sheet_cut": "Gunting mengikuti garis putus-putus.",
        # portal
        "voucher_where": "Voucher bisa diminta di kantor desa.",
        "title_logged_out": "Anda sudah keluar",
        "logged_out": (
            "Anda sudah keluar. Perangkat ini tidak lagi tersambung ke internet hotspot. "
            "Untuk tersambung lagi, masuk kembali di halaman ini."
        ),
        "local_services_link": "Layanan pemerintah desa",
        "local_services_hint": "Bisa dibuka tanpa masuk, juga saat internet desa terputus.",
        # sheet
        "sheet_step1_ssid": "Sambungkan HP ke Wi-Fi \u201c{ssid}\u201d.",
        "sheet_wifi_password": "Kata sandi Wi-Fi: {password}",
        "sheet_until": "Berlaku sampai {when}",
        "sheet_serial": "No. {serial}",
        "sheet_created": "dibuat {date}",
        "sheet_scan_login": "Pindai untuk masuk",
        "sheet_scan_wifi": "Pindai untuk Wi-Fi",
        # uplink
        "offline_title": "Internet desa sedang terputus",
        "offline_body": "Sambungan internet desa sedang putus, jadi {host} tidak dapat dibuka "
                        "sekarang. Coba lagi nanti.",
        "offline_local": "Layanan desa ({host}) tetap bisa dipakai tanpa internet.",
        "offline_local_link": "Buka layanan desa",
        "offline_retry": "Coba lagi",
        "offline_notice": "Internet desa sedang terputus. Layanan desa tetap bisa dipakai.",
        "connected_offline": "Anda terhubung ke hotspot desa, tetapi internet desa sedang "
                             "terputus.",
        "reconnect_title": "Menyambungkan\u2026",
        "reconnect_body": "Anda sudah masuk. Browser masih memakai alamat lama untuk {host}; "
                          "halaman ini dimuat ulang sendiri sampai {host} terbuka (paling lama "
                          "sekitar satu menit).",
        "reconnect_now": "Muat ulang sekarang",
        # portalsec
        "form_expired": (
            "Formulir ini sudah kedaluwarsa atau tidak dikirim dari halaman portal Anda. "
            "Silakan tekan tombolnya sekali lagi."
        ),
        "rate_limited_village": (
            "Terlalu banyak kode voucher salah dicoba di jaringan desa dalam satu menit "
            "terakhir. Coba lagi dalam {seconds} detik, atau minta bantuan petugas."
        ),
        # office: the terms button's free trial, and when the day's trial is used up
        "trial_note": "Coba gratis {minutes} menit per hari untuk perangkat ini.",
        "denied_trial_used": (
            "Waktu coba gratis untuk perangkat ini hari ini sudah habis. Masukkan kode "
            "voucher untuk melanjutkan, atau coba lagi besok."
        ),
        # lan
        "denied_in_use": (
            "Perangkat dengan alamat yang sama sudah masuk dari sambungan lain. Jika itu "
            "perangkat Anda, tunggu sampai sesinya berakhir atau minta bantuan pengelola hotspot."
        ),
    },
    "en": {
        "title_login": "Connect to the internet",
        "title_status": "You are connected",
        "title_denied": "Cannot connect",
        "title_not_found": "Page not found",
        "title_error": "Request could not be processed",
        "welcome": "Welcome to the {village} hotspot.",
        "terms_heading": "Terms of use",
        "accept_button": "Accept and connect",
        "voucher_heading": "Have a voucher?",
        "voucher_label": "Voucher code",
        "voucher_hint": "10 letters and digits, for example:",
        "voucher_button": "Connect with voucher",
        "voucher_accepts_terms": "By using a voucher you accept this hotspot's terms of use.",
        "connected": "You are connected to the internet.",
        "time_left": "Time remaining: {remaining}",
        "continue_to": "Continue to {url}",
        "logout_button": "Log out",
        "back_home": "Back to the start page",
        "contact": "Help: {contact}",
        "not_found": "The address you opened does not exist on this portal.",
        "bad_request": "The form was incomplete. Please try again from the start page.",
        "too_large": "The data sent was too large.",
        "server_error": (
            "Sorry, the portal has a problem right now. Try again in a moment, or contact "
            "the hotspot operator."
        ),
        "cross_origin": "This form must be sent from the portal page. Please try again.",
        "rate_limited": "Too many voucher attempts. Wait {seconds} seconds, then try again.",
        "voucher_malformed": (
            "That does not look like a voucher code. A code has 10 letters and digits, "
            "without the letters I and O or the digits 0 and 1."
        ),
        "voucher_unknown": "Unknown voucher code. Please check the code you typed.",
        "voucher_revoked": (
            "This voucher has been cancelled. Please ask the village office for a new one."
        ),
        "voucher_expired": "This voucher has expired. Ask the village office for a new one.",
        "voucher_in_use": "This voucher is already in use on another device.",
        "voucher_other": "This voucher cannot be used right now.",
        "denied_mode": "This way of connecting is not offered on this hotspot.",
        "denied_full": "The hotspot is full. Please try again in a little while.",
        "denied_blocked": "This device is blocked. Contact the hotspot operator.",
        "denied_no_mac": "Your device was not recognised. Reconnect to the Wi-Fi, then try again.",
        "denied_other": "You cannot connect right now. Contact the hotspot operator.",
        "less_than_minute": "less than a minute",
        "unit_day": "{n} day",
        "unit_days": "{n} days",
        "unit_hour": "{n} hour",
        "unit_hours": "{n} hours",
        "unit_minute": "{n} minute",
        "unit_minutes": "{n} minutes",
        "sheet_title": "{site} internet vouchers",
        "sheet_code": "Voucher code",
        "sheet_valid": "Valid for {duration} from first use",
        "sheet_plan": "Plan: {plan}",
        "sheet_devices": "For {n} devices",
        "sheet_step1": "Join the village hotspot Wi-Fi.",
        "sheet_step2": "Open {url} in the browser, or scan its QR code.",
        "sheet_step3": "Type the code above and tap \u201cConnect with voucher\u201d.",
        "sheet_cut": "Cut along the dashed lines.",
        # portal
        "voucher_where": "Vouchers are handed out at the village office.",
        "title_logged_out": "You have logged out",
        "logged_out": (
            "You have logged out. This device is no longer connected to the hotspot's "
            "internet. To connect again, log in on this page."
        ),
        "local_services_link": "Village government services",
        "local_services_hint": "Open without logging in, also while the village internet is down.",
        # sheet
        "sheet_step1_ssid": "Join the Wi-Fi \u201c{ssid}\u201d.",
        "sheet_wifi_password": "Wi-Fi password: {password}",
        "sheet_until": "Valid until {when}",
        "sheet_serial": "No. {serial}",
        "sheet_created": "made {date}",
        "sheet_scan_login": "Scan to log in",
        "sheet_scan_wifi": "Scan for Wi-Fi",
        # uplink
        "offline_title": "The village internet is down",
        "offline_body": "The village's internet connection is cut, so {host} cannot be opened "
                        "right now. Please try again later.",
        "offline_local": "The village services ({host}) still work without the internet.",
        "offline_local_link": "Open the village services",
        "offline_retry": "Try again",
        "offline_notice": "The village internet is down. The village services still work.",
        "connected_offline": "You are connected to the village hotspot, but the village "
                             "internet is down.",
        "reconnect_title": "Connecting\u2026",
        "reconnect_body": "You are logged in. The browser still uses an old address for {host}; "
                          "this page reloads by itself until {host} opens (about a minute at most).",
        "reconnect_now": "Reload now",
        # portalsec
        "form_expired": (
            "This form has expired or was not sent from your portal page. "
            "Please press its button once more."
        ),
        "rate_limited_village": (
            "Too many wrong voucher codes were tried on the village network in the last "
            "minute. Try again in {seconds} seconds, or ask the staff for help."
        ),
        # office: the terms button's free trial, and when the day's trial is used up
        "trial_note": "A free trial of {minutes} minutes a day for this device.",
        "denied_trial_used": (
            "This device's free trial for today is used up. Enter a voucher code to go on, "
            "or try again tomorrow."
        ),
        # lan
        "denied_in_use": (
            "A device with the same address is already logged in from another connection. If "
            "it is yours, wait until its session ends or ask the hotspot operator for help."
        ),
    },
}

# plans (Step 11): the plan texts live beside their view (plan_view.py)
for _lang, _texts in PLAN_CATALOG.items():
    CATALOG[_lang].update(_texts)

VOUCHER_REASONS: Final = frozenset({"malformed", "unknown", "revoked", "expired", "in_use",
                                    "time_used", "quota_used"})
DENIED_REASONS: Final = frozenset({"mode", "full", "blocked", "no_mac", "in_use", "trial_used"})


def supported(lang: str | None) -> str | None:
    """``lang`` when it is a catalog language (case-insensitive), else None."""
    if not lang:
        return None
    code = lang.strip().lower()
    return code if code in CATALOG else None


def parse_accept_language(header: str | None) -> list[str]:
    """Supported languages named in an Accept-Language header, best first.

    Region subtags are ignored ("en-US" counts as "en"); q=0 excludes.
    """
    if not header:
        return []
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header[:1024].split(",")):
        fields = part.strip().split(";")
        tag = fields[0].strip().lower()
        quality = 1.0
        for param in fields[1:]:
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        primary = supported(tag.split("-")[0])
        if primary and quality > 0:
            ranked.append((-quality, index, primary))
    ranked.sort()
    result: list[str] = []
    for _, _, lang in ranked:
        if lang not in result:
            result.append(lang)
    return result


def pick_language(
    query_lang: str | None,
    cookie_lang: str | None,
    accept_language: str | None,
    default: str = DEFAULT_LANGUAGE,
) -> str:
    """An explicit choice (query, then cookie) wins over the browser's
    Accept-Language, which wins over the site default."""
    for choice in (query_lang, cookie_lang):
        lang = supported(choice)
        if lang:
            return lang
    preferred = parse_accept_language(accept_language)
    if preferred:
        return preferred[0]
    return supported(default) or DEFAULT_LANGUAGE


def translate(lang: str, key: str, **params: object) -> str:
    table = CATALOG.get(lang, CATALOG[DEFAULT_LANGUAGE])
    text = table.get(key) or CATALOG[DEFAULT_LANGUAGE].get(key) or key
    return text.format(**params) if params else text


def translator(lang: str) -> Translator:
    def _t(key: str, **params: object) -> str:
        return translate(lang, key, **params)

    return _t


def voucher_message_key(reason: str) -> str:
    return f"voucher_{reason}" if reason in VOUCHER_REASONS else "voucher_other"


def denied_message_key(reason: str) -> str:
    return f"denied_{reason}" if reason in DENIED_REASONS else "denied_other"


def _unit(lang: str, unit: str, n: int) -> str:
    return translate(lang, f"unit_{unit}" if n == 1 else f"unit_{unit}s", n=n)


def format_duration(seconds: int, lang: str) -> str:
    """A duration in words, e.g. "1 hari 4 jam" / "1 day 4 hours" (days, hours, minutes)."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return translate(lang, "less_than_minute")
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [
        _unit(lang, name, n)
        for name, n in (("day", days), ("hour", hours), ("minute", minutes))
        if n
    ]
    return " ".join(parts)


def format_remaining(seconds: int, lang: str) -> str:
    """Time left in hours and minutes, e.g. "3 jam 20 menit" (no days)."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return translate(lang, "less_than_minute")
    hours, rest = divmod(seconds, 3600)
    minutes = rest // 60
    parts = [_unit(lang, "hour", hours)] if hours else []
    if minutes or not hours:
        parts.append(_unit(lang, "minute", minutes))
    return " ".join(parts)
