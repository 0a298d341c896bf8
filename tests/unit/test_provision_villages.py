"""The villages CSV: every kind of bad cell is named by row and column, all rows at once."""

from __future__ import annotations

import pytest

from provisioning.errors import RowsInvalid
from provisioning.villages import parse_villages
from tests.unit.provkit import CSV, HEADER, ROW_A, ROW_B


def problems(text: str) -> list[str]:
    with pytest.raises(RowsInvalid) as info:
        parse_villages(text)
    return info.value.problems


def test_a_good_file_gives_every_village_with_its_values() -> None:
    a, b = parse_villages(CSV)
    assert (a.row, a.site_id, a.region, a.timezone, a.ssid) == (
        2, "jabar-sukamaju", "Kab. Garut, Jawa Barat", "Asia/Jakarta", "Sukamaju;Net")
    assert a.generated_passphrase and len(a.passphrase) == 14
    assert a.plans == (("harian", "2mbit", "512kbit"), ("sekolah", "10mbit", "2mbit"))
    assert (a.uplink_down, a.uplink_up) == ("20mbit", "5mbit")
    assert (b.timezone, b.passphrase, b.generated_passphrase, b.plans) == (
        "Asia/Makassar", "", False, ())


def test_generated_passphrases_differ_and_are_valid_wpa() -> None:
    a1 = parse_villages(CSV)[0].passphrase
    a2 = parse_villages(CSV)[0].passphrase
    assert a1 != a2 and 8 <= len(a1) <= 63 and a1.isascii()


def test_excel_semicolons_and_bom_and_header_aliases_are_read() -> None:
    text = ("\ufeffSite ID;Nama;Desa;Wilayah;Zona waktu;Wi-Fi SSID;Password;Paket;Uplink capacity;"
            "Broker\nx-1;N;V;R;Asia/Jayapura;S1;rahasia123;;5mbit/1mbit;mqtts://b.example:8883\n")
    text = text.replace("Wi-Fi SSID", "wifi_ssid")
    (v,) = parse_villages(text)
    assert (v.site_id, v.timezone, v.passphrase) == ("x-1", "Asia/Jayapura", "rahasia123")


@pytest.mark.parametrize(("column", "value", "expected"), [
    ("site_id", "Jabar Sukamaju", "1-63 lower-case letters"),
    ("name", "", "1-80 printable characters"),
    ("village", "x" * 81, "1-80 printable characters"),
    ("region", "", "1-80 printable characters"),
    ("timezone", "Mars/Olympus", "WIB, WITA, WIT"),
    ("ssid", "s" * 33, "1-32 bytes"),
    ("passphrase", "short", "8-63 printable ASCII"),
    ("passphrase", "kata sandi é1", "8-63 printable ASCII"),
    ("plans", "harian", "name=down/up entries"),
    ("plans", "harian=2mbit", "download/upload rates"),
    ("plans", "Harian=2mbit/1mbit", "plan names of lower-case"),
    ("plans", "a=1mbit/1mbit a=2mbit/1mbit", "each plan once"),
    ("uplink", "20 Mbps", "download/upload rates"),
    ("broker", "mqtt://b.example:1883", "mqtts://host:port"),
    ("broker", "https://b.example", "mqtts://host:port"),
])
def test_each_bad_cell_names_row_column_found_and_expected(column: str, value: str,
                                                           expected: str) -> None:
    cols = HEADER.strip().split(",")
    cells = ["x-1", "N", "V", "R", "WIB", "S1", "", "", "5mbit/1mbit", "mqtts://b.example:8883"]
    cells[cols.index(column)] = f'"{value}"'
    (line,) = problems(HEADER + ",".join(cells) + "\n")
    assert line.startswith(f"row 2, column {column}: found ")
    assert (f'"{value}"' in line) if value else ("found nothing (empty)" in line)
    assert f"expected {expected}" in line or expected in line.split("expected", 1)[1]


def test_every_row_is_checked_before_reporting() -> None:
    bad = HEADER + ROW_A + "bad id,,V,R,WIB,S2,,,5mbit/1mbit,mqtts://b:8883\n" + \
        "ok-3,N,V,R,XYZ,S3,,,5mbit/1mbit,mqtts://b:8883\n"
    lines = problems(bad)
    assert [line.split(":")[0] for line in lines] == [
        "row 3, column site_id", "row 3, column name", "row 4, column timezone"]


def test_duplicate_site_ids_and_ssids_name_the_first_row() -> None:
    dup = ROW_B.replace("Lembah WiFi", "Sukamaju;Net").replace("ntb-lembah", "jabar-sukamaju")
    lines = problems(HEADER + ROW_A + dup)
    assert any(line.startswith("row 3, column site_id") and "row 2 has the same one" in line
               for line in lines)
    assert any(line.startswith("row 3, column ssid") and "row 2 has the same one" in line
               for line in lines)
    # positive control: different ids and names pass
    assert len(parse_villages(HEADER + ROW_A + ROW_B)) == 2


@pytest.mark.parametrize(("text", "start"), [
    ("", "row 1: the file is empty"),
    (HEADER, "row 2: no villages"),
    (HEADER.replace("broker", "brokers"), "row 1, column 10: found \"brokers\""),
    (HEADER.replace(",broker", ""), "row 1: missing column(s) broker"),
    (HEADER.replace("broker", "ssid"), "row 1, column 10: found \"ssid\" a second time"),
    (HEADER + "a,b,c\n", "row 2: found 3 cells; expected 10"),
])
def test_structure_errors(text: str, start: str) -> None:
    assert any(line.startswith(start) for line in problems(text)), problems(text)


def test_blank_lines_are_skipped_but_row_numbers_stay_the_spreadsheets() -> None:
    lines = problems(HEADER + ",,,,,,,,,\n" + ROW_A.replace("WIB", "ABC"))
    assert lines[0].startswith("row 3, column timezone")
