"""Importing codes an office already sold: every kind of row error with its row, column,
what was found and what was expected; all rows checked first; nothing half-imported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.core.voucher_import import (
    ImportRejected,
    RowProblem,
    parse_import,
    parse_price,
    parse_ros_duration,
    profile_mapper,
)
from gateway.errors import Invalid
from tests.unit.test_office_report import Office

PLANS = {"jam": object(), "hari": object()}
MAP = profile_mapper(PLANS, {"1-Jam": "jam"})

MIKHMON = (
    "name,password,profile,limit-uptime,comment,server\n"
    "k7mqx3par9,k7mqx3par9,1-Jam,1h,vc-629-05.10.21-,all\n"
    "ABCDE-FGHJK,,hari,1d,,all\n"
    "23456 789AB,,default,,,all\n"
)


def problems(text: str, seller: str = "") -> list[RowProblem]:
    with pytest.raises(ImportRejected) as err:
        parse_import(text, MAP, PLANS, seller)
    return err.value.rows


def test_a_mikhmon_export_is_read() -> None:
    parsed = parse_import(MIKHMON, MAP, PLANS, "Bu Sari")
    assert [(r.row, r.code, r.plan, r.duration, r.seller) for r in parsed.rows] == [
        (2, "K7MQX-3PAR9", "jam", 3600, "Bu Sari"),
        (3, "ABCDE-FGHJK", "hari", 86400, "Bu Sari"),
        (4, "23456-789AB", None, None, "Bu Sari"),
    ]
    assert parsed.ignored_columns == ["comment", "server"]


def test_semicolons_a_byte_order_mark_and_spelled_headers() -> None:
    text = "\ufeffUser Name;Profile;Harga;Seller\nK7MQX3PAR9;JAM;Rp 5.000;Pak Budi\n"
    parsed = parse_import(text.replace("User Name", "Username"), MAP, PLANS)
    assert [(r.code, r.plan, r.price, r.seller) for r in parsed.rows] == [
        ("K7MQX-3PAR9", "jam", 5000, "Pak Budi")]


@pytest.mark.parametrize(("text", "expected"), [
    # a code outside the alphabet (0, O, 1, I) or of the wrong length
    ("name,profile\nabc01,jam\n", [(2, "name", "abc01", "a desanet code")]),
    # a duplicate inside the file names the first row
    ("name,profile\nK7MQX3PAR9,jam\nk7mqx-3par9,jam\n",
     [(3, "name", "k7mqx-3par9", "(row 2)")]),
    # a profile that is no plan
    ("name,profile\nK7MQX3PAR9,3-Jam\n", [(2, "profile", "3-Jam", "shaping.plans")]),
    # a password that is not the code
    ("name,password,profile\nK7MQX3PAR9,rahasia,jam\n",
     [(2, "password", "(hidden)", "one code")]),
    # a duration RouterOS would not write
    ("name,profile,limit-uptime\nK7MQX3PAR9,jam,sejam\n",
     [(2, "limit-uptime", "sejam", "a duration")]),
    ("name,profile,price\nK7MQX3PAR9,jam,lima ribu\n",
     [(2, "price", "lima ribu", "rupiah")]),
    ("name,profile,shared-users\nK7MQX3PAR9,jam,0\n",
     [(2, "shared-users", "0", "1 to 64")]),
    ("name,profile\nK7MQX3PAR9,jam,extra\n", [(2, "", "3 cells", "at most 2")]),
    # the header
    ("comment,profile\nx,jam\n", [(1, "", "comment,profile", "no code column")]),
    ("name,user,profile\nx,y,jam\n", [(1, "user", "user", "one column for code")]),
    ("", [(1, "", "an empty file", "a header")]),
    ("name,profile\n\n", [(2, "", "no rows", "at least one")]),
])
def test_each_kind_of_error_names_row_column_found_expected(
        text: str, expected: list[tuple[int, str, str, str]]) -> None:
    found = problems(text)
    assert [(p.row, p.column, p.found) for p in found] == [e[:3] for e in expected]
    for p, e in zip(found, expected, strict=True):
        assert e[3] in p.expected, p


def test_every_row_is_checked_before_giving_up() -> None:
    text = "name,profile\nbad1,jam\nK7MQX3PAR9,nope\nABCDE-FGHJK,jam\nbad2,hari\n"
    rows = [(p.row, p.column) for p in problems(text)]
    assert rows == [(2, "name"), (3, "profile"), (5, "name")]
    message = str(ImportRejected(problems(text)))
    assert "3 problem(s)" in message and "row 5, column name: found 'bad2'" in message


def test_a_seller_with_control_characters_is_refused() -> None:
    assert problems("name,profile\nK7MQX3PAR9,jam\n", seller="a\x1bb")[0].column == "--seller"


@pytest.mark.parametrize(("text", "seconds"), [
    ("1h", 3600), ("1d", 86400), ("3h30m", 12600), ("1w", 604800), ("01:00:00", 3600),
    ("1d 02:00:00", 93600), ("1d02:00:00", 93600), ("45s", 45), ("", None), ("0", None),
    ("00:00:00", None),
])
def test_routeros_durations(text: str, seconds: int | None) -> None:
    assert parse_ros_duration(text) == seconds


@pytest.mark.parametrize("text", ["1x", "h", "01:60:00", "-1h", "1.5h"])
def test_bad_routeros_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ros_duration(text)


@pytest.mark.parametrize(("text", "rupiah"), [
    ("5000", 5000), ("5.000", 5000), ("Rp 5.000", 5000), ("Rp5,000", 5000),
    ("5.000,-", 5000), ("rp. 1.250.000", 1250000)])
def test_prices(text: str, rupiah: int) -> None:
    assert parse_price(text) == rupiah


# -- the service, over a real store -----------------------------------------------------


@pytest.fixture
def office(tmp_path: Path) -> Any:
    o = Office(tmp_path)
    yield o
    o.worker.shutdown()
    o.store.close()


async def test_import_stores_all_rows_marked_imported(office: Office) -> None:
    # "jam" sells 1h of use valid 1d: its vouchers last the validity (as `vouchers create`);
    # "hari" has neither: the row's limit-uptime is its duration
    batch, made, ignored = await office.service.import_csv(
        "name,profile,limit-uptime\nK7MQX3PAR9,1jam,1h\nABCDE-FGHJK,hari,2h\n",
        {"1jam": "jam"}, duration=None, seller="Bu Sari", name="Mikhmon lama")
    stored = office.store.vouchers(batch)
    assert [(v.code, v.plan, v.duration, v.imported, v.seller, v.serial, v.batch_name)
            for v in stored] == [
        ("K7MQX-3PAR9", "jam", 86400, True, "Bu Sari", 1, "Mikhmon lama"),
        ("ABCDE-FGHJK", "hari", 7200, True, "Bu Sari", 2, "Mikhmon lama")]
    assert made == stored and ignored == []


async def test_limit_uptime_must_be_the_plans_time_of_use(office: Office) -> None:
    with pytest.raises(ImportRejected) as err:
        await office.service.import_csv("name,profile,limit-uptime\nK7MQX3PAR9,jam,2h\n", {},
                                        None)
    assert [(p.row, p.column, p.found) for p in err.value.rows] == [(2, "limit-uptime", "2h")]


async def test_a_plan_without_a_duration_needs_one(office: Office) -> None:
    with pytest.raises(ImportRejected) as err:
        await office.service.import_csv("name,profile\nK7MQX3PAR9,hari\n", {}, None)
    assert [(p.row, p.column) for p in err.value.rows] == [(2, "limit-uptime")]
    # "jam" sells a validity: its rows need none
    _, made, _ = await office.service.import_csv("name,profile\nK7MQX3PAR9,jam\n", {}, None)
    assert made[0].duration == 86400


async def test_codes_already_stored_import_nothing(office: Office) -> None:
    office.add("ABCDE-FGHJK", 0)
    text = "name,profile\nK7MQX3PAR9,jam\nabcde-fghjk,jam\n"
    with pytest.raises(ImportRejected) as err:
        await office.service.import_csv(text, {}, None)
    assert [(p.row, p.column, p.found) for p in err.value.rows] == [
        (3, "code", "ABCDE-FGHJK")]
    assert office.store.voucher("K7MQX-3PAR9") is None  # the good row was not half-imported
    again = "name,profile\nK7MQX3PAR9,jam\n"
    await office.service.import_csv(again, {}, None)
    with pytest.raises(ImportRejected):  # importing the same file twice
        await office.service.import_csv(again, {}, None)


async def test_a_map_to_an_unknown_plan_is_refused(office: Office) -> None:
    with pytest.raises(Invalid) as err:
        await office.service.import_csv("name,profile\nK7MQX3PAR9,x\n", {"x": "nope"}, None)
    assert err.value.field == "map"
