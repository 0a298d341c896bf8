import pytest

from gateway import timefmt
from gateway.config.schema import Site

# 2026-12-02 07:05:09 UTC
TS = 1796195109.0


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        ("Asia/Jakarta", "2 Des 2026 14:05 WIB"),
        ("Asia/Pontianak", "2 Des 2026 14:05 WIB"),
        ("Asia/Makassar", "2 Des 2026 15:05 WITA"),
        ("Asia/Jayapura", "2 Des 2026 16:05 WIT"),
        ("UTC", "2 Des 2026 07:05 UTC"),
    ],
)
def test_local_date_and_zone_label(tz: str, expected: str) -> None:
    assert timefmt.format_datetime(TS, tz) == expected


def test_english_month_and_time_only() -> None:
    assert timefmt.format_datetime(TS - 86400 * 200, "Asia/Jakarta", "en").split()[1] == "May"
    assert timefmt.format_time(TS, "Asia/Makassar") == "15:05 WITA"
    assert timefmt.format_time(TS, "Asia/Jayapura", seconds=True) == "16:05:09 WIT"
    assert timefmt.format_date(TS, "Asia/Jakarta") == "2 Des 2026"


def test_missing_time_is_a_dash() -> None:
    assert timefmt.format_datetime(None) == "-"
    assert timefmt.format_datetime(0) == "-"
    assert timefmt.iso(None) is None


def test_iso_carries_the_site_offset() -> None:
    assert timefmt.iso(TS, "Asia/Jakarta") == "2026-12-02T14:05:09+07:00"
    assert timefmt.iso(TS + 0.7, "Asia/Jayapura") == "2026-12-02T16:05:09+09:00"


def test_site_timezone_defaults_to_jakarta_and_rejects_unknown() -> None:
    assert Site(name="x", village="y").timezone == "Asia/Jakarta"
    assert Site(name="x", village="y", timezone="Asia/Makassar").timezone == "Asia/Makassar"
    with pytest.raises(ValueError, match="timezone"):
        Site(name="x", village="y", timezone="Mars/Olympus")
