"""The villages spreadsheet (CSV): one row per gateway, checked whole before anything is made.

Columns (header row required, any order, names case-insensitive; a regional
team exports it from a spreadsheet, so ``;``-separated files and a UTF-8 BOM,
as Excel writes them in Indonesia, are read too):

==========  ===========================================================
site_id     1-63 lower-case letters, digits, '-' or '_': the MQTT topic
            level and the certificate's CN, e.g. ``jabar-sukamaju``
name        the hotspot's name on the portal, e.g. ``Hotspot Desa Sukamaju``
village     e.g. ``Desa Sukamaju``
region      the kabupaten / province, e.g. ``Kab. Garut, Jawa Barat``
timezone    ``WIB``, ``WITA``, ``WIT`` or a zone name (``Asia/Jakarta``)
ssid        the Wi-Fi name, at most 32 bytes
passphrase  8-63 printable ASCII characters, ``generate`` (a random one,
            printed on the card) or empty (an open network: the portal
            is the gate)
plans       empty, or ``name=down/up`` entries separated by spaces, e.g.
            ``harian=2mbit/512kbit sekolah=10mbit/2mbit``
uplink      the uplink's capacity ``down/up``, e.g. ``20mbit/5mbit``
broker      the region's MQTT broker, ``mqtts://host:8883``
==========  ===========================================================

Every problem names its row (as the spreadsheet numbers it: the header is
row 1), its column, what was found and what is expected; all rows are
checked before the caller writes anything.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from gateway.config.telemetry import _broker as check_broker
from gateway.config.units import parse_rate
from gateway.timefmt import is_known_zone
from provisioning.errors import RowsInvalid

COLUMNS = ("site_id", "name", "village", "region", "timezone", "ssid", "passphrase", "plans",
           "uplink", "broker")
# header spellings a spreadsheet may use for the same column
ALIASES = {"site id": "site_id", "site": "site_id", "siteid": "site_id", "time zone": "timezone",
           "time_zone": "timezone", "tz": "timezone", "zona waktu": "timezone",
           "wifi_ssid": "ssid", "wifi ssid": "ssid", "password": "passphrase",
           "wifi_password": "passphrase", "nama": "name", "desa": "village", "wilayah": "region",
           "paket": "plans", "uplink capacity": "uplink", "uplink_capacity": "uplink"}
ZONES = {"WIB": "Asia/Jakarta", "WITA": "Asia/Makassar", "WIT": "Asia/Jayapura"}
GENERATE = "generate"
SITE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
PLAN_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
MAX_ROWS = 5000
# no 0/O, 1/l/I: a passphrase read off a printed card and typed on a phone
_PASS_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"


@dataclass(frozen=True)
class Village:
    row: int
    site_id: str
    name: str
    village: str
    region: str
    timezone: str
    ssid: str
    passphrase: str  # "" is an open network
    generated_passphrase: bool
    plans: tuple[tuple[str, str, str], ...]  # (name, down, up) as written, validated
    uplink_down: str
    uplink_up: str
    broker: str


def generate_passphrase() -> str:
    """Three groups of four, e.g. ``kp7m-x2qa-9hdt``: ~62 bits, easy to read off a card."""
    return "-".join("".join(secrets.choice(_PASS_ALPHABET) for _ in range(4)) for _ in range(3))


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Row:
    """Collects one row's problems; each names the row and the column."""

    def __init__(self, number: int, values: dict[str, str], problems: list[str]) -> None:
        self.number, self.values, self.problems = number, values, problems

    def bad(self, column: str, expected: str) -> None:
        found = self.values.get(column, "")
        shown = f"found {_quote(found)}" if found else "found nothing (empty)"
        self.problems.append(f"row {self.number}, column {column}: {shown}; expected {expected}")


def _text(r: _Row, column: str, limit: int, example: str) -> str:
    value = r.values[column]
    if not value or len(value) > limit or any(not ch.isprintable() for ch in value):
        r.bad(column, f"1-{limit} printable characters, e.g. {_quote(example)}")
    return value


def _rate_pair(r: _Row, column: str, text: str, example: str) -> tuple[str, str] | None:
    down, sep, up = text.partition("/")
    try:
        if not sep:
            raise ValueError
        parse_rate(down)
        parse_rate(up)
    except ValueError:
        r.bad(column, f"download/upload rates, e.g. {_quote(example)}")
        return None
    return down.strip().lower(), up.strip().lower()


