"""Signed update bundles: one tar stream, verified before anything is written.

Members, in this order: ``manifest.json`` (format 1, version, arch, and the size
and sha256 of each payload), ``manifest.sig`` (Ed25519 over the manifest's
bytes, by an update key the image trusts), then ``vmlinuz``, ``initrd.img`` and
``rootfs.img`` (the ext4 image of a root slot), which may be stored xz-compressed
as ``rootfs.img.xz`` (the manifest then says ``"compression": "xz"`` and the
stored size; size and sha256 stay those of the image itself). The reader checks
the signature before it hands out a payload, and each payload's size and hash
as it streams (after decompression, never more than the signed size), so the
bundle can come through a pipe (``ssh gateway desanet update install - <
bundle``) and never needs room on the gateway.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import lzma
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gateway.errors import DesanetError

FORMAT = 1
PAYLOADS = ("vmlinuz", "initrd.img", "rootfs.img")
CHUNK = 1 << 20
# xz: in the standard library on the gateway (no extra package), about 4x on a root
# image, and a Pi decompresses it faster than a village uplink delivers it.
COMPRESSIONS = {"xz": ".xz"}
# The version lands in the loader entry ("title", "version" lines) and is compared with
# the running one: one word, so no signed manifest can add a line (an "options") there.
_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+~_-]{0,63}")
_ARCH_RE = re.compile(r"[a-z0-9_]{1,16}")


class BundleError(DesanetError):
    """A bundle that must not be installed (bad signature, wrong hash, wrong shape)."""


@contextlib.contextmanager
def _tar_errors() -> Iterator[None]:
    # A stream that ends early (an ssh pipe that dropped, a half-copied file) or is no
    # tar at all: tarfile's own errors, said as what they mean for the technician.
    try:
        yield
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"the bundle is cut off or damaged ({exc}); copy it again") from None


@dataclass(frozen=True)
class Manifest:
    version: str
    arch: str
    files: dict[str, dict[str, Any]]


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0  # reproducible: no build time
    return info


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _xz(src: Path, dest: Path) -> None:
    """Compress with xz's own tool when there is one (all cores), else the lzma module."""
    tool = shutil.which("xz")
    if tool:
        with dest.open("wb") as out:
            subprocess.run([tool, "-T0", "-6", "--check=crc64", "-c", str(src)], stdout=out,
                           check=True)
        return
    with src.open("rb") as f, lzma.open(dest, "wb", preset=6) as out:
        shutil.copyfileobj(f, out, CHUNK)


def write_bundle(out: Path, version: str, arch: str, payloads: dict[str, Path],
                 sign: Callable[[bytes], bytes], compress: str | None = None) -> None:
    """Write the bundle to ``out`` (atomically: a temp file renamed at the end).
    ``compress="xz"`` stores rootfs.img compressed (the kernel and initrd already are)."""
    if set(payloads) != set(PAYLOADS):
        raise BundleError(f"a bundle needs exactly {', '.join(PAYLOADS)}")
    if not _VERSION_RE.fullmatch(version):
        raise BundleError(f"version {version!r} is not one word of letters, digits and . + ~ _ -")
    if compress is not None and compress not in COMPRESSIONS:
        raise BundleError(f"compression {compress!r}: one of {', '.join(COMPRESSIONS)}")
    files: dict[str, dict[str, Any]] = {
        name: {"size": payloads[name].stat().st_size, "sha256": sha256_file(payloads[name])}
        for name in PAYLOADS}
    stored = dict(payloads)
    tmp = out.with_name(out.name + ".tmp")
    packed = out.with_name(out.name + ".rootfs.tmp")
    try:
        if compress:
            _xz(payloads["rootfs.img"], packed)
            stored["rootfs.img"] = packed
            files["rootfs.img"].update(compression=compress, stored=packed.stat().st_size)
        manifest = json.dumps({"format": FORMAT, "version": version, "arch": arch,
                               "files": files}, indent=1, sort_keys=True).encode()
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_tarinfo("manifest.json", len(manifest)), io.BytesIO(manifest))
            sig = sign(manifest)
            tar.addfile(_tarinfo("manifest.sig", len(sig)), io.BytesIO(sig))
            for name in PAYLOADS:
                with stored[name].open("rb") as f:
                    tar.addfile(_tarinfo(_member_name(name, files[name]),
                                         stored[name].stat().st_size), f)
        tmp.replace(out)
    finally:
        packed.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def _member_name(name: str, entry: dict[str, Any]) -> str:
    return name + COMPRESSIONS.get(entry.get("compression") or "", "")


