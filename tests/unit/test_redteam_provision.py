"""Red-team pass on `desanet provision import` (Step 10): a bundle directory whose
secrets, or their folder, are links to files of the gateway. Removing the secrets from
the card must never write through a link. Each attack beside its positive control."""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provisioning import ca as fleetca
from provisioning import importer, renew
from provisioning import manifest as m
from provisioning.errors import ProvisionError
from tests.unit.provkit import HEADER, ROW_A, Fleet, make_bundles, make_fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path)


def _import(bundle_dir: Path, root: Path) -> importer.Outcome:
    return importer.import_bundle(bundle_dir, root / "etc", root / "ssh", root / "rec.json")


def test_a_secret_linked_to_a_gateway_file_is_not_zeroed(fleet: Fleet, tmp_path: Path) -> None:
    a, _ = make_bundles(fleet, tmp_path / "out")
    box = tmp_path / "box"
    _import(a, box)
    victim = tmp_path / "state.db"
    victim.write_bytes(b"the village's vouchers")
    # After the import the card is edited: the removed config becomes a link to a file
    # the gateway holds; the next boot finds the bundle "already imported".
    (a / m.CONFIG).symlink_to(victim)
    out = _import(a, box)
    assert out.already
    assert victim.read_bytes() == b"the village's vouchers"
    assert not (a / m.CONFIG).is_symlink()  # the link itself is gone from the card


def test_a_secret_folder_linked_to_the_installed_one_is_left_alone(fleet: Fleet,
                                                                   tmp_path: Path) -> None:
    a, _ = make_bundles(fleet, tmp_path / "out")
    box = tmp_path / "box"
    _import(a, box)
    installed = (box / "ssh" / "ssh_host_ed25519_key").read_bytes()
    # ssh/ on the card now points at the gateway's /etc/ssh: "removing the host key
    # from the card" would zero and delete the gateway's own host key.
    for p in sorted((a / "ssh").iterdir()):
        p.unlink()
    (a / "ssh").rmdir()
    (a / "ssh").symlink_to(box / "ssh", target_is_directory=True)
    out = _import(a, box)
    assert (box / "ssh" / "ssh_host_ed25519_key").read_bytes() == installed
    assert m.HOST_KEY in out.secrets_left  # reported, not silently skipped


def test_a_secret_left_on_the_card_is_still_wiped_on_the_next_boot(fleet: Fleet,
                                                                   tmp_path: Path) -> None:
    # Positive control: a power cut between the record and the wipe leaves the secrets;
    # the next run (already imported) removes them.
    a, _ = make_bundles(fleet, tmp_path / "out")
    kept = {rel: (a / rel).read_bytes() for rel in m.SECRETS}
    box = tmp_path / "box"
    _import(a, box)
    for rel, data in kept.items():
        (a / rel).write_bytes(data)
    out = _import(a, box)
    assert out.already and out.secrets_left == ()
    assert not any((a / rel).exists() for rel in m.SECRETS)
    assert os.stat(box / "etc" / "mqtt" / "device.key").st_mode & 0o777 == 0o600


def test_a_huge_file_in_the_bundle_is_refused_before_it_is_read(fleet: Fleet,
                                                                tmp_path: Path) -> None:
    a, b = make_bundles(fleet, tmp_path / "out")
    with (a / m.AUTHORIZED).open("r+b") as fh:  # sparse: 64 MiB that take no disk
        fh.truncate(64 << 20)
    with pytest.raises(ProvisionError, match="larger than"):
        _import(a, tmp_path / "box")
    assert not (tmp_path / "box").exists()
    assert not _import(b, tmp_path / "box2").already  # positive control


