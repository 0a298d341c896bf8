"""The disk layout and the loader entries that pick a root slot.

Shared by images/mkdisk (builds the disk) and ``desanet update install`` (writes
the inactive slot), so both name partitions and write entries the same way.

The root partition is chosen by the systemd-boot entry (``root=PARTUUID=...``);
which slot is running is read back from ``desanet.slot=`` on the kernel command
line. A new slot's entry carries a tries counter (``desanet-b+3.conf``): the
loader counts each try down and, at zero, sorts the entry last, so the previous,
blessed entry boots again by itself. systemd-bless-boot removes the counter once
boot-complete.target is reached, which needs the daemon READY
(images/boot/desanet-boot-check.service).
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

SLOTS = ("a", "b")
_NS = uuid.UUID("8d5a4e8b-4b0e-4d43-9a52-5f2a3c0de5a1")  # desanet's namespace for fixed ids

# GPT partition types: ESP, the Discoverable Partitions Spec's root types, Linux data.
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_TYPE = {"amd64": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
             "arm64": "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"}
DATA_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
DATA_LABEL = "desanet-data"
ESP_LABEL = "esp"
ESP_MOUNT = Path("/boot/efi")  # one of the places systemd-bless-boot looks for the ESP
ENTRY_PREFIX = "desanet-"
ENTRY_RE = re.compile(r"^desanet-(?P<slot>[ab])(?:\+(?P<left>\d+)(?:-(?P<done>\d+))?)?\.conf$")


def fixed_uuid(name: str) -> str:
    """Deterministic ids (reproducible images; the installer knows them without blkid)."""
    return str(uuid.uuid5(_NS, name))


def part_label(slot: str) -> str:
    return f"root-{slot}"


def part_uuid(slot: str) -> str:
    return fixed_uuid(part_label(slot))


# The Raspberry Pi card has an MBR (its boot ROM reads nothing else): no partition
# names, so a slot is found by PARTUUID, the disk id plus the partition number.
RPI_DISK_ID = fixed_uuid("rpi-disk")[:8]
RPI_PART_NUMBER = {"boot": 1, "a": 2, "b": 3, "data": 4}


def rpi_part_uuid(part: str) -> str:
    return f"{RPI_DISK_ID}-{RPI_PART_NUMBER[part]:02x}"


def other(slot: str) -> str:
    return "b" if slot == "a" else "a"


def kernel_dir(slot: str) -> str:
    """Where the slot's kernel and initrd live on the ESP (not under desanet/, the bundle)."""
    return f"EFI/desanet/{slot}"


def entry_name(slot: str, tries: int | None) -> str:
    return f"{ENTRY_PREFIX}{slot}.conf" if tries is None else f"{ENTRY_PREFIX}{slot}+{tries}.conf"


def entry_text(slot: str, version: str, options: str) -> str:
    kdir = kernel_dir(slot)
    cmdline = f"root=PARTUUID={part_uuid(slot)} ro rootwait panic=10 desanet.slot={slot}"
    if options:
        cmdline += " " + options
    return (f"title desanet {version} (slot {slot})\n"
            f"version {version}\n"
            "sort-key desanet\n"
            f"linux /{kdir}/vmlinuz\n"
            f"initrd /{kdir}/initrd.img\n"
            f"options {cmdline}\n")


LOADER_CONF = ("# desanet: boot the newest entry with tries left, no menu, no cmdline editing\n"
               "default desanet-*\n"
               "timeout 0\n"
               "editor no\n")

_OWN_OPTIONS = ("root=", "desanet.slot=", "initrd=", "BOOT_IMAGE=")


def extra_options(cmdline: str) -> str:
    """The running command line minus what the entry sets itself (console= etc. stay)."""
    keep = [t for t in cmdline.split() if not t.startswith(_OWN_OPTIONS)
            and t not in ("ro", "rw", "rootwait") and not t.startswith("panic=")]
    return " ".join(keep)


@dataclass(frozen=True)
class Entry:
    name: str
    slot: str
    tries_left: int | None  # None: blessed (no counter)
    tries_done: int


def parse_entry_name(name: str) -> Entry | None:
    m = ENTRY_RE.match(name)
    if not m:
        return None
    left = m.group("left")
    return Entry(name, m.group("slot"), None if left is None else int(left),
                 int(m.group("done") or 0))


def entries(esp: Path) -> list[Entry]:
    d = esp / "loader" / "entries"
    found = [parse_entry_name(p.name) for p in d.iterdir()] if d.is_dir() else []
    return sorted((e for e in found if e is not None), key=lambda e: e.name)


def running_slot(cmdline: str) -> str | None:
    for token in cmdline.split():
        if token.startswith("desanet.slot="):
            value = token.split("=", 1)[1]
            return value if value in SLOTS else None
    return None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(src: Path, dest: Path) -> None:
    """Rename ``src`` (already fsynced) to ``dest`` so that both survive a power cut, on vfat too.

    On the ESP's vfat a rename writes the new directory entry with size 0 and no first
    cluster; the real ones reach the disk only when the file's inode is written back. So
    besides the directory, the file is fsynced again under its new name (found by a
    power cut in the boot test: a 0-byte loader entry and kernel).
    """
    src.replace(dest)
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(dest.parent)
