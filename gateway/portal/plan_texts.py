"""Portal texts of plans (Step 11), Bahasa Indonesia first, English second; merged into
the portal's catalog (i18n.py). Plain text with {placeholders}, like the catalog."""

from __future__ import annotations

from typing import Final

PLAN_CATALOG: Final[dict[str, dict[str, str]]] = {
    "id": {
        "title_quota_cut": "Kuota habis",
        "use_left": "Sisa waktu pakai: {remaining} (dihitung hanya saat Anda memakai internet)",
        "valid_left": "Voucher berlaku: {remaining} lagi",
        "quota_left": "Sisa kuota: {left} dari {total}",
        "fair_use_on": (
            "Kuota Anda sudah habis. Internet tetap jalan dengan kecepatan terbatas "
            "({rate}). Untuk kecepatan penuh, minta voucher baru di kantor desa."
        ),
        "devices_in_use": "Perangkat yang memakai voucher ini: {n} dari {max}",
        "quota_cut": (
            "Kuota data voucher ini sudah habis, jadi internet dihentikan. Untuk internet "
            "lagi, minta voucher baru di kantor desa, lalu masukkan kodenya di halaman ini."
        ),
        "voucher_in_use_n": (
            "Voucher ini sedang dipakai di {n} perangkat, batas perangkat sekaligus untuk "
            "voucher ini. Tekan \"Keluar\" di salah satu perangkat itu (atau tunggu sampai "
            "sesinya berakhir), lalu coba lagi; atau minta voucher lain di kantor desa."
        ),
        "voucher_time_used": (
            "Waktu pakai voucher ini sudah habis. Minta voucher baru di kantor desa, "
            "lalu masukkan kodenya di sini."
        ),
        "voucher_quota_used": (
            "Kuota data voucher ini sudah habis. Minta voucher baru di kantor desa, "
            "lalu masukkan kodenya di sini."
        ),
    },
    "en": {
        "title_quota_cut": "Data used up",
        "use_left": "Time of use left: {remaining} (counted only while you use the internet)",
        "valid_left": "Voucher valid for: {remaining}",
        "quota_left": "Data left: {left} of {total}",
        "fair_use_on": (
            "Your data quota is used up. The internet keeps working at a reduced speed "
            "({rate}). For full speed, get a new voucher at the village office."
        ),
        "devices_in_use": "Devices using this voucher: {n} of {max}",
        "quota_cut": (
            "This voucher's data quota is used up, so the internet has stopped. To go on, get "
            "a new voucher at the village office, then enter its code on this page."
        ),
        "voucher_in_use_n": (
            "This voucher is in use on {n} devices, as many as it allows at once. Press "
            "\"Log out\" on one of them (or wait until its session ends), then try again; "
            "or get another voucher at the village office."
        ),
        "voucher_time_used": (
            "This voucher's time of use is used up. Get a new voucher at the village office, "
            "then enter its code here."
        ),
        "voucher_quota_used": (
            "This voucher's data quota is used up. Get a new voucher at the village office, "
            "then enter its code here."
        ),
    },
}
