"""The office's control routes (report, import) and the CLI's CSV of the report."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.cli_office import CSV_COLUMNS, write_report_csv
from tests.unit.corekit import Core, build_core
from tests.unit.test_office_report import DEC1, H, Office, _cfg

Client = TestClient[Any, Any]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Client, Office]]:
    office = Office(tmp_path)
    core: Core = build_core(tmp_path / "core", _cfg())
    await core.start()
    core.ops.office = office.service
    async with TestClient(TestServer(core.control_app())) as c:
        yield c, office
    office.worker.shutdown()
    office.store.close()


async def test_the_report_route_and_its_date_errors(setup: tuple[Client, Office]) -> None:
    client, office = setup
    office.add("AAAAA-22222", DEC1 + H, seller="Bu Sari")
    office.use("AAAAA-22222", DEC1 + 2 * H)
    resp = await client.get("/v1/vouchers/report?from=2026-12-01&to=2026-12-01")
    data = await resp.json()
    assert resp.status == 200 and data["totals"]["revenue"] == 5000, data
    assert data["by_seller"][0]["seller"] == "Bu Sari"
    for query, field in (("from=2026-12-32", "from"), ("to=kemarin", "to"),
                         ("from=2026-12-02&to=2026-12-01", "to"), ("seller=a%09b", "seller")):
        resp = await client.get(f"/v1/vouchers/report?{query}")
        body = await resp.json()
        assert resp.status == 400 and body["field"] == field, (query, body)


async def test_the_import_route_lists_every_problem(setup: tuple[Client, Office]) -> None:
    client, office = setup
    resp = await client.post("/v1/vouchers/import", json={
        "text": "name,profile\nbad,jam\nK7MQX3PAR9,nope\n", "seller": "Bu Sari"})
    body = await resp.json()
    assert resp.status == 400 and body["kind"] == "invalid"
    assert [p.split(":")[0] for p in body["problems"]] == ["row 2, column name",
                                                           "row 3, column profile"]
    assert office.store.vouchers() == []
    resp = await client.post("/v1/vouchers/import", json={
        "text": "name,profile,limit-uptime\nK7MQX3PAR9,jam,1h\n", "map": {"x": "jam"},
        "seller": "Bu Sari", "name": "Mikhmon lama"})
    body = await resp.json()
    assert resp.status == 201 and body["imported"] == 1, body
    assert body["vouchers"][0]["imported"] is True and body["vouchers"][0]["seller"] == "Bu Sari"


async def test_the_csv_has_a_header_and_a_row_per_group(setup: tuple[Client, Office]) -> None:
    _, office = setup
    office.add("AAAAA-22222", DEC1 + H, seller="Bu Sari")
    office.use("AAAAA-22222", DEC1 + 2 * H, down=2048)
    out = io.StringIO()
    write_report_csv(await office.service.report(), out)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert tuple(rows[0]) == CSV_COLUMNS
    got = {(r["group"], r["key"]): (r["sold"], r["revenue"], r["bytes_down"]) for r in rows}
    assert got == {("total", ""): ("1", "5000", "2048"), ("plan", "jam"): ("1", "5000", "2048"),
                   ("batch", "b1"): ("1", "5000", "2048"),
                   ("seller", "Bu Sari"): ("1", "5000", "2048"),
                   ("day", "2026-12-01"): ("1", "5000", "")}


async def test_the_report_json_keeps_its_documented_shape(setup: tuple[Client, Office]) -> None:
    """docs/vouchers-office.md "Report JSON": scripts depend on these keys (format 1)."""
    _, office = setup
    office.add("AAAAA-22222", DEC1 + H, seller="Bu Sari")
    office.use("AAAAA-22222", DEC1 + 2 * H)
    data = await office.service.report()
    assert set(data) == {"format", "timezone", "generated", "generated_iso", "from", "to",
                         "from_ts", "to_ts", "batch", "seller", "totals", "by_plan",
                         "by_batch", "by_seller", "by_day"}
    row = {"created", "sold", "active", "expired", "revoked", "unused", "imported", "revenue",
           "bytes_down", "bytes_up", "used_seconds", "used_hours"}
    assert set(data["totals"]) == row
    assert set(data["by_plan"][0]) == row | {"plan"}
    assert set(data["by_batch"][0]) == row | {"batch", "batch_name"}
    assert set(data["by_seller"][0]) == row | {"seller"}
    assert set(data["by_day"][0]) == {"day", "created", "sold", "revenue"}
    docs = (Path(__file__).parents[2] / "docs/vouchers-office.md").read_text()
    assert all(f"`{k}`" in docs for k in row)


async def test_the_human_report(setup: tuple[Client, Office]) -> None:
    from gateway.cli_office import report_lines

    _, office = setup
    office.add("AAAAA-22222", DEC1 + H, seller="Bu Sari", batch="warung")
    office.use("AAAAA-22222", DEC1 + 2 * H, down=3 * 1024 * 1024, seconds=5400)
    text = "\n".join(report_lines(await office.service.report("2026-12-01", "2026-12-01")))
    assert "vouchers report 2026-12-01 .. 2026-12-01 (Asia/Jakarta)" in text
    assert "revenue Rp 5.000" in text and "3.0 MiB down" in text and "1.5 h online" in text
    assert "Bu Sari" in text and "warung" in text and "2026-12-01" in text