def _parse_manifest(raw: bytes) -> Manifest:
    try:
        data = json.loads(raw)
        if data.get("format") != FORMAT:
            raise BundleError(f"manifest format {data.get('format')!r}, expected {FORMAT}")
        files = data["files"]
        if not (isinstance(data["version"], str) and _VERSION_RE.fullmatch(data["version"])):
            raise BundleError(f"manifest version {data['version']!r} is not one word of "
                              "letters, digits and . + ~ _ -")
        if not (isinstance(data["arch"], str) and _ARCH_RE.fullmatch(data["arch"])):
            raise BundleError(f"manifest arch {data['arch']!r} is not an architecture name")
        for name in PAYLOADS:
            int(files[name]["size"])
            bytes.fromhex(files[name]["sha256"])
            how = files[name].get("compression")
            if how is not None:
                if name != "rootfs.img" or how not in COMPRESSIONS:
                    raise BundleError(f"manifest: {name} compressed with {how!r}; this "
                                      f"gateway reads only rootfs.img as "
                                      f"{', '.join(COMPRESSIONS)}")
                int(files[name]["stored"])
        return Manifest(str(data["version"]), str(data["arch"]), files)
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"manifest.json is malformed: {exc}") from exc


class BundleReader:
    """Streams a bundle: ``open`` verifies the manifest, ``payloads`` yields checked streams."""

    def __init__(self, stream: IO[bytes], verify: Callable[[bytes, bytes], bool]) -> None:
        with _tar_errors():
            self._tar = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 (streamed by payloads())
            self._iter = iter(self._tar)
            raw = self._member("manifest.json")
            sig = self._member("manifest.sig")
        if not verify(raw, sig):
            raise BundleError("the bundle's signature does not match any trusted update key")
        self.manifest = _parse_manifest(raw)

    def _next(self, name: str) -> tarfile.TarInfo:
        info = next(self._iter, None)
        if info is None or info.name != name or not info.isfile():
            found = "the end" if info is None else repr(info.name)
            raise BundleError(f"expected {name} in the bundle, found {found}")
        return info

    def _member(self, name: str) -> bytes:
        info = self._next(name)
        f = self._tar.extractfile(info)
        assert f is not None
        return f.read(1 << 16)

    def payloads(self) -> Iterator[tuple[str, Iterator[bytes]]]:
        """(name, chunks) in bundle order; a chunk stream raises BundleError on a bad hash."""
        for name in PAYLOADS:
            member = _member_name(name, self.manifest.files[name])
            with _tar_errors():
                info = self._next(member)
            yield name, self._checked(name, member, info)

    def _stored_blocks(self, info: tarfile.TarInfo) -> Iterator[bytes]:
        f = self._tar.extractfile(info)
        assert f is not None
        while True:
            with _tar_errors():
                block = f.read(CHUNK)
            if not block:
                return
            yield block

    def _checked(self, name: str, member: str, info: tarfile.TarInfo) -> Iterator[bytes]:
        want = self.manifest.files[name]
        stored = int(want.get("stored", want["size"]))
        if info.size != stored:
            raise BundleError(f"{member}: {info.size} bytes, the manifest says {stored}")
        blocks = self._stored_blocks(info)
        if want.get("compression") == "xz":
            blocks = _unxz(member, blocks, int(want["size"]))
        h = hashlib.sha256()
        for block in blocks:
            h.update(block)
            yield block
        if h.hexdigest() != want["sha256"]:
            raise BundleError(f"{name}: sha256 does not match the signed manifest")


def _unxz(member: str, blocks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Decompress, never past the signed ``size`` (a crafted stream cannot fill the
    memory or the slot), and refuse anything after the end of the xz stream."""
    un = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    out = 0
    try:
        for block in blocks:
            if un.eof:
                if block:
                    raise BundleError(f"{member}: data after the end of the xz stream")
                continue
            data = block
            while True:  # at most CHUNK out per call; b"" drains what is still buffered
                chunk = un.decompress(data, max_length=CHUNK)
                data = b""
                out += len(chunk)
                if out > size:
                    raise BundleError(f"{member}: decompresses to more than the signed "
                                      f"{size} bytes")
                if chunk:
                    yield chunk
                if un.eof:
                    if un.unused_data:
                        raise BundleError(f"{member}: data after the end of the xz stream")
                    break
                if un.needs_input:
                    break
    except lzma.LZMAError as exc:
        raise BundleError(f"{member}: not a valid xz stream ({exc})") from None
    if not un.eof:
        raise BundleError(f"{member}: the xz stream is cut off; copy the bundle again")
