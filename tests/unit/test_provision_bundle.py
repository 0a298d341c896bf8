"""Fleet CA, bundles and their first-boot import (provisioning/)."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.config.loader import parse_config_text
from provisioning import bundle, importer, renew, sshkeys
from provisioning import ca as fleetca
from provisioning import manifest as m
from provisioning.errors import ProvisionError, RowsInvalid
from provisioning.siteconfig import render_config
from provisioning.villages import parse_villages
from tests.unit.provkit import CSV, HEADER, ROW_A, ROW_B, Fleet, have, make_bundles, make_fleet

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "provisioning"


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path)


def test_the_ca_key_is_private_and_the_ca_refuses_to_be_made_twice(fleet: Fleet) -> None:
    assert os.stat(fleet.ca.dir / "ca.key").st_mode & 0o777 == 0o600
    cert = fleet.ca.cert
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > datetime.timedelta(days=19 * 365)
    with pytest.raises(ProvisionError, match="already holds a CA"):
        fleetca.init_ca(fleet.ca.dir, "again")
    assert fleetca.load_ca(fleet.ca.dir).cert == cert


def test_a_device_certificate_names_the_site_and_chains_to_the_ca(fleet: Fleet, tmp_path: Path) -> None:
    key = fleetca.new_device_key()
    cert = fleetca.issue_certificate(fleet.ca, "jabar-sukamaju", key.public_key())
    assert fleetca.site_of(cert) == "jabar-sukamaju"
    assert fleetca.key_matches(cert, key)
    fleetca.verify_chain(cert, fleet.ca.cert)  # positive control for the refusals below
    other = fleetca.init_ca(tmp_path / "other", "another CA")
    with pytest.raises(ProvisionError, match="not by this CA"):
        fleetca.verify_chain(cert, other.cert)
    forged = fleetca.issue_certificate(  # same CA name, other key: the signature decides
        fleetca.Ca(other.dir, other.cert, other.key), "jabar-sukamaju", key.public_key())
    with pytest.raises(ProvisionError):
        fleetca.verify_chain(forged, fleet.ca.cert)
    later = fleetca.now() + datetime.timedelta(days=3 * 365)
    with pytest.raises(ProvisionError, match="not now"):
        fleetca.verify_chain(cert, fleet.ca.cert, later)


def test_openssl_agrees_with_the_chain(fleet: Fleet, tmp_path: Path) -> None:
    if not have("openssl"):
        pytest.skip("openssl not installed")
    cert = fleetca.issue_certificate(fleet.ca, "s1", fleetca.new_device_key().public_key())
    (tmp_path / "d.crt").write_bytes(fleetca.cert_pem(cert))
    done = subprocess.run(["openssl", "verify", "-purpose", "sslclient", "-CAfile",
                           str(fleet.ca.cert_path), str(tmp_path / "d.crt")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_generated_gateway_toml_matches_the_golden_file_and_validates() -> None:
    (v,) = parse_villages(HEADER + 'jabar-sukamaju,Hotspot Desa Sukamaju,Desa Sukamaju,'
                          '"Kab. Garut, Jawa Barat",WIB,"Sukamaju ""Net""",rahasia\\123,'
                          'harian=2mbit/512kbit sekolah=10mbit/2mbit,20mbit/5mbit,'
                          'mqtts://mqtt.example.go.id:8883\n')
    text = render_config(v, ["ed25519:oTGk9NsPtQuU+7rspgO9JW6YxyVuOISoU06MIRGPtJg="])
    golden = GOLDEN / "gateway.toml"
    if os.environ.get("DESANET_UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")
    cfg = parse_config_text(text)
    assert cfg.site.wifi_ssid == 'Sukamaju "Net"' and cfg.site.wifi_password == "rahasia\\123"
    assert cfg.telemetry.site_id == "jabar-sukamaju" and cfg.telemetry.cert_file
    assert set(cfg.shaping.plans) == {"harian", "sekolah"}


def test_a_row_the_gateway_would_refuse_is_reported_by_row_and_column(fleet: Fleet,
                                                                      tmp_path: Path) -> None:
    text = HEADER + "x-1,N,V,R,WIB,S1,,big=50mbit/1mbit,5mbit/1mbit,mqtts://b.example:8883\n"
    with pytest.raises(RowsInvalid) as info:
        make_bundles(fleet, tmp_path / "out", CSV + text.split("\n", 1)[1])
    assert info.value.problems[0].startswith("row 4, column plans: the generated gateway.toml "
                                             "is refused: shaping: plan 'big'")
    assert not (tmp_path / "out").exists()
    assert fleetca.read_record(fleet.ca.dir) == []  # no certificate was recorded either


