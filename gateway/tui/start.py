"""Starting the daemon from the TUI's daemon-down page (key ``s``).

Which command, checked in this order (as gateway/daemon/reboot.py chooses a reboot):

- ``DESANET_START_COMMAND`` in the TUI's environment: a command line (split like a
  shell would, not run by one). The lab and the tests set it to start their own
  daemon (``python -m desanet_lab.start --prefix P``); an image could set it to its
  own tool.
- ``systemctl start desanet`` when systemd runs this machine (``/run/systemd/system``
  exists and systemctl is installed).

Neither: the page says to run ``desanet run`` by hand. The command is expected to
return once the daemon is started, as ``systemctl start`` does; the page then reads
the daemon again. One that has not ended after :data:`START_WAIT` seconds is left
running (never killed: it may be the daemon itself) and the page keeps looking.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

ENV = "DESANET_START_COMMAND"
SYSTEMCTL = ["systemctl", "start", "desanet"]
START_WAIT = 60.0
_OUTPUT_SHOWN = 300  # characters of a failed command's output in the notice


def has_systemd() -> bool:
    return shutil.which("systemctl") is not None and os.path.isdir("/run/systemd/system")


def start_argv(environ: Mapping[str, str] | None = None,
               systemd: bool | None = None) -> list[str] | None:
    """The command that starts the daemon here, or None. ``systemd``: whether systemd
    runs this machine (None: look). Raises ValueError for an override that is not a
    command line."""
    override = (os.environ if environ is None else environ).get(ENV, "").strip()
    if override:
        try:
            argv = shlex.split(override)
        except ValueError as exc:
            raise ValueError(f"{ENV} is not a command line ({exc})") from None
        return argv or None
    if has_systemd() if systemd is None else systemd:
        return list(SYSTEMCTL)
    return None


@dataclass(frozen=True, slots=True)
class Started:
    ok: bool  # exited 0, or still running after START_WAIT
    output: str  # what it printed (the end of it), or why it could not run
    running: bool = False  # had not ended after START_WAIT
    process: asyncio.subprocess.Process | None = None  # the one still running


async def run_start(argv: list[str], wait: float = START_WAIT) -> Started:
    """Run ``argv`` in a session of its own (a daemon it starts outlives the TUI) and
    wait up to ``wait`` seconds for it to end."""
    # A file, not a pipe: a command still running after ``wait`` must never block on a
    # pipe that nobody reads any more.
    with tempfile.TemporaryFile() as out:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True)
        except OSError as exc:
            return Started(False, f"{shlex.join(argv)}: {exc.strerror or exc}")
        try:
            code = await asyncio.wait_for(proc.wait(), wait)
        except TimeoutError:
            return Started(True, "", running=True, process=proc)
        out.seek(0)
        text = out.read().decode(errors="replace").strip()[-_OUTPUT_SHOWN:]
    if code != 0:
        return Started(False, text or f"{shlex.join(argv)}: exit {code}")
    return Started(True, text)


__all__ = ["ENV", "START_WAIT", "Started", "has_systemd", "run_start", "start_argv"]
