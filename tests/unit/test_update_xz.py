"""Update bundles with the root image xz-compressed: installed like a plain one, and a
crafted or damaged stream is refused before the loader entry is written."""

from __future__ import annotations

import io
import json
import lzma
import os
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.update import install as inst
from gateway.update.bundle import BundleError, write_bundle
from tests.unit.test_update import SLOT_SIZE, gw, key  # noqa: F401 (fixtures)

ROOT_IMAGE = os.urandom(4096) + bytes(40_000)  # compressible, like an ext4 image


def payloads(tmp: Path, rootfs: bytes = ROOT_IMAGE) -> dict[str, Path]:
    files = {"vmlinuz": b"kernel", "initrd.img": b"initrd", "rootfs.img": rootfs}
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    return {name: tmp / name for name in files}


def entries(paths: inst.Paths) -> list[str]:
    return sorted(p.name for p in (paths.esp / "loader/entries").iterdir())


def forged(tmp: Path, signer: Ed25519PrivateKey, stored: bytes, size: int = len(ROOT_IMAGE),
           sha: str | None = None) -> Path:
    """A bundle whose rootfs.img.xz member is ``stored``, signed with the trusted key:
    what a compromised build or a bad copy would produce."""
    import hashlib
    files = {"vmlinuz": {"size": 6, "sha256": hashlib.sha256(b"kernel").hexdigest()},
             "initrd.img": {"size": 6, "sha256": hashlib.sha256(b"initrd").hexdigest()},
             "rootfs.img": {"size": size, "sha256": sha or hashlib.sha256(ROOT_IMAGE).hexdigest(),
                            "compression": "xz", "stored": len(stored)}}
    manifest = json.dumps({"format": 1, "version": "2", "arch": inst.machine_arch(),
                           "files": files}).encode()
    out = tmp / "forged.update"
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("manifest.json", manifest), ("manifest.sig", signer.sign(manifest)),
                           ("vmlinuz", b"kernel"), ("initrd.img", b"initrd"),
                           ("rootfs.img.xz", stored)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def install(bundle: Path, paths: inst.Paths) -> tuple[str, str, str]:
    with bundle.open("rb") as f:
        return inst.install(f, paths, tries=3)


def test_a_compressed_bundle_is_smaller_and_installs_the_same_bytes(
        tmp_path: Path, key: Ed25519PrivateKey, gw: inst.Paths) -> None:  # noqa: F811
    plain, packed = tmp_path / "plain.update", tmp_path / "xz.update"
    write_bundle(plain, "2", inst.machine_arch(), payloads(tmp_path), key.sign)
    write_bundle(packed, "2", inst.machine_arch(), payloads(tmp_path), key.sign, compress="xz")
    assert packed.stat().st_size < plain.stat().st_size // 2
    with tarfile.open(packed) as tar:
        assert tar.getnames()[-1] == "rootfs.img.xz"
    assert install(packed, gw) == ("b", "2", "a")
    assert (gw.devices / "root-b").read_bytes()[:len(ROOT_IMAGE)] == ROOT_IMAGE
    assert entries(gw) == ["desanet-a.conf", "desanet-b+3.conf"]


@pytest.mark.parametrize(("what", "stored", "size", "error"), [
    ("bomb: more than the signed size", lzma.compress(ROOT_IMAGE + bytes(SLOT_SIZE)), None,
     "more than the signed"),
    ("data after the stream", lzma.compress(ROOT_IMAGE) + b"extra", None, "after the end"),
    ("cut off", lzma.compress(ROOT_IMAGE)[:-20], None, "cut off|not a valid"),
    ("not xz", b"plain bytes, not xz", None, "not a valid xz"),
    ("other content, same size", lzma.compress(os.urandom(len(ROOT_IMAGE))), None, "sha256"),
], ids=["bomb", "trailing", "cut", "not-xz", "other"])
def test_a_bad_compressed_root_is_refused_and_no_entry_is_written(
        tmp_path: Path, key: Ed25519PrivateKey, gw: inst.Paths,  # noqa: F811
        what: str, stored: bytes, size: int | None, error: str) -> None:
    bundle = forged(tmp_path, key, stored, size or len(ROOT_IMAGE))
    with pytest.raises(BundleError, match=error):
        install(bundle, gw)
    assert entries(gw) == ["desanet-a.conf"], what  # b is never offered to the loader


def test_control_the_forger_makes_a_good_bundle_from_good_bytes(
        tmp_path: Path, key: Ed25519PrivateKey, gw: inst.Paths) -> None:  # noqa: F811
    assert install(forged(tmp_path, key, lzma.compress(ROOT_IMAGE)), gw) == ("b", "2", "a")


def test_an_unknown_compression_is_refused_by_name(tmp_path: Path,
                                                   key: Ed25519PrivateKey) -> None:  # noqa: F811
    with pytest.raises(BundleError, match="compression 'gzip'"):
        write_bundle(tmp_path / "x.update", "2", "amd64", payloads(tmp_path), key.sign,
                     compress="gzip")
