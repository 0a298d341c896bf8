"""The Raspberry Pi's A/B state: small text files on the boot partition.

Debian's kernel cannot ask the Pi firmware for a one-time ``tryboot`` (that needs
the Raspberry Pi kernel's reboot-flag patch), so on a Pi the firmware starts
U-Boot (Debian's u-boot-rpi) and U-Boot runs ``boot.scr`` (images/rpi/boot.cmd),
which picks the slot from these files with ``env import -t``. They live in
``EFI/desanet/state/``, not in the root directory, so their rewrites never touch
the directory sector that holds the firmware's own files.

- ``boot.txt``: ``desanet_good`` (the slot that passed its boot check) and
  ``desanet_try`` (a newly installed slot on trial, or empty); ``boot-copy.txt``
  holds the same and is written first, so a power cut that spoils one of them
  (vfat can leave a renamed file empty until written back) leaves the other;
- ``tries.txt``: ``desanet_tries``, the trial's boots left. The script counts it
  down (``fatwrite``) before booting the trial with ``desanet.trial=1``; at zero,
  or if that write fails, it boots the good slot.

Linux writes each file whole to a temp name and renames it (``replace_durably``).
U-Boot overwrites the tries file in place; if a cut spoils it, it reads as zero
tries, which means: boot the good slot. The tries file is written before the
boot files, so a new trial never starts with the previous trial's count.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from gateway.update import slots

STATE_DIR = "EFI/desanet/state"
BOOT_FILE = f"{STATE_DIR}/boot.txt"
BOOT_COPY = f"{STATE_DIR}/boot-copy.txt"
TRIES_FILE = f"{STATE_DIR}/tries.txt"
LOADER_ARG = "desanet.loader=uboot"
TRIAL_ARG = "desanet.trial=1"
MAX_TRIES = 9  # the script compares with U-Boot's hex setexpr: one digit stays exact
_LINE = re.compile(r"^(desanet_[a-z]+)=([A-Za-z0-9]*)$")


@dataclass(frozen=True)
class BootState:
    good: str
    trial: str | None
    tries_left: int

    def describe(self, running: str | None) -> list[str]:
        lines = [f"  slot {self.good}: good"]
        if self.trial is not None:
            if self.tries_left > 0:
                lines.append(f"  slot {self.trial}: trial, {self.tries_left} tries left")
            elif running == self.trial:
                lines.append(f"  slot {self.trial}: trial, last try (running now)")
            else:
                lines.append(f"  slot {self.trial}: failed")
        return lines


def is_uboot(cmdline: str) -> bool:
    return LOADER_ARG in cmdline.split()


def is_trial(cmdline: str) -> bool:
    return TRIAL_ARG in cmdline.split()


def _parse(text: str) -> dict[str, str]:
    values = {}
    for line in text.replace("\0", "").splitlines():
        m = _LINE.match(line.strip())
        if m:
            values[m.group(1)] = m.group(2)
    return values


def _read(path: Path) -> dict[str, str]:
    try:
        return _parse(path.read_bytes().decode("ascii", errors="replace"))
    except OSError:
        return {}


def read(boot: Path) -> BootState:
    state = _read(boot / BOOT_FILE)
    if state.get("desanet_good") not in slots.SLOTS:  # spoilt by a power cut: the copy
        state = _read(boot / BOOT_COPY)
    good = state.get("desanet_good", "a")
    trial = state.get("desanet_try") or None
    tries = _read(boot / TRIES_FILE).get("desanet_tries", "0")
    return BootState(good if good in slots.SLOTS else "a",
                     trial if trial in slots.SLOTS else None,
                     int(tries) if tries.isdigit() else 0)


def render(good: str, trial: str | None) -> str:
    return f"desanet_good={good}\ndesanet_try={trial or ''}\n"


def _write(boot: Path, name: str, text: str) -> None:
    target = boot / name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    slots.replace_durably(tmp, target)


def _write_state(boot: Path, good: str, trial: str | None) -> None:
    _write(boot, BOOT_COPY, render(good, trial))
    _write(boot, BOOT_FILE, render(good, trial))


def cancel_trial(boot: Path, running: str) -> None:
    """Before a slot is overwritten: nothing but the running slot is offered any more."""
    _write_state(boot, running, None)


def start_trial(boot: Path, good: str, slot: str, tries: int) -> None:
    if not 1 <= tries <= MAX_TRIES:
        raise ValueError(f"tries: {tries} is outside 1..{MAX_TRIES}")
    _write(boot, TRIES_FILE, f"desanet_tries={tries}\n")
    _write_state(boot, good, slot)  # the commit point


def bless(boot: Path, running: str) -> bool:
    """The running trial passed its boot check: it becomes the good slot. False if no trial."""
    state = read(boot)
    if state.trial != running:
        return False
    _write_state(boot, running, None)
    return True


def initial_files(good: str = "a") -> dict[str, str]:
    """What images/mkdisk puts on a new card: slot a good, nothing on trial."""
    return {BOOT_FILE: render(good, None), BOOT_COPY: render(good, None),
            TRIES_FILE: "desanet_tries=0\n"}
