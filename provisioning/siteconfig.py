"""A village's first-boot ``gateway.toml``, made from its CSV row and checked by the gateway's
own config validation (gateway/config), so a bundle never carries a config the box refuses.

The file is the example config's shape with the row's values: commented, so a
technician can read and edit it in the TUI later. Telemetry is on, with the
device certificate and the operators' command keys the bundle installs
(docs/provisioning.md).
"""

from __future__ import annotations

import json

from gateway.config.loader import parse_config_text
from gateway.errors import ConfigError
from provisioning.villages import Village

ETC = "/etc/desanet"
MQTT_DIR = f"{ETC}/mqtt"
# config field path prefix -> the CSV column it came from (for errors that only the whole
# config can find, e.g. a plan's rate above the uplink)
_COLUMN_OF = (("site.name", "name"), ("site.village", "village"), ("site.timezone", "timezone"),
              ("site.wifi_ssid", "ssid"), ("site.wifi_password", "passphrase"),
              ("shaping.plans", "plans"), ("shaping.uplink", "uplink"), ("shaping", "uplink"),
              ("telemetry.broker", "broker"), ("telemetry.site_id", "site_id"))


def q(value: str) -> str:
    """A TOML basic string (JSON's escapes are all valid TOML ones)."""
    return json.dumps(value, ensure_ascii=False)


def render_config(v: Village, command_keys: list[str]) -> str:
    plans = "".join(
        f"\n[shaping.plans.{name}]\ndown = {q(down)}\nup = {q(up)}\n" for name, down, up in v.plans)
    keys = "".join(f"\n    {q(k)}," for k in command_keys)
    return f"""\
# desanet gateway configuration for {v.site_id} (made by `desanet provision`).
# Region: {v.region}
# Check a change:  desanet config check /etc/desanet/gateway.toml
# Durations: "90s", "30m", "4h", "1d".  Rates: "512kbit", "10mbit".

[site]
name = {q(v.name)}
village = {q(v.village)}
language = "id"
timezone = {q(v.timezone)}
wifi_ssid = {q(v.ssid)}
wifi_password = {q(v.passphrase)}            # "" = an open network; the portal is the gate

[network]
lan_interface = "br-lan"
wan_interface = "eth0"
lan_address = "10.42.0.1/24"
ipv6 = "drop"
client_isolation = true

[dhcp]
range_start = "10.42.0.100"
range_end = "10.42.0.250"
lease_time = "12h"
upstream_dns = ["1.1.1.1", "8.8.8.8"]
local_domain = "desa"

[portal]
mode = "both"
hostname = "portal.desa"

[shaping]
enabled = true
uplink_down = {q(v.uplink_down)}
uplink_up = {q(v.uplink_up)}
{plans}
[telemetry]
enabled = true
broker = {q(v.broker)}
site_id = {q(v.site_id)}
ca_file = "{MQTT_DIR}/ca.crt"
cert_file = "{MQTT_DIR}/device.crt"
key_file = "{MQTT_DIR}/device.key"
command_keys = [{keys}
]
"""


def column_of(problem: str) -> str:
    if problem.startswith("shaping") and "plan '" in problem:
        return "plans"  # a plan against the uplink: the plan is what to change
    for prefix, column in _COLUMN_OF:
        if problem.startswith(prefix):
            return column
    return "(generated config)"


def config_problems(v: Village, text: str) -> list[str]:
    """The gateway's own verdict on ``text``, each line naming the row and CSV column."""
    try:
        parse_config_text(text, f"{v.site_id}/gateway.toml")
    except ConfigError as exc:
        return [f"row {v.row}, column {column_of(p)}: the generated gateway.toml is refused: {p}"
                for p in exc.problems]
    return []
