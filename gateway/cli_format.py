"""Text the `desanet` command prints: pure formatting, no daemon calls.

Dates are the site's local time (``tz``, the daemon's ``site.timezone``) through
:mod:`gateway.timefmt`; sizes are in KiB/MiB/GiB; ``--json`` output keeps every
key and value as the daemon sent it and adds an ISO 8601 sibling
(``expires`` -> ``expires_iso``) to each epoch time (:func:`with_iso`).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from gateway.config.diff import ABSENT, Change, format_changes, needs_restart
from gateway.config.units import format_rate, human_rate
from gateway.control.schema import ConfigChangeOut, EventOut
from gateway.errors import ControlError
from gateway.telemetry.certexpiry import ended, ends_in, renewal_due
from gateway.timefmt import DEFAULT_TIMEZONE, format_datetime, format_time, iso

# Keys whose number is a Unix time in the daemon's answers.
TIME_KEYS = frozenset({"time", "started", "expires", "created", "first_used", "deadline",
                       "finished", "last_ok", "last_error", "sampled_at", "since", "last_seen",
                       "ended", "changed"})


def fmt_time(ts: float | None, tz: str = DEFAULT_TIMEZONE) -> str:
    """``2 Dec 2026 14:05 WIB`` (English months, as the rest of the CLI); a dash for none."""
    return format_datetime(ts, tz, "en")


def clock_time(ts: float, tz: str = DEFAULT_TIMEZONE) -> str:
    """``14:05 WIB``."""
    return format_time(ts, tz)


def with_iso(data: Any, tz: str = DEFAULT_TIMEZONE) -> Any:
    """``data`` with ``<key>_iso`` beside every epoch time in TIME_KEYS; nothing else changed."""
    if isinstance(data, list):
        return [with_iso(item, tz) for item in data]
    if not isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        out[key] = with_iso(value, tz)
        sibling = f"{key}_iso"
        if key in TIME_KEYS and sibling not in data and (
                value is None or (isinstance(value, int | float) and not isinstance(value, bool))):
            out[sibling] = iso(value, tz)
    return out


def format_bytes(n: float | None) -> str:
    """``512 B``, ``1.5 KiB``, ``12 MiB``, ``3.2 GiB`` (binary units, as df -h)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            break
        value /= 1024
    if unit == "B":
        return f"{int(value)} B"
    return f"{value:.1f} {unit}" if abs(value) < 10 else f"{value:.0f} {unit}"


def print_problems(source: str, problems: list[str]) -> None:
    print(f"{source}: {len(problems)} problem(s):", file=sys.stderr)
    for line in problems:
        print(f"  {line}", file=sys.stderr)


def change_lines(changes: list[ConfigChangeOut]) -> list[str]:
    # TOML has no null: a null side is a key the config does not have.
    return format_changes([
        Change(c.path, ABSENT if c.old is None else c.old, ABSENT if c.new is None else c.new)
        for c in changes
    ])


def print_changes(changes: list[ConfigChangeOut], indent: str = "  ") -> None:
    lines = change_lines(changes)
    if not lines:
        print(f"{indent}no changes")
    for change, line in zip(changes, lines, strict=True):
        mark = "  (needs restart)" if needs_restart(change.path) else ""
        print(f"{indent}{line}{mark}")


def print_restart_needed(exc: ControlError, verb: str) -> bool:
    """Say "needs restart" (not "refused", never "reloaded") for a change of settings
    only a restart may change; False for any other error."""
    if exc.reason != "restart_needed":
        return False
    print(f"not {verb}: {exc}", file=sys.stderr)
    return True


def format_event(event: EventOut, tz: str = DEFAULT_TIMEZONE) -> str:
    """"HH:MM:SS WIB type key=value ..." for `desanet events`."""
    parts = [format_time(event.time, tz, seconds=True), event.type]
    for key, value in (event.model_extra or {}).items():
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, str) and value and not any(ch.isspace() for ch in value) \
                and '"' not in value:
            shown = value
        else:
            shown = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        parts.append(f"{key}={shown}")
    return " ".join(parts)


