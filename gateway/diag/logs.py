"""The daemon's last log lines: journald's desanet unit, else its log file.

A line at error level (or a traceback) makes a warning showing the latest such line.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path
from typing import Any

from gateway.diag.context import DiagContext
from gateway.diag.result import CheckResult, verdict
from gateway.diag.system import run_command
from gateway.diag.threads import in_thread

# -- logs -----------------------------------------------------------------------------

_TROUBLE = re.compile(r"\b(ERROR|CRITICAL|Traceback)\b|^<[0-3]>")


def classify_logs(name: str, lines: list[str], source: str) -> CheckResult:
    details: dict[str, Any] = {"source": source, "lines": lines}
    if not source:
        return verdict(name, "skip",
                       ("Tidak ada log desanet yang ditemukan.", "No desanet log found."),
                       ("Beri berkasnya dengan --log-file, atau lihat journalctl -u desanet.",
                        "Name the file with --log-file, or see journalctl -u desanet."),
                       **details)
    trouble = [x for x in lines if _TROUBLE.search(x)]
    if trouble:
        return verdict(name, "warn",
                       (f"{len(trouble)} baris galat di {len(lines)} baris terakhir ({source}); "
                        f"terakhir: {trouble[-1].strip()[:160]}",
                        f"{len(trouble)} error lines in the last {len(lines)} ({source}); "
                        f"latest: {trouble[-1].strip()[:160]}"),
                       ("Baca baris-baris itu; kirim ke operator regional bila tidak jelas.",
                        "Read those lines; send them to the regional operator if unclear."),
                       **details)
    return verdict(name, "ok", (f"Tidak ada galat di {len(lines)} baris terakhir ({source}).",
                                f"No errors in the last {len(lines)} lines ({source})."),
                   **details)


def tail(path: Path, n: int, block: int = 65536) -> list[str]:
    """The last ``n`` lines of a file, reading only its end."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - block))
        data = f.read()
    lines = data.decode(errors="replace").splitlines()
    if size > block:
        lines = lines[1:]  # the first one is cut
    return lines[-n:]


LEVELS = {0: "CRITICAL", 1: "CRITICAL", 2: "CRITICAL", 3: "ERROR", 4: "WARNING", 5: "INFO",
          6: "INFO", 7: "DEBUG"}


def journal_lines(text: str) -> list[str]:
    """``journalctl -o json`` records as "time LEVEL message" lines: the journal keeps the
    level as the record's PRIORITY, not in its text."""
    lines = []
    for raw in text.splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        msg = rec.get("MESSAGE", "")
        if isinstance(msg, list):  # journald's form of a message that is not UTF-8
            msg = bytes(msg).decode(errors="replace")
        try:
            when = datetime.datetime.fromtimestamp(int(rec["__REALTIME_TIMESTAMP"]) / 1e6,
                                                   datetime.UTC).isoformat(timespec="seconds")
        except (KeyError, ValueError):
            when = "?"
        level = LEVELS.get(int(rec.get("PRIORITY", 6)), "INFO")
        lines.append(f"{when} {level} {msg}")
    return lines


def _log_lines(config_path: str, log_file: str | None, n: int) -> tuple[list[str], str]:
    if log_file is None:
        rc, out = run_command(["journalctl", "-u", "desanet", "-n", str(n), "--no-pager", "-q",
                        "-o", "json"], 5)
        lines = journal_lines(out)
        if rc == 0 and lines:
            return lines, "journalctl -u desanet"
    candidates = [Path(log_file)] if log_file else [Path(config_path).parent / "gateway.log",
                                                    Path("/var/log/desanet.log")]
    for path in candidates:
        if path.is_file():
            return tail(path, n), str(path)
    return [], ""


async def check_logs(ctx: DiagContext) -> CheckResult:
    lines, source = await in_thread(_log_lines, ctx.config_path, ctx.options.log_file,
                                    ctx.options.log_lines)
    return classify_logs("logs", lines, source)