def test_bundles_hold_the_contract_files_with_a_true_manifest(fleet: Fleet, tmp_path: Path) -> None:
    a, b = make_bundles(fleet, tmp_path / "out")
    data, _ = m.read(a)
    assert data["site"] == "jabar-sukamaju" and data["format"] == 1
    assert set(data["files"]) == {*m.REQUIRED, "commands/op.pub"}
    assert m.check_files(a, data)[m.CONFIG].startswith(b"# desanet gateway configuration")
    for rel in m.SECRETS:
        assert os.stat(a / rel).st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate((a / m.CERT).read_bytes())
    key = serialization.load_pem_private_key((a / m.KEY).read_bytes(), None)
    assert fleetca.site_of(cert) == "jabar-sukamaju" and fleetca.key_matches(cert, key)
    fleetca.verify_chain(cert, x509.load_pem_x509_certificate((a / m.CA).read_bytes()))
    assert (a / "commands/op.pub").read_text().strip() == fleet.keys[0].text
    assert (a / m.AUTHORIZED).read_text() == fleet.authorized
    assert {e["site"] for e in fleetca.read_record(fleet.ca.dir)} == {"jabar-sukamaju", "ntb-lembah"}
    assert (tmp_path / "out" / "cards.html").exists() and (a.parent / "card.html").exists()
    assert (a / m.HOST_KEY).read_bytes() != (b / m.HOST_KEY).read_bytes()