def config_status_lines(config: Any, tz: str = DEFAULT_TIMEZONE) -> list[str]:
    """`desanet status` lines about the config; tolerant of daemons that send less."""
    if not isinstance(config, dict):
        return [f"  config:          {config}"] if isinstance(config, str) else []
    lines = [f"  config:          {config.get('version') or '-'}"
             + (f"  {config['path']}" if config.get("path") else "")]
    trial = config.get("trial")
    if isinstance(trial, dict) and trial.get("deadline"):
        by = f", by {trial['by']}" if trial.get("by") else ""
        lines.append(f"  trial:           PENDING until {clock_time(trial['deadline'], tz)}{by}; "
                     f"`desanet config confirm` keeps it, else "
                     f"{trial.get('previous_version') or 'the previous config'} comes back")
    change = config.get("last_change")
    if isinstance(change, dict) and change.get("type"):
        what = str(change["type"]).removeprefix("config_").replace("_", " ")
        extra = "".join(f" {k} {change[k]}" for k in ("by", "source") if change.get(k))
        reason = f": {change['reason']}" if change.get("reason") else ""
        lines.append(f"  last change:     {what} {change.get('version') or ''} "
                     f"at {fmt_time(change.get('time'), tz)}{extra}{reason}".replace("  at", " at"))
    refusal = config.get("last_refusal")
    if isinstance(refusal, dict) and refusal.get("reason"):
        lines.append(f"  last refused:    {fmt_time(refusal.get('time'), tz)}: {refusal['reason']}")
    return lines


# -- desanet services ---------------------------------------------------------------------------


def _counts(counts: Any, empty: str) -> str:
    """{"queued": 2, "delivered": 1, "failed": 0} -> "2 queued, 1 delivered"."""
    if not isinstance(counts, dict):
        return str(counts) if counts else empty
    shown = [f"{n} {state}" for state, n in counts.items() if n]
    return ", ".join(shown) or empty


def percent(ratio: object) -> str:
    """A hit ratio as "75%", "-" before any request (no ratio is not 0%)."""
    return f"{ratio:.0%}" if isinstance(ratio, (int, float)) else "-"


def services_lines(data: dict[str, Any], tz: str = DEFAULT_TIMEZONE) -> list[str]:
    """`desanet services`: the cache, each upstream's health, the form queue, prefetch."""
    cache = data["cache"]
    ratio = cache.get("hit_ratio")
    lines = [
        f"http://{data['hostname']}/  cache {cache['entries']} objects, "
        f"{format_bytes(cache['bytes'])} of {format_bytes(cache['max_bytes'])}, hit ratio "
        f"{'-' if ratio is None else f'{ratio:.0%}'}",
        f"  {format_bytes(cache.get('bytes_from_cache'))} served from the cache, "
        f"{format_bytes(cache.get('bytes_from_upstream'))} fetched upstream, "
        f"{cache.get('stale_served', 0)} stale copies served",
    ]
    services = data.get("services") or {}
    if services:
        lines.append(f"  {'SERVICE':16} {'STATE':8} {'ERRORS':>9} {'HIT':>4}  {'LAST OK':22} "
                     "LAST ERROR")
        for slug, h in services.items():
            errors = f"{h.get('errors', 0)}/{h.get('requests', 0)}"
            hit = percent((h.get("cache") or {}).get("hit_ratio"))
            last_error = fmt_time(h.get("last_error"), tz)
            if h.get("last_error_text"):
                last_error += f" ({h['last_error_text']})"
            lines.append(f"  {slug:16} {h.get('state', '-'):8} {errors:>9} {hit:>4}  "
                         f"{fmt_time(h.get('last_ok'), tz):22} {last_error}")
    lines.append(f"  queued forms: {_counts(data.get('outbox'), 'none')}")
    prefetch = data.get("prefetch") or {}
    if prefetch.get("finished"):
        results: dict[str, int] = {}
        for result in (prefetch.get("results") or {}).values():
            results[str(result)] = results.get(str(result), 0) + 1
        lines.append(f"  last prefetch: {fmt_time(prefetch['finished'], tz)}, "
                     f"{_counts(results, 'nothing to fetch')}")
    else:
        lines.append("  last prefetch: not yet")
    return lines


# -- desanet shaping ----------------------------------------------------------------------------


def class_owners(clients: Any) -> dict[str, str]:
    """tc class id ("1:165") -> "MAC IP" of the authorized client it shapes."""
    owners: dict[str, str] = {}
    for c in clients if isinstance(clients, list) else []:
        shaping = c.get("shaping") if isinstance(c, dict) else None
        if isinstance(shaping, dict) and shaping.get("class"):
            owners[str(shaping["class"])] = f"{c.get('mac', '?')} {c.get('ip', '?')}"
    return owners


