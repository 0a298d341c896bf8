"""The gateway config a lab runs with, and a small TOML writer for it.

:func:`lab_config_text` builds the config as a dict, deep-merges
``LabSpec.extra`` over it, renders TOML and validates the result with the
real loader, so a lab never starts a daemon with a config it would reject.
"""

from __future__ import annotations

import copy
from typing import Any

import tomli_w

from desanet_lab import plan as p
from gateway.config import Config, parse_config_text
from gateway.errors import ConfigError, LabError


def base_config(lab: p.LabPlan, spec: p.LabSpec) -> dict[str, Any]:
    """The lab's gateway config before ``spec.extra`` is merged in."""
    sd = str(lab.state_dir)
    return {
        "site": {"name": "Hotspot Desa Lab", "village": "Desa Lab"},
        "network": {
            "lan_interface": p.LAN_INTERFACE,
            "wan_interface": p.WAN_INTERFACE,
            "lan_address": p.LAN_ADDRESS,
        },
        "dhcp": {
            "range_start": p.DHCP_RANGE[0],
            "range_end": p.DHCP_RANGE[1],
            "lease_time": "12h",
            "upstream_dns": [p.ISP_RESOLVER],
            # lan: every lab client joins at once as a new MAC; a village's phones
            # do not (docs/hostile-lan.md). Defaults (4/s, 40) for small labs.
            "new_client_rate": max(4, len(lab.clients) // 2),
            "new_client_burst": max(40, 4 * len(lab.clients)),
        },
        "portal": {
            "mode": spec.portal_mode,
            "hostname": p.PORTAL_HOSTNAME,
            "session_length": spec.session_length,
            "idle_timeout": spec.idle_timeout,
            # stale: the lab's "internet" has documentation addresses (198.51.100.x)
            "relay_test_networks": True,
        },
        # Only a hostname for the government service: its address must reach
        # the walled garden as the daemon resolves it (docs/walled-garden.md). The CIDR
        # is a documentation example that exercises the static path.
        "walled_garden": {
            "hostnames": [p.GOVERNMENT_HOST],
            "addresses": ["192.0.2.0/24"],
        },
        "control": {"socket": f"{sd}/control.sock"},
        "store": {"state_dir": f"{sd}/state", "run_dir": f"{sd}/run"},
        "programs": {"dnsmasq": "/usr/sbin/dnsmasq"},
        # A thin village uplink shared fairly, with the plans vouchers can carry.
        "shaping": {
            "enabled": True,
            "uplink_down": "20mbit",
            "uplink_up": "5mbit",
            "client_down": "2mbit",
            "client_up": "512kbit",
            "plans": {
                # Same priority: spare capacity is shared in proportion to rate.
                "basic": {"down": "1mbit", "up": "256kbit",
                          "ceil_down": "2mbit", "ceil_up": "512kbit"},
                "school": {"down": "4mbit", "up": "1mbit"},
                "kantor-desa": {"down": "6mbit", "up": "2mbit"},
            },
        },
        # The government-services catalog at http://layanan.desa/, in front of
        # the lab's dukcapil.lab origin (lab/desanet_lab/gov_origin.py).
        "local_services": {
            "enabled": True,
            "cache_size": "256mb",
            "request_timeout": "5s",
            "services": [{
                "slug": "dukcapil",
                "title_id": "Data Kependudukan (lab)",
                "title_en": "Population records (lab)",
                "upstream": f"http://{p.DUKCAPIL_HOST}",
                "offline_for": "1d",
                "prefetch": ["/"],
                "queue_posts": True,
            }],
        },
    }


def telemetry_config(lab: p.LabPlan, command_key: str | None = None) -> dict[str, Any]:
    """``[telemetry]`` for the lab's broker (desanet_lab/broker.py): its CA, this gateway's
    certificate; no start delay and a short keepalive, so a demo sees online and the Will
    (1.5 x keepalive after a kill) within a minute. ``command_key``: the lab operator's
    public signing key (`desanet fleet send`)."""
    pki = lab.mqtt_dir / "pki"
    keys = {"command_keys": [command_key]} if command_key else {}
    return {**keys,
        "enabled": True,
        "broker": f"mqtts://{p.MQTT_HOST}:{p.MQTT_PORT}",
        "site_id": p.LAB_SITE_ID,
        "topic_prefix": p.MQTT_PREFIX,
        "ca_file": str(pki / "ca.crt"),
        "cert_file": str(pki / f"{p.LAB_SITE_ID}.crt"),
        "key_file": str(pki / f"{p.LAB_SITE_ID}.key"),
        "start_delay_max": "0s",
        "keepalive": "30s",
        "reconnect_min": "1s",
        "reconnect_max": "30s",
        "telemetry_interval": "1m",
        "telemetry_send_interval": "2m",  # batches of ~2 reports: a demo sees them soon
    }


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``base`` with ``over`` merged in (tables recursively)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def lab_config_text(lab: p.LabPlan, spec: p.LabSpec, command_key: str | None = None
                    ) -> tuple[str, Config]:
    """Rendered TOML and the validated Config; LabError lists every problem."""
    base = base_config(lab, spec)
    if spec.broker:
        base["telemetry"] = telemetry_config(lab, command_key)
    data = deep_merge(base, spec.extra)
    try:
        text = "# desanet lab gateway config (generated by `desanet lab up`)\n" + dumps_toml(data)
    except TypeError as exc:
        raise LabError(f"lab config override cannot be written as TOML: {exc}") from exc
    try:
        config = parse_config_text(text, source=str(lab.config_path))
    except ConfigError as exc:
        raise LabError(
            "the lab gateway config is invalid (check LabSpec fields and extra): "
            + "; ".join(exc.problems)
        ) from exc
    return text, config


def dumps_toml(data: dict[str, Any]) -> str:
    """Render a config dict as TOML (tomli-w: the maintained writer matching tomllib)."""
    try:
        return tomli_w.dumps(data)
    except TypeError as exc:
        raise TypeError(f"cannot write the lab config as TOML: {exc}") from exc