def test_a_provisioned_box_refuses_a_bundle_forged_with_another_ca(fleet: Fleet,
                                                                    tmp_path: Path) -> None:
    # Someone with the card in a laptop writes a bundle made with their own CA (their
    # SSH key, their command keys); the box imports a bundle at every boot.
    ours, again = make_bundles(fleet, tmp_path / "out")
    box = tmp_path / "box"
    _import(ours, box)
    keys = (box / "ssh" / "authorized_keys").read_bytes()
    forged, _ = make_bundles(make_fleet(tmp_path / "forger"), tmp_path / "forged-out")
    with pytest.raises(ProvisionError, match="not the fleet CA"):
        _import(forged, box)
    assert (box / "ssh" / "authorized_keys").read_bytes() == keys
    # Positive controls: a new bundle of the same fleet re-provisions the box (another
    # village: the technician says so), and the technician can move it to another CA on
    # purpose with --trust-ca.
    assert importer.import_bundle(again, box / "etc", box / "ssh", box / "rec.json",
                                  replace_site=True).site == "ntb-lembah"
    region2 = make_fleet(tmp_path / "region2")
    _, theirs = make_bundles(region2, tmp_path / "r2-out")
    out = importer.import_bundle(theirs, box / "etc", box / "ssh", box / "rec.json",
                                 trust_ca=region2.ca.cert_path)
    assert not out.already and out.site == "ntb-lembah"


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _slip_in_attacker_key(bundle_dir: Path) -> str:
    """Put an SSH key the fleet never issued into ``bundle_dir``'s authorized_keys and
    recompute its manifest (a checksum anyone can redo); the line written."""
    key = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    line = key + " attacker\n"
    (bundle_dir / m.AUTHORIZED).write_text(line)
    _resign_manifest(bundle_dir)
    return line


def _refused_and_nothing_changed(bundle_dir: Path, box: Path, match: str) -> None:
    """Importing ``bundle_dir`` into ``box`` fails with ``match``; box and card unchanged."""
    before, card = _tree(box), _tree(bundle_dir)
    with pytest.raises(ProvisionError, match=match):
        _import(bundle_dir, box)
    assert _tree(box) == before and _tree(bundle_dir) == card  # the card included


def _resign_manifest(bundle_dir: Path) -> None:
    """What anyone can do with the card in a laptop: the manifest is a checksum, not a
    signature."""
    data = json.loads((bundle_dir / m.NAME).read_text())
    for rel in data["files"]:
        data["files"][rel] = m.sha256_file(bundle_dir / rel)
    (bundle_dir / m.NAME).write_text(json.dumps(data))


def test_a_provisioned_box_refuses_another_sites_bundle_of_the_same_fleet(
        fleet: Fleet, tmp_path: Path) -> None:
    # The audit's attack: another site's key and certificate (revoked: that box was
    # stolen), all signed by the fleet CA, with the attacker's SSH key in authorized_keys,
    # written to the FAT partition of a box provisioned as jabar-sukamaju.
    ours, stolen = make_bundles(fleet, tmp_path / "out")
    box = tmp_path / "box"
    _import(ours, box)
    renew.revoke(fleet.ca.dir, "ntb-lembah")
    attacker = _slip_in_attacker_key(stolen)
    _refused_and_nothing_changed(stolen, box, r"provisioned as site 'jabar-sukamaju'; the "
                                 r"bundle is for site 'ntb-lembah'.*--replace-site")
    # Positive controls: a renewal of the box's own site still imports; the technician
    # re-assigning the box by hand (--replace-site) is obeyed.
    (renewal,) = make_bundles(fleet, tmp_path / "renewal", HEADER + ROW_A, reissue=True)
    out = _import(renewal, box)
    assert not out.already and out.site == "jabar-sukamaju" and out.replaced_site is None
    assert importer.import_bundle(stolen, box / "etc", box / "ssh", box / "rec.json",
                                  replace_site=True).replaced_site == "jabar-sukamaju"
    assert (box / "ssh" / "authorized_keys").read_text() == attacker