def shaping_lines(data: dict[str, Any], owners: dict[str, str]) -> list[str]:
    """`desanet shaping`: each class's counters, client classes named by MAC and IP."""
    lines = [f"leaf qdisc: {data['leaf_qdisc']}  uplink: {format_rate(data['uplink_down'])} "
             f"down, {format_rate(data['uplink_up'])} up"]
    for direction, tree in data["directions"].items():
        lines.append(f"{direction} ({tree['device']}):")
        lines.append(f"  {'CLASS':14} {'CLIENT':33} {'BYTES':>9} {'PKTS':>9} {'DROPS':>7} "
                     f"{'BACKLOG':>8} {'RATE':>10}")
        for name, c in tree["classes"].items():
            classid = str(c.get("class") or name)
            # A named class (uplink, unauthorized ...) shapes no one client; a client
            # class with no session behind it is a leftover the next converge removes.
            who = owners.get(classid, "-" if classid != name else "(no session)")
            lines.append(f"  {name:14} {who:33} {format_bytes(c.get('bytes', 0)):>9} "
                         f"{c.get('packets', 0):>9} {c.get('drops', 0):>7} "
                         f"{format_bytes(c.get('backlog', 0)):>8} "
                         f"{human_rate(c.get('rate_bps', 0)):>10}")
    return lines


def uplink_status_line(uplink: Any, tz: str | None = None) -> str:
    """`desanet status` line about the uplink: state, since when (local time), latency."""
    if not isinstance(uplink, dict) or uplink.get("state") not in ("up", "down"):
        return "  uplink:          unknown (not decided yet)"
    since = format_datetime(uplink.get("since"), tz or DEFAULT_TIMEZONE, "en")
    state = "DOWN" if uplink["state"] == "down" else "up"
    why = {"link": "link or default route lost", "probes": "probes"}.get(uplink.get("reason", ""))
    latency = uplink.get("latency_ms")
    extra = f", last probe {latency:.0f} ms" if isinstance(latency, int | float) else ""
    return f"  uplink:          {state} since {since}" + (f" ({why})" if why and state == "DOWN"
                                                          else "") + extra


def telemetry_status_line(telemetry: Any) -> str:
    """`desanet status` line about the reports to the region's broker (docs/mqtt.md)."""
    if not isinstance(telemetry, dict) or not telemetry.get("enabled"):
        return "  telemetry:       off"
    state = "connected to" if telemetry.get("connected") else "NOT connected to"
    backlog = telemetry.get("backlog", 0)
    dropped = telemetry.get("dropped") or {}
    lost = (f", dropped {dropped.get('telemetry', 0)} telemetry and {dropped.get('event', 0)} "
            "event message(s) (backlog full)") if any(dropped.values()) else ""
    days = telemetry.get("cert_days")
    cert = ""  # said only when it is time to act (docs/provisioning.md "Certificate lifecycle")
    if isinstance(days, int) and days < 0:  # the words of `desanet diag cert`, in English
        cert = f"; {ended(days)[1].upper()}: install a new bundle"
    elif isinstance(days, int) and renewal_due(days):
        cert = f"; {ends_in(days)[1]}: renew it (desanet diag cert)"
    return (f"  telemetry:       {state} {telemetry.get('broker')} as {telemetry.get('site_id')}, "
            f"session {telemetry.get('session')}, {backlog} message(s) waiting{lost}{cert}")


def degraded_status_lines(degraded: Any, tz: str | None = None) -> list[str]:
    """`desanet status` lines for what the daemon runs without (a damaged database it
    healed around): loud, first, one line each; none when all is well."""
    if not isinstance(degraded, list) or not degraded:
        return []
    lines = [f"  DEGRADED:        {len(degraded)} problem(s); see the log (journalctl -u desanet)"]
    for p in degraded:
        if not isinstance(p, dict):
            continue
        when = format_datetime(p.get("since"), tz or DEFAULT_TIMEZONE, "en")
        lines.append(f"    {p.get('what', '?')} {p.get('problem', '?')} since {when}: "
                     f"{p.get('detail', '')}")
    return lines