def test_an_existing_out_directory_is_never_mixed_into(fleet: Fleet, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old").write_text("x")
    with pytest.raises(ProvisionError, match="not an empty directory"):
        make_bundles(fleet, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["old"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out.")]  # temp dir gone


def test_a_second_batch_of_the_same_sites_is_refused_unless_reissued(
        fleet: Fleet, tmp_path: Path) -> None:
    make_bundles(fleet, tmp_path / "first")
    record = (fleet.ca.dir / "issued.json").read_bytes()
    with pytest.raises(ProvisionError, match=r"2 site\(s\) already hold a valid certificate "
                       r"of this CA: jabar-sukamaju, ntb-lembah .*--reissue"):
        make_bundles(fleet, tmp_path / "again")
    assert not (tmp_path / "again").exists()
    assert (fleet.ca.dir / "issued.json").read_bytes() == record
    # Positive controls: a new site goes through; a revoked or ended certificate is no
    # identity any more; --reissue says so on purpose.
    new_row = ROW_B.replace("ntb-lembah", "ntb-baru").replace("Lembah WiFi", "Baru WiFi")
    make_bundles(fleet, tmp_path / "new-site", HEADER + new_row)
    renew.revoke(fleet.ca.dir, "ntb-lembah")
    make_bundles(fleet, tmp_path / "after-revoke", HEADER + ROW_B)
    issued = fleetca.read_record(fleet.ca.dir)
    for e in issued:
        if e["site"] == "ntb-lembah":
            e["not_after"] = 1  # ended long ago
    fleetca.write_record(fleet.ca.dir, issued)
    make_bundles(fleet, tmp_path / "after-end", HEADER + ROW_B)
    assert len(make_bundles(fleet, tmp_path / "reissued", reissue=True)) == 2
    sites = [e["site"] for e in fleetca.read_record(fleet.ca.dir)]
    assert sites.count("jabar-sukamaju") == 2 and sites.count("ntb-lembah") == 4


def test_two_runs_at_once_cannot_both_issue(fleet: Fleet, tmp_path: Path) -> None:
    # The check before the work can pass for two runs; the one under the record's lock
    # refuses the later: nothing of it is recorded or written.
    (a,) = make_bundles(fleet, tmp_path / "first", HEADER + ROW_A)
    cert = x509.load_pem_x509_certificate((a / m.CERT).read_bytes())
    with pytest.raises(ProvisionError, match="jabar-sukamaju"):
        fleetca.record_issued(fleet.ca, [("jabar-sukamaju", cert)], "new", first_only=True)
    assert len(fleetca.read_record(fleet.ca.dir)) == 1
    fleetca.record_issued(fleet.ca, [("jabar-sukamaju", cert)], "new")  # control: no check
    assert len(fleetca.read_record(fleet.ca.dir)) == 2


def test_the_host_key_fingerprint_is_what_ssh_keygen_prints(fleet: Fleet, tmp_path: Path) -> None:
    (a, _) = make_bundles(fleet, tmp_path / "out")
    mine = bundle.host_key_fingerprint(a)
    if have("ssh-keygen"):
        done = subprocess.run(["ssh-keygen", "-l", "-f", str(a / m.HOST_PUB)],
                              capture_output=True, text=True, check=True)
        assert done.stdout.split()[1] == mine
        derived = subprocess.run(["ssh-keygen", "-y", "-f", str(a / m.HOST_KEY)],
                                 capture_output=True, text=True, check=True)
        assert derived.stdout.split()[:2] == (a / m.HOST_PUB).read_text().split()[:2]
    assert mine.startswith("SHA256:") and "=" not in mine
    assert mine in (a.parent / "card.html").read_text()


def _import(bundle_dir: Path, root: Path) -> importer.Outcome:
    return importer.import_bundle(bundle_dir, root / "etc", root / "ssh", root / "rec.json")


def test_import_installs_records_removes_secrets_and_is_idempotent(fleet: Fleet,
                                                                  tmp_path: Path) -> None:
    (a, _) = make_bundles(fleet, tmp_path / "out")
    toml = (a / m.CONFIG).read_bytes()
    first = _import(a, tmp_path / "box")
    box = tmp_path / "box"
    assert not first.already and first.site == "jabar-sukamaju"
    assert (box / "etc/gateway.toml").read_bytes() == toml
    assert os.stat(box / "etc/mqtt/device.key").st_mode & 0o777 == 0o600
    assert os.stat(box / "ssh/ssh_host_ed25519_key").st_mode & 0o777 == 0o600
    assert (box / "ssh/authorized_keys").read_text() == fleet.authorized
    for rel in m.SECRETS:
        assert not (a / rel).exists()
    assert (a / m.CERT).exists() and (a / m.NAME).exists()  # public parts stay
    rec = json.loads((box / "rec.json").read_text())
    assert rec["site"] == "jabar-sukamaju" and rec["ssh_fingerprint"].startswith("SHA256:")
    before = {p: p.stat().st_mtime_ns for p in box.rglob("*") if p.is_file()}
    again = _import(a, box)
    assert again.already
    assert {p: p.stat().st_mtime_ns for p in box.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("tamper", ["edit", "add_key", "swap_cert", "drop"])
def test_a_tampered_bundle_is_refused_and_changes_nothing(fleet: Fleet, tmp_path: Path,
                                                          tamper: str) -> None:
    a, b = make_bundles(fleet, tmp_path / "out")
    if tamper == "edit":
        with (a / m.CONFIG).open("a") as fh:
            fh.write('\n# and more\n')
    elif tamper == "add_key":
        (a / "commands" / "attacker.pub").write_text(fleet.keys[0].text + "\n")
    elif tamper == "swap_cert":  # another site's certificate, manifest updated to match
        (a / m.CERT).write_bytes((b / m.CERT).read_bytes())
        data = json.loads((a / m.NAME).read_text())
        data["files"][m.CERT] = m.sha256_file(a / m.CERT)
        (a / m.NAME).write_text(json.dumps(data))
    else:
        (a / m.KEY).unlink()
    with pytest.raises(ProvisionError):
        _import(a, tmp_path / "box")
    assert not (tmp_path / "box").exists()
    assert all((b / rel).exists() for rel in m.SECRETS)
    # positive control: the untouched bundle beside it imports
    assert not _import(b, tmp_path / "box2").already


@pytest.mark.parametrize("blocked", ["ssh_dir", "record_dir", "read_only"])
def test_a_directory_that_cannot_be_written_leaves_nothing_behind(
        fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocked: str) -> None:
    (a, _) = make_bundles(fleet, tmp_path / "out")
    card = {p: p.read_bytes() for p in a.rglob("*") if p.is_file()}
    box, wall = tmp_path / "box", tmp_path / "a-file"
    wall.write_text("not a directory\n")
    etc, ssh, rec = box / "etc", box / "ssh", box / "rec.json"
    if blocked == "ssh_dir":
        ssh = wall / "ssh"
    elif blocked == "record_dir":  # the last file staged: every other one is staged by then
        rec = wall / "rec.json"
    else:  # a read-only root: the ssh directory refuses new files
        real = importer._stage

        def stage(target: Path, data: bytes, mode: int) -> Path:
            if target.parent == ssh:
                raise OSError(30, "Read-only file system", str(target.parent))
            return real(target, data, mode)

        monkeypatch.setattr(importer, "_stage", stage)
    where = {"ssh_dir": wall / "ssh", "record_dir": wall, "read_only": ssh}[blocked]
    with pytest.raises(ProvisionError, match=rf"cannot write {re.escape(str(where))}: .*"
                       "nothing was installed"):
        importer.import_bundle(a, etc, ssh, rec)
    assert not box.exists()  # no staged file, no empty etc/commands or etc/mqtt
    assert wall.read_text() == "not a directory\n"
    assert {p: p.read_bytes() for p in a.rglob("*") if p.is_file()} == card
    monkeypatch.undo()
    # positive control: the same bundle into directories that can be written
    assert not importer.import_bundle(a, box / "etc", box / "ssh", box / "rec.json").already
    assert (box / "ssh" / "authorized_keys").read_text() == fleet.authorized


def test_the_default_ssh_directory_is_the_one_the_images_sshd_reads() -> None:
    from provisioning import cli as pcli

    conf = (Path(__file__).resolve().parents[2] / "images/rootfs/etc/ssh/sshd_config.d"
            / "50-desanet.conf").read_text().split()
    host_key = conf[conf.index("HostKey") + 1]
    keys = conf[conf.index("AuthorizedKeysFile") + 1]
    assert host_key == f"{importer.DEFAULT_SSH}/ssh_host_ed25519_key"
    assert keys == f"{importer.DEFAULT_SSH}/authorized_keys"
    defaults = [str(p) for p in (importer.DEFAULT_ETC, importer.DEFAULT_SSH,
                                 importer.DEFAULT_RECORD)]
    assert defaults == [pcli.ETC, pcli.SSH_DIR, pcli.RECORD]


def test_the_import_record_of_another_bundle_does_not_skip_a_new_one(fleet: Fleet,
                                                                    tmp_path: Path) -> None:
    (a, b) = make_bundles(fleet, tmp_path / "out")
    _import(a, tmp_path / "box")
    box = tmp_path / "box"
    # a box re-assigned to another village, by a technician (--replace-site)
    second = importer.import_bundle(b, box / "etc", box / "ssh", box / "rec.json",
                                    replace_site=True)
    assert not second.already and second.site == "ntb-lembah"
    assert second.replaced_site == "jabar-sukamaju"


def test_renew_keeps_the_key_and_records_the_serial(fleet: Fleet, tmp_path: Path) -> None:
    (a, _) = make_bundles(fleet, tmp_path / "out")
    old = x509.load_pem_x509_certificate((a / m.CERT).read_bytes())
    path, new = renew.renew(fleet.ca.dir, "jabar-sukamaju", tmp_path / "new.crt")
    assert new.public_key() == old.public_key() and new.serial_number != old.serial_number
    assert x509.load_pem_x509_certificate(path.read_bytes()) == new
    reasons = [(e["site"], e["reason"]) for e in fleetca.read_record(fleet.ca.dir)]
    assert ("jabar-sukamaju", "renew") in reasons
    with pytest.raises(ProvisionError, match="no certificate for site"):
        renew.renew(fleet.ca.dir, "nowhere", tmp_path / "x.crt")


def test_revocation_lands_in_the_crl(fleet: Fleet, tmp_path: Path) -> None:
    make_bundles(fleet, tmp_path / "out")
    (serial,) = renew.revoke(fleet.ca.dir, "ntb-lembah")
    assert renew.write_crl(fleet.ca.dir, tmp_path / "crl.pem") == 1
    crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert crl.is_signature_valid(fleet.ca.cert.public_key())
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    keep = next(e for e in fleetca.read_record(fleet.ca.dir) if e["site"] == "jabar-sukamaju")
    assert crl.get_revoked_certificate_by_serial_number(int(keep["serial"], 16)) is None


def test_authorized_keys_must_be_keys(fleet: Fleet) -> None:
    key = fleet.authorized.split()[1]
    assert sshkeys.check_authorized_keys("# techs\n\nssh-ed25519 AAAA broken\n")
    assert sshkeys.check_authorized_keys("teknisi@garut\n")
    assert not sshkeys.check_authorized_keys("")
    assert not sshkeys.check_authorized_keys(fleet.authorized)
    assert not sshkeys.check_authorized_keys(
        f'from="10.0.0.0/8",command="echo hi there" ssh-ed25519 {key} teknisi\n')


def test_a_pinned_ca_refuses_another_regions_bundle(fleet: Fleet, tmp_path: Path) -> None:
    other = make_fleet(tmp_path / "other")
    (theirs, _) = make_bundles(other, tmp_path / "their-out")
    with pytest.raises(ProvisionError, match="not the fleet CA this gateway trusts"):
        importer.import_bundle(theirs, tmp_path / "box/etc", tmp_path / "box/ssh",
                               tmp_path / "box/rec.json", trust_ca=fleet.ca.cert_path)
    assert not (tmp_path / "box").exists()
    (ours, _) = make_bundles(fleet, tmp_path / "out")  # positive control: our own region's
    assert not importer.import_bundle(ours, tmp_path / "box/etc", tmp_path / "box/ssh",
                                      tmp_path / "box/rec.json", trust_ca=fleet.ca.cert_path).already


def test_a_clock_behind_the_bundle_is_raised_to_its_certificate(
        fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Pi has no clock battery: offline, its first boot runs at the image's build time,
    before the bundle was made. Without --raise-clock the import refuses the certificate as
    not yet valid; with it, the clock goes forward to the certificate's start, never back."""
    (a, b) = make_bundles(fleet, tmp_path / "out")
    real_now = fleetca.now
    clock = {"now": real_now() - datetime.timedelta(days=2)}  # the image's build time
    monkeypatch.setattr(fleetca, "now", lambda: clock["now"])
    with pytest.raises(ProvisionError, match="not now"):
        _import(a, tmp_path / "box")  # control: without the floor the bundle is refused
    assert not (tmp_path / "box/etc/gateway.toml").exists()
    raised: list[datetime.datetime] = []

    def set_clock(when: datetime.datetime) -> None:
        raised.append(when)
        clock["now"] = when

    out = importer.import_bundle(a, tmp_path / "box/etc", tmp_path / "box/ssh",
                                 tmp_path / "box/rec.json", raise_clock=set_clock)
    assert not out.already and (tmp_path / "box/etc/gateway.toml").exists()
    cert = x509.load_pem_x509_certificate((tmp_path / "box/etc" / m.CERT).read_bytes())
    assert raised == [cert.not_valid_before_utc]
    # A clock already past the certificate's start is never touched (nor moved back).
    clock["now"] = real_now()
    raised.clear()
    importer.import_bundle(b, tmp_path / "box2/etc", tmp_path / "box2/ssh",
                           tmp_path / "box2/rec.json", raise_clock=set_clock)
    assert raised == []


def test_a_certificate_another_ca_signed_does_not_move_the_clock(
        fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (a, _) = make_bundles(fleet, tmp_path / "out")
    blobs = {name: (a / name).read_bytes() for name in (m.CERT, m.CA)}
    monkeypatch.setattr(fleetca, "now", lambda: datetime.datetime(2020, 1, 1,
                                                                  tzinfo=datetime.UTC))
    # Positive control: the bundle's own CA signed it, so its start is a floor.
    assert importer._clock_floor(blobs) is not None
    blobs[m.CA] = make_fleet(tmp_path / "other").ca.cert.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(ProvisionError, match=r"issued by|signature"):
        importer._clock_floor(blobs)


def test_a_refused_bundle_does_not_move_the_clock(
        fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (a, _) = make_bundles(fleet, tmp_path / "out")
    monkeypatch.setattr(fleetca, "now", lambda: datetime.datetime(2020, 1, 1,
                                                                  tzinfo=datetime.UTC))
    monkeypatch.setattr(importer, "_check", lambda *args: (_ for _ in ()).throw(
        ProvisionError("refused by a later check")))
    raised: list[datetime.datetime] = []
    with pytest.raises(ProvisionError, match="later check"):
        importer.import_bundle(a, tmp_path / "box/etc", tmp_path / "box/ssh",
                               tmp_path / "box/rec.json", raise_clock=raised.append)
    assert raised == []
