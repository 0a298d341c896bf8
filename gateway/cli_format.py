"""Text the `desanet` command prints: pure formatting, no daemon calls."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from gateway.config.diff import ABSENT, Change, format_changes
from gateway.control.schema import ConfigChangeOut, EventOut
from gateway.timefmt import DEFAULT_TIMEZONE, format_datetime


def fmt_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def clock_time(ts: float) -> str:
    return time.strftime("%H:%M", time.localtime(ts))


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
    for line in lines:
        print(f"{indent}{line}")


def format_event(event: EventOut) -> str:
    """"HH:MM:SS type key=value ..." for `desanet events`."""
    parts = [time.strftime("%H:%M:%S", time.localtime(event.time)), event.type]
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


def config_status_lines(config: Any) -> list[str]:
    """`desanet status` lines about the config; tolerant of daemons that send less."""
    if not isinstance(config, dict):
        return [f"  config:          {config}"] if isinstance(config, str) else []
    lines = [f"  config:          {config.get('version') or '-'}"
             + (f"  {config['path']}" if config.get("path") else "")]
    trial = config.get("trial")
    if isinstance(trial, dict) and trial.get("deadline"):
        by = f", by {trial['by']}" if trial.get("by") else ""
        lines.append(f"  trial:           PENDING until {clock_time(trial['deadline'])}{by}; "
                     f"`desanet config confirm` keeps it, else "
                     f"{trial.get('previous_version') or 'the previous config'} comes back")
    change = config.get("last_change")
    if isinstance(change, dict) and change.get("type"):
        what = str(change["type"]).removeprefix("config_").replace("_", " ")
        extra = "".join(f" {k} {change[k]}" for k in ("by", "source") if change.get(k))
        reason = f": {change['reason']}" if change.get("reason") else ""
        lines.append(f"  last change:     {what} {change.get('version') or ''} "
                     f"at {fmt_time(change.get('time'))}{extra}{reason}".replace("  at", " at"))
    refusal = config.get("last_refusal")
    if isinstance(refusal, dict) and refusal.get("reason"):
        lines.append(f"  last refused:    {fmt_time(refusal.get('time'))}: {refusal['reason']}")
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