def test_an_older_bundle_is_not_replayed_over_a_renewed_one(
        fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_now = fleetca.now
    monkeypatch.setattr(fleetca, "now", lambda: real_now() - datetime.timedelta(days=30))
    (old,) = make_bundles(fleet, tmp_path / "old", HEADER + ROW_A)  # last month's bundle
    monkeypatch.setattr(fleetca, "now", real_now)
    (new,) = make_bundles(fleet, tmp_path / "new", HEADER + ROW_A, reissue=True)  # renewal
    replay = tmp_path / "replay" / "desanet"
    shutil.copytree(old, replay)  # someone kept a copy of last month's card
    box = tmp_path / "box"
    assert not _import(old, box).already
    assert not _import(new, box).already  # positive control: a newer certificate goes in
    _refused_and_nothing_changed(replay, box, r"older than the installed one.*--allow-older")
    # The technician putting it back on purpose:
    out = importer.import_bundle(replay, box / "etc", box / "ssh", box / "rec.json",
                                 allow_older=True)
    assert not out.already and (box / "etc" / m.CERT).read_bytes() == (old / m.CERT).read_bytes()


def test_a_remote_renewal_counts_as_the_installed_certificate(
        fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `cert.install` replaces device.crt in place, the record still names the bundle: a
    # bundle made before that renewal is older than what the box holds.
    real_now = fleetca.now
    monkeypatch.setattr(fleetca, "now", lambda: real_now() - datetime.timedelta(days=30))
    (first,) = make_bundles(fleet, tmp_path / "first", HEADER + ROW_A)
    monkeypatch.setattr(fleetca, "now", lambda: real_now() - datetime.timedelta(days=20))
    (second,) = make_bundles(fleet, tmp_path / "second", HEADER + ROW_A, reissue=True)
    monkeypatch.setattr(fleetca, "now", real_now)
    box = tmp_path / "box"
    _import(first, box)
    renewed = renew.renew(fleet.ca.dir, "jabar-sukamaju", tmp_path / "renewed.crt")[0]
    (box / "etc" / m.CERT).write_bytes(renewed.read_bytes())
    with pytest.raises(ProvisionError, match="older than the installed one"):
        _import(second, box)
    # Positive control: without the remote renewal the second bundle is the newer one.
    (box / "etc" / m.CERT).write_bytes((first / m.CERT).read_bytes())
    assert not _import(second, box).already


def test_an_edited_copy_of_the_boxs_own_bundle_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    # Someone copied the card before first boot (secrets and all), and later writes the
    # copy back with their own SSH key: same site, the installed certificate itself.
    ours, _ = make_bundles(fleet, tmp_path / "out")
    copy = tmp_path / "copy" / "desanet"
    shutil.copytree(ours, copy)
    box = tmp_path / "box"
    assert not _import(ours, box).already
    attacker = _slip_in_attacker_key(copy)
    _refused_and_nothing_changed(copy, box, r"already has \(serial [0-9a-f]+\).*edited copy"
                                 r".*--allow-older")
    # Positive controls: the bundle that provisioned the box is still "already imported";
    # an unedited copy is the same manifest, so also already in; the technician can
    # import the edited one on purpose.
    assert _import(ours, box).already
    (renewal,) = make_bundles(fleet, tmp_path / "renewal", HEADER + ROW_A, reissue=True)
    assert not _import(renewal, box).already  # a renewal (new certificate) goes in
    out = importer.import_bundle(copy, box / "etc", box / "ssh", box / "rec.json",
                                 allow_older=True)
    assert not out.already
    assert (box / "ssh" / "authorized_keys").read_text() == attacker


def test_a_renewal_cut_short_by_a_power_cut_is_finished_at_the_next_boot(
        fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, _ = make_bundles(fleet, tmp_path / "out")
    box = tmp_path / "box"
    _import(ours, box)
    (renewal,) = make_bundles(fleet, tmp_path / "renewal", HEADER + ROW_A, reissue=True)
    record = box / "rec.json"
    real_replace = os.replace

    def power_cut_before_the_record(src: str | os.PathLike[str],
                                    dst: str | os.PathLike[str]) -> None:
        if Path(dst) == record.absolute():
            raise KeyboardInterrupt("power cut")  # nothing after this line runs
        real_replace(src, dst)

    monkeypatch.setattr(importer.os, "replace", power_cut_before_the_record)
    with pytest.raises(KeyboardInterrupt):
        _import(renewal, box)
    monkeypatch.setattr(importer.os, "replace", real_replace)
    # Every file of the renewal is in, the record still names the first bundle.
    assert (box / "etc" / m.CERT).read_bytes() == (renewal / m.CERT).read_bytes()
    assert json.loads(record.read_text())["manifest_sha256"] != m.read(renewal)[1]
    marker = importer.pending_marker(record)
    assert marker.read_text().strip() == m.read(renewal)[1]

    # Control: without the marker the same state looks like an edited copy.
    saved = marker.read_bytes()
    marker.unlink()
    with pytest.raises(ProvisionError, match="edited copy"):
        _import(renewal, box)
    marker.write_bytes(saved)
    # The next boot finishes it, and the marker goes.
    out = _import(renewal, box)
    assert not out.already and out.site == "jabar-sukamaju"
    assert json.loads(record.read_text())["manifest_sha256"] == m.read(renewal)[1]
    assert not marker.exists()
    assert _import(renewal, box).already
