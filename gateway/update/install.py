"""Write a verified bundle into the inactive slot and add its trial loader entry.

Order matters for power cuts: the inactive slot's old entry goes first (a half
written slot is never bootable), the payloads are written and checked, and the
new entry, with its tries counter, is renamed into place last. On a Raspberry Pi
(U-Boot, ``desanet.loader=uboot``) the same steps cancel and then start a trial in
the boot partition's state files instead (gateway/update/ubootstate.py). The running
slot, its entry and the data partition are never touched.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from gateway.update import slots, ubootstate
from gateway.update.bundle import BundleError, BundleReader

DEFAULT_TRIES = 3
# One digit: U-Boot's boot.scr compares hex counts (ubootstate); more failing boots than
# this only keep a village offline longer before the way back.
MAX_TRIES = ubootstate.MAX_TRIES


@dataclass
class Paths:
    """Where things are on a running gateway; tests point these into a temp dir."""

    esp: Path = slots.ESP_MOUNT
    devices: Path = Path("/dev/disk/by-partlabel")
    partuuids: Path = Path("/dev/disk/by-partuuid")  # the Pi's MBR card has no names
    cmdline: Path = Path("/proc/cmdline")
    keys: list[Path] = field(default_factory=lambda: [Path("/usr/lib/desanet/update-keys")])
    os_release: Path = Path("/etc/os-release")


def trusted_keys(dirs: list[Path]) -> list[bytes]:
    from gateway.telemetry.commands import public_key_bytes

    keys = []
    for d in dirs:
        for p in sorted(d.glob("*.pub")) if d.is_dir() else []:
            try:
                keys.append(public_key_bytes(p.read_text().strip()))
            except ValueError as exc:  # a spoilt key file must not hide the good ones' errors
                raise BundleError(f"trusted update key {p}: {exc}") from None
    return keys


def verifier(keys: list[bytes]):  # type: ignore[no-untyped-def]
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    def verify(data: bytes, sig: bytes) -> bool:
        for raw in keys:
            try:
                Ed25519PublicKey.from_public_bytes(raw).verify(sig, data)
                return True
            except InvalidSignature:
                continue
        return False
    return verify


def image_version(os_release: Path) -> str:
    try:
        for line in os_release.read_text().splitlines():
            if line.startswith("IMAGE_VERSION="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def version_key(v: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.findall(r"\d+|[A-Za-z]+", v)]


def machine_arch() -> str:
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def _write_stream(chunks: Iterator[bytes], dest: IO[bytes], limit: int | None, what: str) -> None:
    written = 0
    for block in chunks:
        written += len(block)
        if limit is not None and written > limit:
            raise BundleError(f"{what}: the image is larger than the slot ({limit} bytes)")
        dest.write(block)
    dest.flush()
    os.fsync(dest.fileno())


def _device_size(dev: Path) -> int:
    with dev.open("rb") as f:
        return f.seek(0, os.SEEK_END)


def install(stream: IO[bytes], paths: Paths, tries: int = DEFAULT_TRIES,
            allow_downgrade: bool = False) -> tuple[str, str, str]:
    """Install; returns (target slot, new version, running slot). Raises BundleError."""
    if not 1 <= tries <= MAX_TRIES:
        raise BundleError(f"--tries: {tries} is outside 1..{MAX_TRIES} (boots of the new slot "
                          "before the gateway goes back to the running one)")
    running = slots.running_slot(paths.cmdline.read_text())
    if running is None:
        raise BundleError("not booted from a desanet slot (no desanet.slot= on the kernel "
                          "command line): nothing to update")
    target = slots.other(running)
    keys = trusted_keys(paths.keys)
    if not keys:
        raise BundleError(f"no trusted update keys in {', '.join(map(str, paths.keys))}")
    reader = BundleReader(stream, verifier(keys))
    m = reader.manifest
    if m.arch != machine_arch():
        raise BundleError(f"the bundle is for {m.arch}, this gateway is {machine_arch()}")
    current = image_version(paths.os_release)
    if current and not allow_downgrade and version_key(m.version) <= version_key(current):
        raise BundleError(f"the bundle's version {m.version} is not newer than the running "
                          f"{current} (--allow-downgrade to go back on purpose)")
    cmdline = paths.cmdline.read_text()
    uboot = ubootstate.is_uboot(cmdline)
    entries_dir = paths.esp / "loader" / "entries"
    # The other slot is the only way back while the running one is still on trial:
    # overwriting it then would leave a bad trial with nothing to fall back to.
    on_trial = (ubootstate.read(paths.esp).trial == running if uboot else
                any(e.slot == running and e.tries_left is not None
                    for e in slots.entries(paths.esp)))
    if on_trial:
        raise BundleError(f"slot {running} is still on trial (its boot check has not passed): "
                          f"slot {target} is the way back and is not overwritten now")
    if uboot:
        ubootstate.cancel_trial(paths.esp, running)
        device = paths.partuuids / slots.rpi_part_uuid(target)
    else:
        for e in slots.entries(paths.esp):
            if e.slot == target:
                (entries_dir / e.name).unlink()
        slots.fsync_dir(entries_dir)
        device = paths.devices / slots.part_label(target)
    kdir = paths.esp / slots.kernel_dir(target)
    kdir.mkdir(parents=True, exist_ok=True)
    for name, chunks in reader.payloads():
        if name == "rootfs.img":
            with device.open("r+b") as dev:
                _write_stream(chunks, dev, _device_size(device), name)
        else:
            with (kdir / f"{name}.new").open("wb") as f:
                _write_stream(chunks, f, None, name)
    for name in ("vmlinuz", "initrd.img"):
        slots.replace_durably(kdir / f"{name}.new", kdir / name)
    if uboot:
        ubootstate.start_trial(paths.esp, running, target, tries)
        return target, m.version, running
    options = slots.extra_options(cmdline)
    entry = entries_dir / slots.entry_name(target, tries)
    tmp = entries_dir / f".{entry.name}.tmp"
    tmp.write_text(slots.entry_text(target, m.version, options))
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    slots.replace_durably(tmp, entry)
    return target, m.version, running
