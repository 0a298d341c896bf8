"""Device makers from the first three bytes of a MAC (the IEEE's OUI registry).

Debian's ieee-data package ships the registry as /usr/share/ieee-data/oui.txt; where it
is missing the vendor is simply unknown. The file is large (~5 MB), so one pass reads
only the prefixes asked for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

OUI_FILES = (Path("/usr/share/ieee-data/oui.txt"), Path("/usr/share/misc/oui.txt"))
_LINE = re.compile(r"^\s*([0-9A-Fa-f]{6})\s+\(base 16\)\s+(.*?)\s*$")
RANDOM = "random"  # a locally administered address: phones invent one per network


def prefix(mac: str) -> str:
    return mac.replace(":", "").replace("-", "").upper()[:6]


def is_local(mac: str) -> bool:
    """A locally administered (randomised, or software-made) address: no maker to look up."""
    return bool(int(prefix(mac)[:2], 16) & 0x02)


def parse_oui(lines: Iterable[str], wanted: set[str]) -> dict[str, str]:
    """Prefix -> organisation for the ``wanted`` prefixes, from the registry's text form."""
    found: dict[str, str] = {}
    for line in lines:
        m = _LINE.match(line)
        if m and m.group(1).upper() in wanted:
            found[m.group(1).upper()] = m.group(2)
            if len(found) == len(wanted):
                break
    return found


def vendors(macs: Iterable[str], files: Iterable[Path] = OUI_FILES) -> dict[str, str]:
    """MAC -> vendor ("random" for a locally administered one; absent when unknown).
    Blocks (reads a file): call from a thread."""
    macs = list(macs)
    out = {m: RANDOM for m in macs if is_local(m)}
    wanted = {prefix(m) for m in macs if m not in out}
    table: dict[str, str] = {}
    for path in files:
        if wanted and path.is_file():
            with path.open(encoding="utf-8", errors="replace") as f:
                table = parse_oui(f, wanted)
            break
    out.update({m: table[prefix(m)] for m in macs if m not in out and prefix(m) in table})
    return out