def _check(r: _Row) -> Village | None:
    v = r.values
    before = len(r.problems)
    site_id = v["site_id"]
    if not SITE_RE.match(site_id):
        r.bad("site_id", "1-63 lower-case letters, digits, '-' or '_' (one MQTT topic level, "
              "the certificate's name), e.g. \"jabar-sukamaju\"")
    name = _text(r, "name", 80, "Hotspot Desa Sukamaju")
    village = _text(r, "village", 80, "Desa Sukamaju")
    region = _text(r, "region", 80, "Kab. Garut, Jawa Barat")
    zone = ZONES.get(v["timezone"].upper(), v["timezone"])
    if not zone or not is_known_zone(zone):
        r.bad("timezone", "WIB, WITA, WIT or a zone name such as \"Asia/Jakarta\"")
    ssid = v["ssid"]
    if not ssid or len(ssid.encode()) > 32 or any(not ch.isprintable() for ch in ssid):
        r.bad("ssid", "a Wi-Fi name of 1-32 bytes, e.g. \"Hotspot Desa Sukamaju\"")
    passphrase = v["passphrase"]
    generated = passphrase.lower() == GENERATE
    if generated:
        passphrase = generate_passphrase()
    elif passphrase and (not 8 <= len(passphrase) <= 63
                         or any(not " " <= ch <= "~" for ch in passphrase)):
        r.bad("passphrase", "8-63 printable ASCII characters, \"generate\" or empty (an open "
              "network)")
    plans: list[tuple[str, str, str]] = []
    for entry in v["plans"].replace(",", " ").split():
        plan, eq, rates = entry.partition("=")
        pair = _rate_pair(r, "plans", rates, "harian=2mbit/512kbit") if eq else None
        if not eq:
            r.bad("plans", "name=down/up entries separated by spaces, e.g. "
                  "\"harian=2mbit/512kbit sekolah=10mbit/2mbit\"")
        elif not PLAN_RE.match(plan):
            r.bad("plans", f"plan names of lower-case letters, digits and '-', not {_quote(plan)}")
        elif plan in (p[0] for p in plans):
            r.bad("plans", f"each plan once; {_quote(plan)} is named twice")
        elif pair:
            plans.append((plan, *pair))
    uplink = _rate_pair(r, "uplink", v["uplink"], "20mbit/5mbit")
    try:
        check_broker(v["broker"])
        if not v["broker"].startswith("mqtts://"):
            raise ValueError
    except ValueError:
        r.bad("broker", "the region's broker as mqtts://host:port (TLS: the gateway logs in "
              "with its certificate), e.g. \"mqtts://mqtt.diskominfo.example.go.id:8883\"")
    if len(r.problems) > before or uplink is None:
        return None
    return Village(r.number, site_id, name, village, region, zone, ssid, passphrase, generated,
                   tuple(plans), uplink[0], uplink[1], v["broker"])


def _sniff(text: str) -> str:
    first = text.splitlines()[0] if text else ""
    return ";" if first.count(";") > first.count(",") else ","


def parse_villages(text: str, source: str = "villages.csv") -> list[Village]:
    """Every row as a Village; RowsInvalid listing every problem of every row otherwise."""
    villages, problems = check_villages(text, source)
    if problems:
        raise RowsInvalid(problems, source)
    return villages


def check_villages(text: str, source: str = "villages.csv") -> tuple[list[Village], list[str]]:
    """The rows without a problem as Villages, and every problem of every other row (a
    broken header or file: no villages). ``provision check`` goes on to check the valid
    rows' generated configs, so one run reports everything."""
    text = text.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_sniff(text), strict=True)
    problems: list[str] = []
    try:
        rows = list(reader)
    except csv.Error as exc:
        return [], [f"row {reader.line_num}: not CSV ({exc})"]
    if not rows:
        return [], ["row 1: the file is empty; expected a header row naming the columns "
                    + ", ".join(COLUMNS)]
    header = [ALIASES.get(h.strip().lower(), h.strip().lower().replace(" ", "_")) for h in rows[0]]
    for i, h in enumerate(header):
        if h not in COLUMNS:
            problems.append(f"row 1, column {i + 1}: found {_quote(rows[0][i])}; expected one "
                            f"of the column names {', '.join(COLUMNS)}")
        elif header.index(h) != i:
            problems.append(f"row 1, column {i + 1}: found {_quote(rows[0][i])} a second time; "
                            "expected each column once")
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        problems.append(f"row 1: missing column(s) {', '.join(missing)}; expected a header row "
                        f"with {', '.join(COLUMNS)}")
    if problems:
        return [], problems
    body = [(n, row) for n, row in enumerate(rows[1:], 2) if any(cell.strip() for cell in row)]
    if not body:
        return [], ["row 2: no villages; expected one row per gateway under the header"]
    if len(body) > MAX_ROWS:
        return [], [f"row {MAX_ROWS + 2}: more than {MAX_ROWS} villages; expected at most "
                    f"{MAX_ROWS} per file (split it)"]
    out: list[Village] = []
    seen_site: dict[str, int] = {}
    seen_ssid: dict[str, int] = {}
    for number, row in body:
        if len(row) != len(header):
            problems.append(f"row {number}: found {len(row)} cells; expected {len(header)} (one "
                            "per column; quote a value that holds the separator)")
            continue
        values = {h: cell.strip() for h, cell in zip(header, row, strict=True)}
        r = _Row(number, values, problems)
        before = len(problems)
        for key, seen, what in (("site_id", seen_site, "site id"), ("ssid", seen_ssid, "Wi-Fi name")):
            first = seen.setdefault(values[key].lower(), number)
            if values[key] and first != number:
                r.bad(key, f"a {what} of its own; row {first} has the same one")
        village = _check(r)
        if village is not None and len(problems) == before:
            out.append(village)
    return out, problems


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RowsInvalid([f"byte {exc.start}: not UTF-8; expected the CSV saved as UTF-8 "
                           "(in a spreadsheet: \"CSV UTF-8\")"], str(path)) from None
    except OSError as exc:
        raise RowsInvalid([f"cannot read the file: {exc.strerror}"], str(path)) from None


def read_villages(path: Path) -> list[Village]:
    return parse_villages(_read_text(path), str(path))


def check_file(path: Path) -> tuple[list[Village], list[str]]:
    """:func:`check_villages` of a file (RowsInvalid if it cannot be read as UTF-8)."""
    return check_villages(_read_text(path), str(path))
