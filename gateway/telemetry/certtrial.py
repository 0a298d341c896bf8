"""The trial of a certificate installed by ``cert.install``, kept on disk so it survives
a restart (kill -9, power cut) of the daemon.

Files, all in the directory of ``telemetry.cert_file`` (``device.crt``):

- ``device.crt.prev``: the last certificate known to work, put back on a roll back;
- ``device.crt.trial``: this trial, JSON: the command id, the SHA-256 of the new
  certificate, the window and how much of it is used (``used``, seconds), and
  where that was measured (``boot``: the kernel's boot id, ``mono``: the
  system's monotonic clock).

Each file is written atomically (temp file, fsync, rename), in an order that
leaves every crash point readable: ``.prev``, then ``.trial``, then the new
certificate; a confirm removes ``.prev`` then ``.trial``; a roll back writes
the certificate back, then removes ``.trial`` and ``.prev``. A ``.trial``
whose SHA-256 is not the certificate's (a crash mid-install or mid-roll-back,
a new bundle) is stale and removed with its ``.prev``.

Time: the wall clock is never read (a gateway without a real-time clock boots
in the past and steps forward on its first NTP answer). The window is counted
on the monotonic clock while the daemon runs, and written back every
``window / 20`` (30 s of the 10 minutes). A restart in the same boot (same
boot id) counts the time the daemon was down in full; after a reboot the
monotonic clock started again, so the restart is charged one checkpoint
interval (covering what ran after the last write). So a clock step can make
the window neither endless nor zero, and crash or power-cut loops use it up:
at most 20 restarts before the previous certificate returns.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from gateway.config.loader import write_file_atomic

log = logging.getLogger("desanet.mqtt")

STEPS = 20  # checkpoints per window: the trial is written back every window / STEPS
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot's id ('' when unknown: every restart then counts as after a reboot)."""
    try:
        return BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return ""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Trial:
    cert: Path
    id: str
    sha: str  # of the certificate on trial
    window: float  # s
    used: float  # s of the window used by ``mono`` in boot ``boot``
    boot: str
    mono: float

    @property
    def previous(self) -> Path:
        return previous_path(self.cert)

    @property
    def state(self) -> Path:
        return state_path(self.cert)

    @property
    def step(self) -> float:
        return self.window / STEPS

    def remaining(self, mono: float) -> float:
        return self.window - self.used - max(0.0, mono - self.mono)


def previous_path(cert: Path) -> Path:
    return cert.with_name(cert.name + ".prev")


def state_path(cert: Path) -> Path:
    return cert.with_name(cert.name + ".trial")


def _save(trial: Trial) -> None:
    write_file_atomic(trial.state, json.dumps({
        "format": 1, "id": trial.id, "sha256": trial.sha, "window": trial.window,
        "used": round(trial.used, 3), "boot": trial.boot, "mono": trial.mono}) + "\n")


def _load(cert: Path) -> Trial | None:
    """The trial on disk; None without one. A damaged file (by hand: writes are atomic)
    counts as a trial of the certificate there now with one step left after the restart's
    charge: long enough to connect, short enough not to keep a bad one."""
    try:
        text = state_path(cert).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        raw = json.loads(text)
        return Trial(cert, str(raw["id"]), str(raw["sha256"]), float(raw["window"]),
                     float(raw["used"]), str(raw["boot"]), float(raw["mono"]))
    except (ValueError, KeyError, TypeError):
        window = 600.0
        return Trial(cert, "?", sha256(cert.read_bytes()), window, window - 2 * window / STEPS,
                     "", 0.0)


def _live(cert: Path) -> bool:
    """A trial of the certificate there now, with a previous one to go back to."""
    trial = _load(cert)
    return (trial is not None and previous_path(cert).exists()
            and trial.sha == sha256(cert.read_bytes()))


def install(cert: Path, pem: str, id: str, window: float, mono: float, boot: str) -> Trial:
    """Keep the current certificate as ``.prev`` (unless a trial runs: ``.prev`` is then the
    last one known to work), record the trial, write the new one. Blocks; raises OSError."""
    if cert.exists() and not _live(cert):
        write_file_atomic(previous_path(cert), cert.read_text(encoding="ascii"))
    trial = Trial(cert, id, sha256(pem.encode("ascii")), window, 0.0, boot, mono)
    _save(trial)
    write_file_atomic(cert, pem)
    os.chmod(cert, 0o644)
    return trial


def checkpoint(trial: Trial, mono: float) -> Trial:
    """Write down the window used so far (if the trial on disk is still this one)."""
    now = replace(trial, used=trial.window - max(0.0, trial.remaining(mono)), mono=mono)
    mine = _load(trial.cert)
    if mine is not None and mine.sha == trial.sha:
        _save(now)
    return now


async def wait_out(trial: Trial, mono: Callable[[], float]) -> Trial:
    """Wait until the window is used up, writing down the time used every step."""
    while (left := trial.remaining(mono())) > 0:
        await asyncio.sleep(min(trial.step, left))
        try:
            trial = await asyncio.to_thread(checkpoint, trial, mono())
        except OSError as exc:  # the window still ends on time in this run
            log.warning("cert.install %s: cannot write the trial down: %s", trial.id, exc)
    return trial


def _drop(trial: Trial, previous: bool) -> None:
    trial.state.unlink(missing_ok=True)
    if previous:
        trial.previous.unlink(missing_ok=True)


def resume(cert: Path, mono: float, boot: str) -> Trial | None:
    """The trial left by the last run, with the window it has left (see the module doc);
    None when there is none to go on with (stale files are removed). Blocks."""
    trial = _load(cert)
    if trial is None:
        return None
    try:
        current = sha256(cert.read_bytes())
    except FileNotFoundError:  # removed by hand: the previous one is all there is
        if trial.previous.exists():
            write_file_atomic(cert, trial.previous.read_text(encoding="ascii"))
            os.chmod(cert, 0o644)
        _drop(trial, previous=True)
        return None
    if current != trial.sha or not trial.previous.exists():
        _drop(trial, previous=current != trial.sha)
        return None
    if boot and boot == trial.boot and mono >= trial.mono:
        used = trial.used + (mono - trial.mono)
    else:
        used = trial.used + trial.step
    resumed = replace(trial, used=min(used, trial.window), boot=boot, mono=mono)
    _save(resumed)
    return resumed


def roll_back(trial: Trial) -> bool:
    """Put the previous certificate back, unless the file changed since (a later install)."""
    try:
        if sha256(trial.cert.read_bytes()) != trial.sha or not trial.previous.exists():
            return False
        write_file_atomic(trial.cert, trial.previous.read_text(encoding="ascii"))
        os.chmod(trial.cert, 0o644)
        _drop(trial, previous=True)
    except OSError:
        return False
    return True


def confirm(trial: Trial) -> bool:
    """The new certificate connected: forget the previous one. False if it is not in use."""
    try:
        if sha256(trial.cert.read_bytes()) != trial.sha:
            return False
        trial.previous.unlink(missing_ok=True)
        mine = _load(trial.cert)
        if mine is not None and mine.sha == trial.sha:
            trial.state.unlink(missing_ok=True)
    except OSError:
        return False
    return True
