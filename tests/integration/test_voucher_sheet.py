"""The voucher sheet against the real daemon: a named batch, the sheet printed from
the running config, its QR link opening the portal with the code filled in, and that
code logging a real client in (root, network namespaces, the real daemon)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from desanet_lab import LabInfo, LabSpec
from desanet_lab import plan as p
from tests.integration.conftest import (
    LAB_TOOLS,
    PORTAL,
    LabFactory,
    desanet,
    desanet_json,
    has_internet,
    http,
    portal_post,
    require_root,
    require_tools,
    unique_prefix,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS)]

SSID = 'Hotspot "Uji"; Desa'


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    spec = LabSpec(prefix=unique_prefix("vs"), clients=1, extra={
        "site": {"wifi_ssid": SSID, "wifi_password": "rahasia123"},
        "shaping": {"enabled": True, "plans": {"school": {
            "down": "2mbit", "up": "1mbit", "label_id": "Paket Sekolah"}}},
    })
    return make_lab(spec)


def test_a_printed_card_logs_a_phone_in(lab: LabInfo) -> None:
    sock, client = lab.control_socket, lab.client(1).name
    made = desanet_json(sock, "vouchers", "create", "--count", "2", "--duration", "1h",
                        "--plan", "school", "--name", "Posyandu Mei")
    batch, codes = made["batch"], [v["code"] for v in made["vouchers"]]
    assert [(v["serial"], v["batch_name"]) for v in made["vouchers"]] == [
        (1, "Posyandu Mei"), (2, "Posyandu Mei")]

    out = Path(tempfile.mkdtemp(prefix="dn-sheet-")) / "sheet.html"
    printed = desanet(sock, "vouchers", "print", batch, "-o", str(out))
    assert printed.returncode == 0, printed.stderr
    html = out.read_text(encoding="utf-8")
    assert html.count('class="card"') == 2 and html.count("<svg") == 4
    assert "Paket: Paket Sekolah" in html and "Posyandu Mei · No. 2" in html
    assert "Hotspot &#34;Uji&#34;; Desa" in html and "rahasia123" in html
    assert f"Buka http://{p.PORTAL_HOSTNAME}/" in html

    # the card's QR link, as a phone camera would open it (code typed in lower case too)
    page = http(client, f"{PORTAL}/?voucher={codes[1].lower()}")
    assert page.status == 200, page
    filled = re.search(r'name="voucher" value="([^"]*)"', page.body)
    assert filled is not None and filled.group(1) == codes[1]
    hostile = http(client, f"{PORTAL}/?voucher=%22%3E%3Cscript%3Ex")
    assert hostile.status == 200 and "<script" not in hostile.body
    assert re.search(r'name="voucher" value=""', hostile.body)

    login = portal_post(client, f"{PORTAL}/login",
                        {"action": "voucher", "voucher": filled.group(1)})
    assert login.status == 303, login
    assert has_internet(client, retry=True)

    bad = desanet(sock, "vouchers", "create", "--duration", "1h", "--name", "x" * 65)
    assert bad.returncode == 2 and "name" in bad.stderr
    unknown = desanet(sock, "vouchers", "print", "no-such-batch")
    assert unknown.returncode == 1 and "no batch named" in unknown.stderr
    listed = desanet_json(sock, "vouchers", "list")["vouchers"]
    assert sorted(v["code"] for v in listed) == sorted(codes)  # the bad name created nothing
