"""The setup wizard's fields and the config text they edit (pure: no Textual here).

Each field is one key of gateway.toml (``path`` is its dotted path, as in the
problem lines of ``desanet config check``). The wizard never validates a value
itself: :func:`would_be_text` writes the values into the current file text
(tomlkit keeps its comments and layout) and :func:`check` runs the config
loader on it, the same code ``desanet config check`` runs; :func:`problems_by_field`
then hands each problem line to the field whose path it starts with.

Only a value the technician changed is written, so a key the file leaves at
its default stays out of the file. The one syntax of the wizard's own is the
plans line (``school 4mbit/1mbit, malam 2mbit/512kbit``): its rates and names
are still the schema's to judge.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import tomlkit
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from tomlkit.items import Table

from gateway.config.loader import parse_config, parse_config_text
from gateway.config.schema import Config
from gateway.config.units import format_rate
from gateway.errors import ConfigError

Kind = Literal["text", "secret", "optional", "bool", "choice", "rate", "plans", "list"]
PLANS = "shaping.plans"
_LEAD_PATH = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)")
_PLAN_ENTRY = re.compile(r"^([^\s/]+)\s+([^\s/]+)\s*/\s*([^\s/]+)$")
PLANS_SYNTAX = ('shaping.plans: write each plan as NAME DOWN/UP, separated by commas; '
                'write e.g. "school 4mbit/1mbit, malam 2mbit/512kbit"')


@dataclass(frozen=True, slots=True)
class Field:
    path: str
    label_id: str
    label_en: str
    kind: Kind = "text"
    choices: tuple[str, ...] = ()
    placeholder: str = ""
    # Shown (and written) only while the field at this path has one of these values:
    # the static address only for wan_address = "static", and so on.
    when: tuple[str, tuple[str, ...]] | None = None

    @property
    def section(self) -> str:
        return self.path.split(".", 1)[0]

    @property
    def key(self) -> str:
        return self.path.split(".", 1)[1]

    @property
    def widget_id(self) -> str:
        return "f-" + self.path.replace(".", "-").replace("_", "-")


@dataclass(frozen=True, slots=True)
class Group:
    title_id: str
    title_en: str
    fields: tuple[Field, ...]
    # What the issue asks for that gateway.toml does not hold (said, not invented).
    note_id: str = ""
    note_en: str = ""


ZONES = ("Asia/Jakarta", "Asia/Makassar", "Asia/Jayapura")
WAN = "network.wan_address"
WAN_METHODS = ("dhcp", "static", "pppoe")
BOOL = ("true", "false")

GROUPS: tuple[Group, ...] = (
    Group("Situs", "Site", (
        Field("telemetry.site_id", "ID situs (MQTT)", "Site id (MQTT)", placeholder="jabar-sukamaju"),
        Field("site.name", "Nama hotspot", "Hotspot name", placeholder="Hotspot Desa Sukamaju"),
        Field("site.village", "Desa", "Village", placeholder="Desa Sukamaju"),
        Field("site.timezone", "Zona waktu", "Time zone", "choice", ZONES),
    )),
    Group("Wi-Fi", "Wi-Fi", (
        Field("site.wifi_ssid", "Nama Wi-Fi (SSID)", "Wi-Fi name (SSID)", placeholder="Hotspot Desa"),
        Field("site.wifi_password", "Kata sandi Wi-Fi", "Wi-Fi passphrase", "secret",
              placeholder="kosong = terbuka / empty = open"),
        Field("site.wifi_country", "Negara Wi-Fi", "Wi-Fi country", placeholder="ID"),
    )),
    Group("WAN (uplink)", "WAN (uplink)", (
        Field("network.wan_interface", "Antarmuka WAN", "WAN interface", placeholder="eth0"),
        Field("network.wan_address", "Alamat WAN lewat", "WAN address by", "choice", WAN_METHODS),
        Field("network.wan_static_address", "Alamat statis/prefiks", "Static address/prefix",
              "optional", placeholder="192.0.2.10/24", when=(WAN, ("static",))),
        Field("network.wan_static_gateway", "Gateway statis", "Static gateway", "optional",
              placeholder="192.0.2.1", when=(WAN, ("static",))),
        Field("network.wan_dns", "DNS (koma)", "DNS (commas)", "list",
              placeholder="1.1.1.1, 8.8.8.8", when=(WAN, ("static", "pppoe"))),
        Field("network.pppoe_username", "Nama pengguna PPPoE", "PPPoE user name",
              placeholder="sukamaju@isp", when=(WAN, ("pppoe",))),
        Field("network.pppoe_password", "Kata sandi PPPoE", "PPPoE password", "secret",
              when=(WAN, ("pppoe",))),
    )),
    Group("LAN", "LAN", (
        Field("network.lan_interface", "Antarmuka LAN", "LAN interface", placeholder="br-lan"),
        Field("network.lan_address", "Alamat LAN/prefiks", "LAN address/prefix",
              placeholder="10.42.0.1/24"),
        Field("dhcp.range_start", "DHCP mulai", "DHCP range start", placeholder="10.42.0.100"),
        Field("dhcp.range_end", "DHCP akhir", "DHCP range end", placeholder="10.42.0.250"),
    )),
    Group("Portal", "Portal", (
        Field("portal.mode", "Mode portal", "Portal mode", "choice", ("terms", "voucher", "both")),
        Field("portal.terms_id", "Syarat (Indonesia)", "Terms (Indonesian)"),
        Field("portal.terms_en", "Syarat (Inggris)", "Terms (English)"),
    )),
    Group("Paket dan uplink", "Plans and uplink", (
        Field("shaping.enabled", "Pembagian adil", "Fair sharing", "bool", BOOL),
        Field("shaping.uplink_down", "Uplink turun", "Uplink down", "rate", placeholder="20mbit"),
        Field("shaping.uplink_up", "Uplink naik", "Uplink up", "rate", placeholder="5mbit"),
        Field("shaping.client_down", "Klien turun", "Client down", "rate", placeholder="2mbit"),
        Field("shaping.client_up", "Klien naik", "Client up", "rate", placeholder="512kbit"),
        Field(PLANS, "Paket (nama turun/naik)", "Plans (name down/up)", "plans",
              placeholder="school 4mbit/1mbit, malam 2mbit/512kbit"),
    )),
    Group("MQTT", "MQTT", (
        Field("telemetry.enabled", "Laporan MQTT", "MQTT reports", "bool", BOOL),
        Field("telemetry.broker", "Broker", "Broker", "optional",
              placeholder="mqtts://mqtt.example.go.id:8883"),
        Field("telemetry.ca_file", "Berkas CA", "CA file", "optional",
              placeholder="/etc/desanet/mqtt/ca.crt"),
        Field("telemetry.cert_file", "Sertifikat", "Certificate", "optional",
              placeholder="/etc/desanet/mqtt/device.crt"),
        Field("telemetry.key_file", "Kunci", "Key", "optional",
              placeholder="/etc/desanet/mqtt/device.key"),
    )),
)

FIELDS: tuple[Field, ...] = tuple(f for g in GROUPS for f in g.fields)
BY_PATH: dict[str, Field] = {f.path: f for f in FIELDS}


# -- reading the current text ----------------------------------------------------------


def _model_default(field: Field) -> object:
    section = Config.model_fields[field.section].annotation
    if not (isinstance(section, type) and issubclass(section, BaseModel)):
        return None
    info = section.model_fields.get(field.key)
    if info is None:
        return None
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return None if info.default is PydanticUndefined else info.default


def show(field: Field, value: object) -> str:
    """A value as the wizard shows it (the file's own spelling where it has one)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if field.kind == "rate" and isinstance(value, int):
        return format_rate(value)
    if field.kind == "plans" and isinstance(value, Mapping):
        return ", ".join(_show_plan(name, plan) for name, plan in value.items())
    if field.kind == "list" and isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _show_plan(name: str, plan: object) -> str:
    get: Callable[[str], object] = plan.get if isinstance(plan, Mapping) else (lambda _k: "")

    def rate(key: str) -> str:
        value = get(key)
        return format_rate(value) if isinstance(value, int) and not isinstance(value, bool) \
            else str(value or "")
    return f"{name} {rate('down')}/{rate('up')}"


def values_of(text: str) -> dict[str, str]:
    """The wizard's starting values: each field as the file writes it, else its default.

    Raises ConfigError (a "TOML syntax error" line) for a text that is not TOML."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"TOML syntax error: {exc}"]) from exc
    out = {}
    for field in FIELDS:
        section = data.get(field.section)
        if isinstance(section, dict) and field.key in section:
            out[field.path] = show(field, section[field.key])
        else:
            out[field.path] = show(field, _model_default(field))
    return out


# -- writing the would-be text ---------------------------------------------------------


def _typed(field: Field, text: str) -> object:
    if field.kind == "bool":
        return text == "true"
    if field.kind == "list":
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def visible(field: Field, values: Mapping[str, str]) -> bool:
    """Whether the form shows ``field`` with these values (a hidden field's edits are
    not written: switching WAN back to DHCP leaves the static fields as the file had them)."""
    if field.when is None:
        return True
    path, wanted = field.when
    return values.get(path, "") in wanted


def would_be_text(base: str, start: Mapping[str, str], values: Mapping[str, str]) -> str:
    """``base`` with every changed value (``values`` against ``start``) written in, its
    comments and layout kept (tomlkit).

    Raises ConfigError with the plans line's problem when it cannot be read.
    """
    doc = tomlkit.parse(base)
    _write(doc, start, values, tomlkit.table, _toml_plan)
    return tomlkit.dumps(doc)


def would_be_data(base: Mapping[str, Any], start: Mapping[str, str],
                  values: Mapping[str, str]) -> dict[str, Any]:
    """What ``tomllib.loads(would_be_text(...))`` gives, ~30 times faster (no tomlkit):
    the check run at each keystroke. ``base`` is the parsed base text (not changed)."""
    data = copy.deepcopy(dict(base))
    _write(data, start, values, dict, lambda down, up: {"down": down, "up": up})
    return data


def _toml_plan(down: str, up: str) -> Any:
    plan = tomlkit.table()
    plan.add("down", down)
    plan.add("up", up)
    plan.add(tomlkit.nl())
    return plan


def _write(doc: Any, start: Mapping[str, str], values: Mapping[str, str],
           new_table: Callable[[], Any], new_plan: Callable[[str, str], Any]) -> None:
    """The one writer of both forms (a tomlkit document or plain dicts)."""
    for name, info in Config.model_fields.items():
        # A section the file lacks but must have: its fields' problems then name them
        # ("site.name: required but missing"), not only the section.
        if info.is_required() and name not in doc:
            doc[name] = new_table()
    for field in FIELDS:
        value = values.get(field.path, "")
        if value == start.get(field.path, "") or not visible(field, values):
            continue
        table = doc.get(field.section)
        if table is None:
            table = new_table()
            doc[field.section] = table
        if field.kind == "plans":
            _write_plans(table, value, new_plan)
        elif field.kind == "optional" and not value.strip():
            if field.key in table:
                del table[field.key]
        else:
            table[field.key] = _typed(field, value)


def parse_plans(text: str) -> dict[str, tuple[str, str]]:
    """``"school 4mbit/1mbit, malam 2mbit/512kbit"`` -> {name: (down, up)}; raises ValueError."""
    plans: dict[str, tuple[str, str]] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        match = _PLAN_ENTRY.match(entry)
        if match is None or match.group(1) in plans:
            raise ValueError(PLANS_SYNTAX)
        plans[match.group(1)] = (match.group(2), match.group(3))
    return plans


def _write_plans(shaping: Any, text: str, new_plan: Callable[[str, str], Any]) -> None:
    try:
        wanted = parse_plans(text)
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None
    plans = shaping.get("plans")
    if not wanted:
        if plans is not None:
            del shaping["plans"]  # an empty super-table would vanish from the text anyway
        return
    if plans is None:
        plans = tomlkit.table(is_super_table=True) if isinstance(shaping, Table) else {}
        shaping["plans"] = plans
    for name in [n for n in plans if n not in wanted]:
        del plans[name]
    for name, (down, up) in wanted.items():
        plan = plans.get(name)
        if isinstance(plan, (Table, dict)):
            # Other keys of a kept plan (priority, ceil_*, labels) stay as the file has them.
            plan["down"] = down
            plan["up"] = up
        else:
            plans[name] = new_plan(down, up)


# -- checking ------------------------------------------------------------------------


def check(base: str, start: Mapping[str, str], values: Mapping[str, str]) -> tuple[str, list[str]]:
    """The would-be text and its problems: the lines ``desanet config check`` prints for it
    (empty when it passes)."""
    try:
        text = would_be_text(base, start, values)
    except ConfigError as exc:
        return base, exc.problems
    try:
        parse_config_text(text)
    except ConfigError as exc:
        return text, exc.problems
    return text, []


def quick_check(base: Mapping[str, Any], start: Mapping[str, str],
                values: Mapping[str, str]) -> list[str]:
    """:func:`check`'s problems from the parsed base (fast enough for every keystroke)."""
    try:
        parse_config(would_be_data(base, start, values))
    except ConfigError as exc:
        return exc.problems
    return []


def field_of(line: str) -> Field | None:
    """The field a problem line is about: the one whose path the line starts with."""
    match = _LEAD_PATH.match(line)
    if match is None:
        return None
    lead = match.group(1).rstrip(".")
    for field in FIELDS:
        if lead == field.path or lead.startswith((field.path + ".", field.path + "[")):
            return field
    return None


def problems_by_field(problems: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Each line under its field's path; the lines no field owns (a section's own check,
    a key the wizard does not show) in the second list."""
    owned: dict[str, list[str]] = {}
    other: list[str] = []
    for line in problems:
        field = field_of(line)
        if field is None:
            other.append(line)
        else:
            owned.setdefault(field.path, []).append(line)
    return owned, other
