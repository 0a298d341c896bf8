"""Grow the data partition of an MBR card (the Raspberry Pi's) to the end of the card.

On GPT disks systemd-repart does this (images/rootfs/usr/lib/repart.d); it handles
GPT only, and the Pi's boot ROM reads MBR only. So on a Pi, before anything checks
or mounts /data, `desanet system grow-data` rewrites the size of the card's last
partition in the MBR (one 512-byte sector: a power cut leaves the old or the new
table) and tells the kernel with util-linux's `resizepart`. The filesystem follows
at its mount (x-systemd.growfs in /etc/fstab). Nothing is created or moved; a
partition that is not the last one, or a table that is not a plain MBR, is left as
it is.
"""

from __future__ import annotations

import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512
ALIGN = 2048  # sectors: 1 MiB, the alignment mkdisk gives the partitions it makes
_TABLE = 446
_LINUX = 0x83
_GPT_PROTECTIVE = 0xEE


class GrowError(Exception):
    pass


@dataclass(frozen=True)
class Entry:
    number: int
    ptype: int
    start: int
    sectors: int


def entries(mbr: bytes) -> list[Entry]:
    if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
        raise GrowError("no MBR (the boot sector's signature is missing)")
    found = []
    for i in range(4):
        raw = mbr[_TABLE + 16 * i:_TABLE + 16 * (i + 1)]
        ptype = raw[4]
        start, sectors = struct.unpack("<II", raw[8:16])
        if ptype:
            found.append(Entry(i + 1, ptype, start, sectors))
    if any(e.ptype == _GPT_PROTECTIVE for e in found):
        raise GrowError("a GPT disk (systemd-repart grows its data partition)")
    return found


def grown(mbr: bytes, disk_sectors: int, number: int) -> tuple[bytes, int] | None:
    """The MBR with partition ``number`` reaching the (aligned) end of the disk, and its new
    size in sectors; None when there is nothing to grow."""
    table = entries(mbr)
    part = next((e for e in table if e.number == number), None)
    if part is None or part.ptype != _LINUX:
        raise GrowError(f"partition {number} is not a Linux partition")
    if any(e.start > part.start for e in table):
        raise GrowError(f"partition {number} is not the last on the disk: nothing is moved")
    end = (disk_sectors // ALIGN) * ALIGN
    if end - part.start <= part.sectors or disk_sectors > 0xFFFFFFFF:
        return None  # already to the end (or a card beyond MBR's 2 TiB: left as made)
    new = end - part.start
    at = _TABLE + 16 * (number - 1) + 12
    return mbr[:at] + struct.pack("<I", new) + mbr[at + 4:], new


def _disk_of(partition: Path) -> tuple[Path, int]:
    name = partition.resolve().name
    sysfs = Path("/sys/class/block") / name
    number = int((sysfs / "partition").read_text())
    return Path("/dev") / sysfs.resolve().parent.name, number


def grow(partition: Path) -> str:
    """Grow the MBR partition ``partition`` (a block device) to the end of its disk."""
    disk, number = _disk_of(partition)
    fd = os.open(disk, os.O_RDWR)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        result = grown(os.pread(fd, SECTOR, 0), size // SECTOR, number)
        if result is None:
            return f"{partition}: already reaches the end of {disk}"
        mbr, sectors = result
        os.pwrite(fd, mbr[:SECTOR], 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    proc = subprocess.run(["resizepart", str(disk), str(number), str(sectors)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:  # the table is written; the kernel sees it at the next boot
        raise GrowError(f"resizepart {disk} {number}: {proc.stderr.strip()}")
    return f"{partition}: partition {number} of {disk} now {sectors * SECTOR >> 20} MiB"
