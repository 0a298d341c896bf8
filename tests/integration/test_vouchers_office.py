"""The village office against the real daemon: a seller's batch sold through the portal
shows in `vouchers report --json` and `--csv`, the printed sheet carries the price, and
codes imported from a Mikhmon CSV log a real client in (root, namespaces, the daemon)."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Any

import pytest

from desanet_lab import LabInfo, LabSpec
from gateway.core.voucher_codes import generate_code
from tests.integration.conftest import (
    LAB_TOOLS,
    PORTAL,
    LabFactory,
    desanet,
    desanet_json,
    has_internet,
    portal_post,
    require_root,
    require_tools,
    unique_prefix,
    wait_until,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS)]


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    spec = LabSpec(prefix=unique_prefix("of"), clients=2, extra={
        "shaping": {"enabled": True, "plans": {
            "jam": {"down": "2mbit", "up": "1mbit", "price": 5000, "validity": "1d"}}},
    })
    return make_lab(spec)


def _login(ns: str, code: str) -> None:
    login = portal_post(ns, f"{PORTAL}/login", {"action": "voucher", "voucher": code})
    assert login.status == 303, login
    assert has_internet(ns, retry=True)


def test_a_sellers_sale_is_in_the_report(lab: LabInfo) -> None:
    sock = lab.control_socket
    made = desanet_json(sock, "vouchers", "create", "--count", "2", "--duration", "1d",
                        "--plan", "jam", "--name", "Warung", "--seller", "Bu Sari")
    assert [(v["price"], v["seller"]) for v in made["vouchers"]] == [(5000, "Bu Sari")] * 2
    out = Path(tempfile.mkdtemp(prefix="dn-office-")) / "sheet.html"
    printed = desanet(sock, "vouchers", "print", made["batch"], "-o", str(out))
    assert printed.returncode == 0, printed.stderr
    assert out.read_text(encoding="utf-8").count("Rp 5.000") == 2

    _login(lab.client(1).name, made["vouchers"][0]["code"])

    def usage() -> dict[str, Any]:
        data: dict[str, Any] = desanet_json(sock, "vouchers", "report", "--seller", "Bu Sari",
                                            "--json")
        return data

    # the kernel's byte counters reach the vouchers (and the report) within seconds
    report = wait_until(lambda: (r := usage())["totals"]["bytes_down"] > 0 and r, 60,
                        "the voucher's bytes in the report")
    t = report["totals"]
    assert (t["created"], t["sold"], t["active"], t["unused"], t["revenue"]) == \
        (2, 1, 1, 1, 5000), report
    assert [(s["seller"], s["revenue"]) for s in report["by_seller"]] == [("Bu Sari", 5000)]
    assert [(p["plan"], p["sold"]) for p in report["by_plan"]] == [("jam", 1)]

    table = desanet(sock, "vouchers", "report", "--batch", made["batch"], "--csv")
    assert table.returncode == 0, table.stderr
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    total = next(r for r in rows if r["group"] == "total")
    assert (total["sold"], total["revenue"]) == ("1", "5000")
    assert {r["group"] for r in rows} >= {"total", "plan", "batch", "seller", "day"}

    bad = desanet(sock, "vouchers", "report", "--from", "2026-13-01")
    assert bad.returncode == 2 and "--from" in bad.stderr


def test_an_imported_code_logs_a_client_in(lab: LabInfo) -> None:
    sock = lab.control_socket
    code, other = generate_code(), generate_code()
    path = Path(tempfile.mkdtemp(prefix="dn-import-")) / "mikhmon.csv"
    path.write_text("name,password,profile,limit-uptime,comment\n"
                    f"{code.replace('-', '').lower()},,1-Jam,2h,vc-629-05.10.21-\n"
                    f"{other},,jam,,vc-629-05.10.21-\n", encoding="utf-8")
    refused = desanet(sock, "vouchers", "import", str(path), "--seller", "Pak Budi")
    assert refused.returncode == 2, refused.describe()
    assert "row 2, column profile: found '1-Jam'" in refused.stderr
    listed = {v["code"] for v in desanet_json(sock, "vouchers", "list")["vouchers"]}
    assert not listed & {code, other}  # the good row was not imported alone

    done = desanet_json(sock, "vouchers", "import", str(path), "--map", "1-Jam=jam",
                        "--seller", "Pak Budi", "--json")
    assert done["imported"] == 2 and done["ignored_columns"] == ["comment"]
    again = desanet(sock, "vouchers", "import", str(path), "--map", "1-Jam=jam")
    assert again.returncode == 2 and "stored already" in again.stderr

    _login(lab.client(2).name, code)
    report = desanet_json(sock, "vouchers", "report", "--seller", "Pak Budi", "--json")
    t = report["totals"]
    assert (t["sold"], t["imported"], t["revenue"]) == (1, 1, 0), report
