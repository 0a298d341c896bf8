"""What a villager reads about the voucher's plan (Step 11): the status page's time of use,
validity, data left, fair use and devices; the page once the quota is cut; the refusals;
and the RFC 8908 API's seconds-remaining / bytes-remaining."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from gateway.config import Config, parse_config
from gateway.errors import VoucherError
from gateway.model import ClientView, Session, Voucher
from tests.unit.test_portal_app import MAC, NOW, FakeBackend, get, portal, post

CODE = "ABCDE-FGHJK"
PLAN = {"down": "2mbit", "up": "1mbit", "time_of_use": "1h", "validity": "1d", "quota": "1GB",
        "after_quota": "slow", "fair_use_down": "256kbit", "fair_use_up": "128kbit",
        "shared_devices": 2}


def plan_cfg(**plan: Any) -> Config:
    return parse_config({
        "site": {"name": "Hotspot Desa Sukamaju", "village": "Desa Sukamaju",
                 "contact": "Kantor Desa, 0812-0000-0000"},
        "network": {"lan_interface": "br-lan", "wan_interface": "wan0",
                    "lan_address": "10.42.0.1/24"},
        "dhcp": {"range_start": "10.42.0.100", "range_end": "10.42.0.250"},
        "shaping": {"plans": {"paket": {**PLAN, **plan}}},
    })


class PlanBackend(FakeBackend):
    def __init__(self, voucher: Voucher) -> None:
        super().__init__()
        self.voucher = voucher
        self.sessions[MAC] = Session(MAC, "127.0.0.1", NOW - 600, NOW + 20 * 3600, 1800,
                                     "voucher", CODE, "paket")

    async def identify(self, ip: str) -> ClientView:
        view = await super().identify(ip)
        return replace(view, voucher=self.voucher if view.session else None)


def used(**fields: Any) -> Voucher:
    base = Voucher(CODE, 86400, "paket", NOW - 3600, "b", max_devices=2, first_used=NOW - 4 * 3600,
                   devices=(MAC, "02:00:00:00:00:02"), used_seconds=15 * 60,
                   bytes_down=200 * 1024**2, bytes_up=56 * 1024**2)
    return replace(base, **fields)


async def _page(voucher: Voucher, lang: str, **plan: Any) -> tuple[int, str]:
    async with portal(plan_cfg(**plan), PlanBackend(voucher)) as client:
        resp = await get(client, f"/?lang={lang}")
        return resp.status, await resp.text()


@pytest.mark.parametrize(("lang", "lines"), [
    ("id", ["Sisa waktu pakai: 45 menit (dihitung hanya saat Anda memakai internet)",
            "Voucher berlaku: 20 jam lagi", "Sisa kuota: 768 MB dari 1 GB",
            "Perangkat yang memakai voucher ini: 2 dari 2"]),
    ("en", ["Time of use left: 45 minutes (counted only while you use the internet)",
            "Voucher valid for: 20 hours", "Data left: 768 MB of 1 GB",
            "Devices using this voucher: 2 of 2"]),
])
async def test_the_status_page_shows_what_is_left(lang: str, lines: list[str]) -> None:
    status, page = await _page(used(), lang)
    assert status == 200
    for line in lines:
        assert f"<li>{line}</li>" in page, (line, page)


async def test_fair_use_is_said_instead_of_the_data_left() -> None:
    _, page = await _page(used(quota_state="slow", bytes_down=1024**3), "id")
    assert "Kuota Anda sudah habis. Internet tetap jalan dengan kecepatan terbatas (256kbit)" \
        in page
    assert "Sisa kuota" not in page


@pytest.mark.parametrize(("lang", "title", "text"), [
    ("id", "Kuota habis", "Kuota data voucher ini sudah habis, jadi internet dihentikan. "
     "Untuk internet lagi, minta voucher baru di kantor desa"),
    ("en", "Data used up", "This voucher&#39;s data quota is used up, so the internet has "
     "stopped. To go on, get a new voucher at the village office"),
])
async def test_a_cut_voucher_gets_a_page_that_says_what_to_do(lang: str, title: str,
                                                              text: str) -> None:
    _, page = await _page(used(quota_state="cut"), lang)
    assert f"<h2>{title}</h2>" in page and text in page, page
    assert "Kantor Desa, 0812-0000-0000" in page
    assert "class=\"ok\"" not in page  # not "you are connected"


async def test_a_plain_voucher_keeps_the_old_status_line() -> None:
    plain = Voucher(CODE, 86400, None, NOW, "b", first_used=NOW, devices=(MAC,))
    _, page = await _page(plain, "id")
    assert "Sisa waktu: 20 jam" in page and "<ul class=\"plan\">" not in page


async def test_the_captive_api_fills_the_remaining_fields() -> None:
    async with portal(plan_cfg(), PlanBackend(used())) as client:
        data = json.loads(await (await get(client, "/api/captive")).read())
    # time of use (45 min) runs out before the validity (20 h); the total quota is nearer
    assert data["captive"] is False
    assert data["seconds-remaining"] == 45 * 60
    assert data["bytes-remaining"] == 1024**3 - 256 * 1024**2
    async with portal(plan_cfg(), PlanBackend(used(quota_state="cut"))) as client:
        data = json.loads(await (await get(client, "/api/captive")).read())
    assert data["captive"] is True  # cut off: the phone shows its sign-in page again


class Refusing(FakeBackend):
    def __init__(self, error: VoucherError) -> None:
        super().__init__()
        self.error = error

    async def login_voucher(self, client: ClientView, code: str) -> Session:
        raise self.error


@pytest.mark.parametrize(("error", "lang", "text"), [
    (VoucherError("in_use", devices=2), "id",
     "Voucher ini sedang dipakai di 2 perangkat, batas perangkat sekaligus untuk voucher ini."),
    (VoucherError("in_use", devices=2), "en",
     "This voucher is in use on 2 devices, as many as it allows at once."),
    (VoucherError("in_use", devices=1), "id", "Voucher ini sedang dipakai di perangkat lain."),
    (VoucherError("time_used"), "id", "Waktu pakai voucher ini sudah habis."),
    (VoucherError("time_used"), "en", "time of use is used up"),
    (VoucherError("quota_used"), "id", "Kuota data voucher ini sudah habis."),
])
async def test_plan_refusals_say_what_to_do(error: VoucherError, lang: str, text: str) -> None:
    async with portal(plan_cfg(), Refusing(error)) as client:
        resp = await post(client, "/login", {"action": "voucher", "voucher": CODE,
                                             "lang": lang})
        page = await resp.text()
    assert resp.status == 403
    assert text.replace("'", "&#39;") in page, page
