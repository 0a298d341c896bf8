"""Building blocks of images/mkdisk and images/mkupdate (no loop devices, no mounts).

Each partition is made as a file (mkfs.ext4 -d fills ext4 from a directory,
mkfs.vfat + mtools fill the ESP), sfdisk writes the GPT into a sparse file, and
the partition files are copied in at their offsets, skipping zero blocks so the
disk stays sparse. All of it works as an unprivileged file operation; root is
only needed to unpack a rootfs.tar with its owners.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # gateway/ from a checkout

from gateway.update import slots

MIB = 1 << 20
BOOT_LAYER = Path(__file__).resolve().parent / "boot"
# The boot partition's fixed FAT volume id: one fstab line finds it on GPT and MBR cards.
# 1234ABCD because every card made before it was named here got that id from mkfs.vfat's
# --invariant: an update's root must still mount their ESP.
ESP_VOLID = "1234ABCD"
ESP_FSTAB = (f"UUID={ESP_VOLID[:4]}-{ESP_VOLID[4:]}  {slots.ESP_MOUNT}  vfat  "
             "umask=0077,noatime  0  2\n")


class DiskError(Exception):
    pass


def run(*cmd: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=False)
    if proc.returncode != 0:
        raise DiskError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": MIB, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def align_mib(n: int) -> int:
    return math.ceil(n / MIB) * MIB


def tree_size(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            with contextlib.suppress(OSError):
                total += max(os.lstat(os.path.join(dirpath, name)).st_blocks * 512, 4096)
    return total


def stage_rootfs(src: Path, dest: Path) -> None:
    """Unpack rootfs.tar (or copy a rootfs dir) with owners, modes and xattrs."""
    dest.mkdir(parents=True)
    if src.is_dir():
        run("cp", "-a", f"{src}/.", str(dest))
    elif tarfile.is_tarfile(src):
        run("tar", "-C", str(dest), "--numeric-owner", "--xattrs", "--xattrs-include=*",
            "-xpf", str(src))
    else:
        raise DiskError(f"--rootfs {src}: neither a directory nor a tar file")


def kernel_files(root: Path) -> tuple[Path, Path]:
    kernels = sorted(root.glob("boot/vmlinuz-*"))
    if not kernels:
        raise DiskError("the rootfs has no /boot/vmlinuz-*: build it with a kernel package")
    kernel = kernels[-1]
    initrd = root / "boot" / ("initrd.img-" + kernel.name.removeprefix("vmlinuz-"))
    if not initrd.exists():
        raise DiskError(f"the rootfs has no {initrd.relative_to(root)}: install initramfs-tools")
    return kernel, initrd


def check_update_keys(update_keys: list[Path]) -> None:
    """Each --update-key is an ed25519:... public key, and there is one at least: a root that
    trusts no key can never be updated again, and a private key copied into a root would let
    anyone holding one gateway sign updates for the whole fleet."""
    from gateway.telemetry.commands import public_key_bytes

    if not update_keys:
        raise DiskError("--update-key: none given; the image would trust no update bundle "
                        "and could never be updated (give the fleet's update public key)")
    for key in update_keys:
        try:
            text = key.read_text(errors="replace").strip()
        except OSError as exc:
            raise DiskError(f"--update-key {key}: {exc.strerror or exc}") from None
        if "PRIVATE KEY" in text:
            raise DiskError(f"--update-key {key}: this is a PRIVATE key; give its public half "
                            "(ed25519:..., the .pub file). Nothing was written.")
        try:
            public_key_bytes(text)
        except ValueError as exc:
            raise DiskError(f"--update-key {key}: {exc}") from None


def add_boot_layer(root: Path, version: str, update_keys: list[Path]) -> None:
    """What the disk layout needs inside the root: ESP mount, boot check, version, keys."""
    if not (root / "usr/lib/systemd/systemd-bless-boot").exists():
        raise DiskError("the rootfs lacks systemd-bless-boot: include the systemd-boot package "
                        "(boot counting marks a new slot good with it)")
    run("cp", "-a", "--no-preserve=ownership", f"{BOOT_LAYER}/.", str(root))
    (root / "boot/efi").mkdir(parents=True, exist_ok=True)
    fstab = root / "etc/fstab"
    text = fstab.read_text() if fstab.exists() else ""
    if f" {slots.ESP_MOUNT} " not in text and f"\t{slots.ESP_MOUNT}\t" not in text:
        fstab.write_text(text + "# The ESP: boot loader, kernels, the provisioning bundle "
                         "(desanet/), loader entries\n" + ESP_FSTAB)
    osrel = root / "usr/lib/os-release"
    lines = [ln for ln in osrel.read_text().splitlines()
             if not ln.startswith(("IMAGE_VERSION=", "IMAGE_ID="))]
    osrel.write_text("\n".join([*lines, f'IMAGE_ID=desanet\nIMAGE_VERSION="{version}"']) + "\n")
    keydir = root / "usr/lib/desanet/update-keys"
    keydir.mkdir(parents=True, exist_ok=True)
    for key in update_keys:
        shutil.copyfile(key, keydir / (key.stem + ".pub"))


def prepare_root(root: Path, rootfs: Path, overlays: list[Path], version: str,
                 update_keys: list[Path]) -> tuple[Path, Path]:
    """Stage the rootfs with overlays and the boot layer; returns (kernel, initrd)."""
    check_update_keys(update_keys)
    stage_rootfs(rootfs, root)
    for overlay in overlays:
        run("cp", "-a", "--no-preserve=ownership", f"{overlay}/.", str(root))
    add_boot_layer(root, version, update_keys)
    return kernel_files(root)


def mkfs_ext4(out: Path, src: Path | None, label: str, size: int, uuid: str,
              journal: bool, epoch: str, offset: int = 0) -> None:
    """An ext4 of ``size`` bytes in ``out`` at ``offset`` (a partition of a disk file, in place)."""
    if offset == 0:
        out.unlink(missing_ok=True)
        with out.open("wb") as f:
            f.truncate(size)
    cmd = ["mkfs.ext4", "-q", "-F", "-L", label, "-U", uuid, "-b", "4096",
           "-E", f"hash_seed={uuid},offset={offset},nodiscard", "-m", "1" if journal else "0"]
    if not journal:  # a read-only root never writes: no journal to replay
        cmd += ["-O", "^has_journal"]
    if src is not None:
        cmd += ["-d", str(src)]
    run(*cmd, str(out), str(size // 4096), env={"E2FSPROGS_FAKE_TIME": epoch})


def mkfs_esp(out: Path, size: int, volid: str, files: dict[str, Path],
             loader: dict[str, str], bundle: Path | None) -> None:
    out.unlink(missing_ok=True)
    # --invariant before -i: it sets a fixed volume id of its own otherwise.
    run("mkfs.vfat", "-F", "32", "-n", "ESP", "--invariant", "-i", volid, "-C", str(out),
        str(size // 1024))
    env = {"MTOOLS_SKIP_CHECK": "1"}
    dirs = {str(Path(p).parent) for p in list(files) + list(loader)} - {"."}
    for d in sorted(dirs, key=lambda s: s.count("/")):
        parts = Path(d).parts
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            subprocess.run(["mmd", "-D", "s", "-i", str(out), f"::{sub}"], env={**os.environ, **env},
                           capture_output=True, check=False)  # already there: fine
    for dest, src in files.items():
        run("mcopy", "-o", "-i", str(out), str(src), f"::{dest}", env=env)
    for dest, text in loader.items():
        tmp = out.with_name("loader.tmp")
        tmp.write_text(text)
        run("mcopy", "-o", "-i", str(out), str(tmp), f"::{dest}", env=env)
        tmp.unlink()
    if bundle is not None:
        run("mcopy", "-s", "-o", "-i", str(out), str(bundle), "::desanet", env=env)


def copy_sparse(src: Path, disk: Path, offset: int) -> None:
    """Copy src into disk at offset, leaving all-zero blocks as holes."""
    zero = bytes(MIB)
    with src.open("rb") as s, disk.open("r+b") as d:
        pos = offset
        while block := s.read(MIB):
            if block != zero[: len(block)]:
                os.pwrite(d.fileno(), block, pos)
            pos += len(block)


def _partition(disk: Path, size: int, script: list[str]) -> None:
    """A sparse disk file of ``size`` bytes, partitioned by sfdisk from ``script``."""
    disk.unlink(missing_ok=True)
    with disk.open("wb") as f:
        f.truncate(size)
    proc = subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(disk)],
                          input="\n".join(script) + "\n", text=True, capture_output=True,
                          check=False)
    if proc.returncode != 0:
        raise DiskError(f"sfdisk failed: {proc.stderr.strip()}")


def write_mbr(disk: Path, parts: list[tuple[int, str]], disk_id: str) -> list[int]:
    """parts: (size, MBR type); returns each partition's offset. For the Raspberry Pi."""
    offsets, start = [], 4 * MIB
    lines = ["label: dos", f"label-id: 0x{disk_id}", "unit: sectors", ""]
    for size, ptype in parts:
        offsets.append(start)
        lines.append(f"start={start // 512}, size={size // 512}, type={ptype}")
        start += size
    _partition(disk, start, lines)
    return offsets


def write_gpt(disk: Path, parts: list[tuple[str, int, str, str]], disk_id: str) -> list[int]:
    """parts: (name, size, type guid, partition uuid); returns each partition's offset."""
    offsets, start = [], MIB
    lines = ["label: gpt", f"label-id: {disk_id}", "unit: sectors", ""]
    for name, size, ptype, puuid in parts:
        offsets.append(start)
        lines.append(f"start={start // 512}, size={size // 512}, type={ptype}, "
                     f"uuid={puuid}, name={name}")
        start += size
    _partition(disk, start + MIB, lines)  # room for the backup GPT
    return offsets
