"""A/B updates: the signed bundle, the install into the inactive slot, the loader entries."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.telemetry.commands import public_key_text
from gateway.update import install as inst
from gateway.update import slots
from gateway.update.bundle import BundleError, write_bundle

SLOT_SIZE = 1 << 16


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def gw(tmp_path: Path, key: Ed25519PrivateKey) -> inst.Paths:
    """A gateway running slot a, version 1, with a fake ESP and partition files."""
    esp = tmp_path / "esp"
    (esp / "loader/entries").mkdir(parents=True)
    (esp / "loader/entries/desanet-a.conf").write_text(slots.entry_text("a", "1", ""))
    (esp / "loader/entries/desanet-b+0-3.conf").write_text("old failed trial\n")
    devices = tmp_path / "dev"
    devices.mkdir()
    for s in ("a", "b"):
        (devices / f"root-{s}").write_bytes(bytes(SLOT_SIZE))
    (tmp_path / "cmdline").write_text(
        "initrd=\\EFI\\desanet\\a\\initrd.img root=PARTUUID=x ro rootwait panic=10 "
        "desanet.slot=a console=ttyS0,115200\n")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "ops.pub").write_text(public_key_text(key.public_key()) + "\n")
    (tmp_path / "os-release").write_text('ID=debian\nIMAGE_VERSION="1"\n')
    return inst.Paths(esp=esp, devices=devices, cmdline=tmp_path / "cmdline", keys=[keys],
                      os_release=tmp_path / "os-release")


def make_bundle(tmp: Path, key: Ed25519PrivateKey, version: str = "2",
                rootfs: bytes = b"ROOT" * 100, arch: str | None = None) -> Path:
    files = {"vmlinuz": b"kernel", "initrd.img": b"initrd", "rootfs.img": rootfs}
    payloads = {}
    for name, data in files.items():
        (tmp / name).write_bytes(data)
        payloads[name] = tmp / name
    out = tmp / f"v{version}.update"
    write_bundle(out, version, arch or inst.machine_arch(), payloads, key.sign)
    return out


def test_install_writes_the_inactive_slot_and_a_trial_entry(
        tmp_path: Path, key: Ed25519PrivateKey, gw: inst.Paths) -> None:
    bundle = make_bundle(tmp_path, key)
    with bundle.open("rb") as f:
        assert inst.install(f, gw, tries=3) == ("b", "2", "a")
    assert (gw.devices / "root-b").read_bytes()[:400] == b"ROOT" * 100
    assert (gw.devices / "root-a").read_bytes() == bytes(SLOT_SIZE)  # running slot untouched
    names = sorted(p.name for p in (gw.esp / "loader/entries").iterdir())
    assert names == ["desanet-a.conf", "desanet-b+3.conf"]  # the failed trial's entry is gone
    entry = (gw.esp / "loader/entries/desanet-b+3.conf").read_text()
    assert f"root=PARTUUID={slots.part_uuid('b')} " in entry
    assert "desanet.slot=b console=ttyS0,115200\n" in entry and "initrd=" not in entry.split(
        "options")[1]
    assert "version 2\n" in entry
    assert (gw.esp / "EFI/desanet/b/vmlinuz").read_bytes() == b"kernel"
    assert (gw.esp / "EFI/desanet/b/initrd.img").read_bytes() == b"initrd"


def test_a_bundle_signed_by_an_unknown_key_changes_nothing(
        tmp_path: Path, gw: inst.Paths) -> None:
    bundle = make_bundle(tmp_path, Ed25519PrivateKey.generate())
    with bundle.open("rb") as f, pytest.raises(BundleError, match="signature"):
        inst.install(f, gw)
    assert (gw.devices / "root-b").read_bytes() == bytes(SLOT_SIZE)
    assert (gw.esp / "loader/entries/desanet-b+0-3.conf").exists()


def test_a_tampered_payload_gets_no_loader_entry(
        tmp_path: Path, key: Ed25519PrivateKey, gw: inst.Paths) -> None:
    good = make_bundle(tmp_path, key)
    raw = bytearray(good.read_bytes())
    at = raw.index(b"ROOT" * 100)
    raw[at:at + 4] = b"EVIL"  # same size, different bytes: only the hash can tell
    with pytest.raises(BundleError, match=r"rootfs\.img: sha256"):
        inst.install(io.BytesIO(bytes(raw)), gw)
    entries = [e.name for e in slots.entries(gw.esp)]
    assert entries == ["desanet-a.conf"]  # b is never offered to the loader
    assert not (gw.esp / "EFI/desanet/b/vmlinuz").exists()


def test_positive_control_untampered_copy_of_the_same_bytes_installs(
        tmp_path: Path, key: Ed25519PrivateKey, gw: inst.Paths) -> None:
    good = make_bundle(tmp_path, key)
    inst.install(io.BytesIO(good.read_bytes()), gw)
    assert [e.name for e in slots.entries(gw.esp)] == ["desanet-a.conf", "desanet-b+3.conf"]


def test_an_older_or_same_version_is_refused_unless_asked(
        tmp_path: Path, key: Ed25519PrivateKey, gw: inst.Paths) -> None:
    bundle = make_bundle(tmp_path, key, version="1")
    with bundle.open("rb") as f, pytest.raises(BundleError, match="not newer"):
        inst.install(f, gw)
    with bundle.open("rb") as f:
        assert inst.install(f, gw, allow_downgrade=True)[1] == "1"


def test_a_root_larger_than_the_slot_is_refused(
        tmp_path: Path, key: Ed25519PrivateKey, gw: inst.Paths) -> None:
    bundle = make_bundle(tmp_path, key, rootfs=bytes(SLOT_SIZE + 1))
    with bundle.open("rb") as f, pytest.raises(BundleError, match="larger than the slot"):
        inst.install(f, gw)
    assert [e.name for e in slots.entries(gw.esp)] == ["desanet-a.conf"]


def test_wrong_architecture_and_wrong_member_order(
        tmp_path: Path, key: Ed25519PrivateKey, gw: inst.Paths) -> None:
    other = "arm64" if inst.machine_arch() != "arm64" else "amd64"
    bundle = make_bundle(tmp_path, key, arch=other)
    with bundle.open("rb") as f, pytest.raises(BundleError, match=f"for {other}"):
        inst.install(f, gw)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("rootfs.img")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(BundleError, match=r"expected manifest\.json"):
        inst.install(io.BytesIO(buf.getvalue()), gw)


def test_not_booted_from_a_slot(tmp_path: Path, key: Ed25519PrivateKey, gw: inst.Paths) -> None:
    gw.cmdline.write_text("root=/dev/sda1 ro\n")
    with make_bundle(tmp_path, key).open("rb") as f, pytest.raises(BundleError, match="slot"):
        inst.install(f, gw)


def test_entry_names_and_running_slot() -> None:
    assert slots.parse_entry_name("desanet-b+2-1.conf") == slots.Entry(
        "desanet-b+2-1.conf", "b", 2, 1)
    assert slots.parse_entry_name("desanet-a.conf") == slots.Entry("desanet-a.conf", "a", None, 0)
    assert slots.parse_entry_name("other.conf") is None
    assert slots.running_slot("ro desanet.slot=b quiet") == "b"
    assert slots.running_slot("ro desanet.slot=c") is None
    assert inst.version_key("2026.12.10") > inst.version_key("2026.12.9")


def test_an_update_while_the_running_entry_is_on_trial_is_refused(
        tmp_path: Path, key: Ed25519PrivateKey, gw: inst.Paths) -> None:
    """Booted into a trial (b+2-1) whose boot check has not passed yet: slot a is the way
    back and stays. Once systemd-bless-boot drops the counter, a may be replaced."""
    entries = gw.esp / "loader/entries"
    (entries / "desanet-b+0-3.conf").unlink()
    (entries / "desanet-b+2-1.conf").write_text(slots.entry_text("b", "2", ""))
    gw.cmdline.write_text(gw.cmdline.read_text().replace("desanet.slot=a", "desanet.slot=b"))
    (gw.devices / "root-a").write_bytes(b"A" * SLOT_SIZE)
    with make_bundle(tmp_path, key, version="3").open("rb") as f, \
            pytest.raises(BundleError, match="still on trial"):
        inst.install(f, gw)
    assert (gw.devices / "root-a").read_bytes() == b"A" * SLOT_SIZE
    assert (entries / "desanet-a.conf").exists()
    (entries / "desanet-b+2-1.conf").rename(entries / "desanet-b.conf")  # blessed
    with make_bundle(tmp_path, key, version="3").open("rb") as f:
        assert inst.install(f, gw)[0] == "a"


@pytest.mark.parametrize("tries", [0, -1, inst.MAX_TRIES + 1])
def test_tries_outside_the_range_are_refused_before_anything_is_written(
        tmp_path: Path, key: Ed25519PrivateKey, gw: inst.Paths, tries: int) -> None:
    # 0 would make an entry the loader never boots; -1 a name systemd-boot cannot count.
    bundle = make_bundle(tmp_path, key)
    with bundle.open("rb") as f, pytest.raises(BundleError, match=rf"--tries: {tries} is outside"):
        inst.install(f, gw, tries=tries)
    assert (gw.devices / "root-b").read_bytes() == bytes(SLOT_SIZE)
    assert sorted(p.name for p in (gw.esp / "loader/entries").iterdir()) == [
        "desanet-a.conf", "desanet-b+0-3.conf"]
    with bundle.open("rb") as f:  # positive control: the range's ends install
        assert inst.install(f, gw, tries=inst.MAX_TRIES)[0] == "b"
    assert f"desanet-b+{inst.MAX_TRIES}.conf" in [e.name for e in slots.entries(gw.esp)]


def test_a_spoilt_trusted_key_file_is_named_in_a_clear_error(
        tmp_path: Path, key: Ed25519PrivateKey, gw: inst.Paths) -> None:
    (gw.keys[0] / "zz-spoilt.pub").write_text("-----BEGIN PRIVATE KEY-----\nMC4CAQ...\n")
    bundle = make_bundle(tmp_path, key)
    with bundle.open("rb") as f, pytest.raises(BundleError, match=r"zz-spoilt\.pub.*ed25519:"):
        inst.install(f, gw)
    assert (gw.devices / "root-b").read_bytes() == bytes(SLOT_SIZE)
