"""Red-team pass on `desanet provision import` (Step 10): a bundle directory whose
secrets, or their folder, are links to files of the gateway. Removing the secrets from
the card must never write through a link. Each attack beside its positive control."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from provisioning import importer
from provisioning import manifest as m
from provisioning.errors import ProvisionError
from tests.unit.provkit import Fleet, make_bundles, make_fleet


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
    # Positive controls: a new bundle of the same fleet re-provisions the box, and the
    # technician can move it to another CA on purpose with --trust-ca.
    assert _import(again, box).site == "ntb-lembah"
    region2 = make_fleet(tmp_path / "region2")
    theirs, _ = make_bundles(region2, tmp_path / "r2-out")
    out = importer.import_bundle(theirs, box / "etc", box / "ssh", box / "rec.json",
                                 trust_ca=region2.ca.cert_path)
    assert not out.already
