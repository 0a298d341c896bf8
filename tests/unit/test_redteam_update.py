"""Red-team pass on `desanet update install` (Step 10): a bundle cut off mid-stream (an
ssh pipe that drops), a stream that is no tar at all, and a signed manifest whose version
would write lines of its own into the loader entry. Each beside its positive control."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.update import install as inst
from gateway.update import slots
from gateway.update.bundle import BundleError
from tests.unit.test_update import gw, key, make_bundle  # noqa: F401 (fixtures)


@pytest.mark.parametrize("cut", ["manifest", "kernel_header", "rootfs_start", "rootfs_middle"])
def test_a_bundle_cut_off_mid_stream_is_a_clear_error_and_offers_nothing(
        tmp_path: Path, key: Ed25519PrivateKey, gw: inst.Paths, cut: str) -> None:  # noqa: F811
    raw = make_bundle(tmp_path, key, rootfs=b"ROOT" * 4000).read_bytes()
    root = raw.index(b"ROOT" * 4000)
    at = {"manifest": raw.index(b'"format"'), "kernel_header": raw.index(b"vmlinuz") + 20,
          "rootfs_start": root + 10, "rootfs_middle": root + 8000}[cut]
    with pytest.raises(BundleError, match="cut off"):
        inst.install(io.BytesIO(raw[:at]), gw)
    assert "desanet-b+3.conf" not in [e.name for e in slots.entries(gw.esp)]


def test_a_stream_that_is_not_a_bundle_is_a_clear_error(
        tmp_path: Path, gw: inst.Paths) -> None:  # noqa: F811
    with pytest.raises(BundleError):
        inst.install(io.BytesIO(b"<html>502 Bad Gateway</html>\n" * 40), gw)


def test_the_whole_bundle_still_installs(
        tmp_path: Path, key: Ed25519PrivateKey, gw: inst.Paths) -> None:  # noqa: F811
    raw = make_bundle(tmp_path, key, rootfs=b"ROOT" * 4000).read_bytes()
    assert inst.install(io.BytesIO(raw), gw) == ("b", "2", "a")


def _resigned(raw: bytes, signer: Ed25519PrivateKey, version: str) -> bytes:
    """The bundle with its manifest's version changed and signed again (a key holder's
    build script that took a version from a file with a stray line)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as src, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst:
        manifest = b""
        for info in src.getmembers():
            f = src.extractfile(info)
            assert f is not None
            data = f.read()
            if info.name == "manifest.json":
                body = json.loads(data)
                body["version"] = version
                data = manifest = json.dumps(body).encode()
            elif info.name == "manifest.sig":
                data = signer.sign(manifest)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("version", ["3\noptions init=/bin/sh", "3 init=/bin/sh", ""])
def test_a_version_that_is_not_a_version_is_refused(
        tmp_path: Path, key: Ed25519PrivateKey, gw: inst.Paths, version: str) -> None:  # noqa: F811
    raw = _resigned(make_bundle(tmp_path, key).read_bytes(), key, version)
    with pytest.raises(BundleError, match="version"):
        inst.install(io.BytesIO(raw), gw)
    assert "desanet-b+3.conf" not in [e.name for e in slots.entries(gw.esp)]


@pytest.mark.parametrize("version", ["2026.12.1", "2026.12.1-rc1", "3+git.abc_1"])
def test_ordinary_versions_are_written_into_the_entry(
        tmp_path: Path, key: Ed25519PrivateKey, gw: inst.Paths, version: str) -> None:  # noqa: F811
    raw = _resigned(make_bundle(tmp_path, key).read_bytes(), key, version)
    inst.install(io.BytesIO(raw), gw)
    entry = (gw.esp / "loader/entries/desanet-b+3.conf").read_text()
    assert f"version {version}\n" in entry and entry.count("\noptions ") == 1


def test_the_bundle_maker_refuses_such_a_version_too(tmp_path: Path,
                                                     key: Ed25519PrivateKey) -> None:  # noqa: F811
    with pytest.raises(BundleError, match="version"):
        make_bundle(tmp_path, key, version="3\noptions init=/bin/sh")
    assert make_bundle(tmp_path, key, version="2026.12.1").exists()
