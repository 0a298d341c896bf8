"""`desanet provision import`: install a bundle from the boot partition on first boot.

1. Read the manifest; when the record (``/var/lib/desanet/provisioned.json``)
   names this very manifest, the bundle is already in: only finish removing
   its secrets from the card and report "already imported" (exit 0).
2. Check everything before touching anything: each file against its sha256,
   the config with the gateway's own validation and its site id against the
   manifest's, the device certificate against the bundle's CA (signature,
   dates, CN = site id) and against its key, the SSH host key against its
   ``.pub``, the technicians' keys. Any failure: a message, exit non-zero,
   nothing changed.
2b. A box already provisioned (the record exists) takes only a renewal: a
   bundle of the fleet CA it installed (or ``--trust-ca``), for the site id of
   the record (another site: ``--replace-site``, a technician re-assigning the
   box), whose device certificate is not older than the installed one
   (``--allow-older``: an old or revoked bundle is not replayed over a
   renewed one) and, when it is the installed certificate itself, only the
   bundle the box was provisioned with (an edited copy could swap the SSH or
   command keys; a renewal carries a new certificate). The FAT partition is
   writable from any laptop and a bundle is imported at every boot.
3. Install: every file, and the new record, is first written beside its
   target (mode set before the first byte, fsync); a directory that cannot be
   written (read-only, missing, not a directory) stops the import here, and
   the staged files and the directories made for them are removed: nothing
   changed. Then a marker naming the bundle (``provisioned.json.pending``) and
   the files are renamed into place and the directories synced. A power cut
   before the record is renamed leaves the bundle intact on the card and the
   marker says it was half in: the next boot imports it again, even though
   its certificate is already installed.
4. Rename the record into place, then remove the secrets (config with the
   Wi-Fi passphrase, device key, SSH host key) from the FAT directory.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config.loader import parse_config_text
from gateway.errors import ConfigError
from provisioning import ca as fleetca
from provisioning import manifest as m
from provisioning import sshkeys
from provisioning.errors import ProvisionError

DEFAULT_ETC = Path("/etc/desanet")
DEFAULT_SSH = Path("/data/ssh")  # where the image's sshd reads them (50-desanet.conf)
DEFAULT_RECORD = Path("/var/lib/desanet/provisioned.json")


@dataclass(frozen=True)
class Outcome:
    site: str
    already: bool
    installed: tuple[str, ...]
    secrets_left: tuple[str, ...]  # secrets that could not be removed from the card
    replaced_site: str | None = None  # the site the box was provisioned as, when re-assigned


def targets(files: dict[str, Any], etc: Path, ssh_dir: Path) -> dict[str, tuple[Path, int]]:
    """bundle path -> (installed path, mode)."""
    out: dict[str, tuple[Path, int]] = {}
    for rel in files:
        if rel.startswith("ssh/"):
            out[rel] = (ssh_dir / rel.removeprefix("ssh/"), 0o644)
        else:
            out[rel] = (etc / rel, 0o644)
        if rel in m.SECRETS:
            out[rel] = (out[rel][0], 0o600)
    return out


def _check(data: dict[str, Any], blobs: dict[str, bytes],
           at: datetime.datetime | None = None) -> x509.Certificate:
    site = data["site"]
    try:
        cfg = parse_config_text(blobs[m.CONFIG].decode("utf-8"), f"bundle {m.CONFIG}")
    except UnicodeDecodeError:
        raise ProvisionError(f"{m.CONFIG} is not UTF-8 text") from None
    except ConfigError as exc:
        raise ProvisionError(f"{m.CONFIG} is refused by the gateway's validation:\n  "
                             + "\n  ".join(exc.problems)) from None
    if cfg.telemetry.site_id != site:
        raise ProvisionError(f"{m.CONFIG} is for site {cfg.telemetry.site_id!r}, the manifest "
                             f"for {site!r}")
    try:
        ca_cert = x509.load_pem_x509_certificate(blobs[m.CA])
        cert = x509.load_pem_x509_certificate(blobs[m.CERT])
        key = serialization.load_pem_private_key(blobs[m.KEY], password=None)
    except ValueError as exc:
        raise ProvisionError(f"the MQTT certificate or key cannot be read: {exc}") from None
    fleetca.verify_chain(cert, ca_cert, at)
    if fleetca.site_of(cert) != site:
        raise ProvisionError(f"{m.CERT} is for {fleetca.site_of(cert)!r}, not {site!r}")
    if not fleetca.key_matches(cert, key):
        raise ProvisionError(f"{m.KEY} does not belong to {m.CERT}")
    try:
        host = serialization.load_ssh_private_key(blobs[m.HOST_KEY], password=None)
    except ValueError as exc:
        raise ProvisionError(f"{m.HOST_KEY} is not an OpenSSH private key: {exc}") from None
    pub = host.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH)
    if not isinstance(host, Ed25519PrivateKey) or blobs[m.HOST_PUB].split()[:2] != pub.split():
        raise ProvisionError(f"{m.HOST_PUB} does not belong to {m.HOST_KEY} (or not ed25519)")
    problems = sshkeys.check_authorized_keys(blobs[m.AUTHORIZED].decode("utf-8", "replace"))
    if problems:
        raise ProvisionError(f"{m.AUTHORIZED}: " + "; ".join(problems))
    return cert


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stage(target: Path, data: bytes, mode: int) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".new", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _make_dirs(dirs: set[Path], made: list[Path]) -> None:
    """Create ``dirs`` and their missing parents; each one made is appended to ``made``
    (parents first), so that a failure can remove exactly those."""
    for d in sorted(dirs):
        missing: list[Path] = []
        while not d.exists() and d != d.parent:  # a file in the way: mkdir below says so
            missing.append(d)
            d = d.parent
        for new in reversed(missing):
            new.mkdir()
            made.append(new)


def _stage_all(plan: list[tuple[Path, bytes, int]]) -> list[tuple[Path, Path]]:
    """Each (target, data, mode) written beside its target: (temporary, target) pairs.
    On any failure nothing is left: neither a staged file nor a directory made for one."""
    made: list[Path] = []
    staged: list[tuple[Path, Path]] = []
    current: Path | None = None
    try:
        _make_dirs({target.parent for target, _, _ in plan}, made)
        for current, data, mode in plan:
            staged.append((_stage(current, data, mode), current))
    except BaseException as exc:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(exc, OSError):
            where = current.parent if current is not None else exc.filename or "a directory"
            raise ProvisionError(f"cannot write {where}: {exc.strerror or exc}; nothing was "
                                 "installed and the bundle stays on the card") from None
        raise
    return staged


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # an unreadable record: import again (it is rewritten whole)
    return data if isinstance(data, dict) else None


def _remove_secrets(bundle: Path, secrets: list[str]) -> list[str]:
    """Overwrite and remove each secret; those that could not be removed."""
    left = []
    for rel in secrets:
        path = bundle / rel
        # Never write through a link: a card (or a directory given on the command line)
        # whose secret or its folder links elsewhere would have root zero that file
        # (the installed host key, the database). A link itself is only removed.
        if path.parent.resolve() != bundle.resolve() / Path(rel).parent:
            left.append(rel)
            continue
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_symlink() or not path.is_file():  # a link, a fifo: nothing to overwrite
            try:
                path.unlink()
            except OSError:
                left.append(rel)
            continue
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
            with os.fdopen(fd, "r+b") as fh:  # best effort: flash may keep the old blocks
                fh.write(b"\0" * os.fstat(fd).st_size)
                fh.flush()
                os.fsync(fh.fileno())
            path.unlink()
        except OSError:
            left.append(rel)
    for parent in {(bundle / rel).parent for rel in secrets}:
        with contextlib.suppress(OSError):
            _fsync_dir(parent)
    return left


def _pinned(blobs: dict[str, bytes], trust_ca: Path) -> None:
    """Refuse a bundle whose CA is not the one this image was built to trust."""
    try:
        trusted = x509.load_pem_x509_certificates(trust_ca.read_bytes())
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"--trust-ca {trust_ca}: cannot read it: {exc}") from None
    if x509.load_pem_x509_certificate(blobs[m.CA]) not in trusted:
        raise ProvisionError(f"{m.CA} is not the fleet CA this gateway trusts ({trust_ca}); "
                             "was the bundle made with another region's CA?")


def _clock_floor(blobs: dict[str, bytes]) -> datetime.datetime | None:
    """A gateway without a battery-backed clock (every Raspberry Pi) boots offline at the
    image's build time, which is before the bundle's certificate was issued: the
    certificate would look "not yet valid". Its start, signed by the CA in the bundle, is
    a floor for the real time. Returns it when the clock is behind it, else None."""
    try:
        cert = x509.load_pem_x509_certificate(blobs[m.CERT])
        ca_cert = x509.load_pem_x509_certificate(blobs[m.CA])
    except ValueError:
        return None  # _check says what is wrong with them
    floor = cert.not_valid_before_utc
    if fleetca.now() >= floor:
        return None
    fleetca.verify_chain(cert, ca_cert, at=floor)  # a certificate the CA really signed
    return floor


def _installed_start(etc: Path, previous: dict[str, Any]) -> datetime.datetime | None:
    """When the box's current device certificate starts: the installed file (a remote
    ``cert.install`` renews it in place), else the record's note of it."""
    try:
        return x509.load_pem_x509_certificate((etc / m.CERT).read_bytes()).not_valid_before_utc
    except (OSError, ValueError):
        pass
    start = previous.get("cert_not_before")
    return datetime.datetime.fromtimestamp(start, datetime.UTC) if isinstance(start, int) else None


def _installed_serial(etc: Path, previous: dict[str, Any]) -> int | None:
    """The serial of the box's current device certificate (file first, as above)."""
    try:
        return int(x509.load_pem_x509_certificate((etc / m.CERT).read_bytes()).serial_number)
    except (OSError, ValueError):
        pass
    serial = previous.get("cert_serial")
    try:
        return int(serial, 16) if isinstance(serial, str) else None
    except ValueError:
        return None


def pending_marker(record: Path) -> Path:
    """Names the bundle an import was installing: there while its files are renamed."""
    return record.with_name(record.name + ".pending")


def _renewal_only(previous: dict[str, Any], site: str, cert: x509.Certificate, etc: Path,
                  replace_site: bool, allow_older: bool, resuming: bool = False) -> str | None:
    """Refuse a bundle that is not a renewal of this box; the site it replaces, if any.

    The boot partition is FAT, writable from any laptop, and a bundle is imported at
    every boot: any bundle of the fleet CA (another village's, one whose certificate was
    revoked) would install its SSH and command keys. A box provisioned as one site takes
    another site's bundle only with ``replace_site`` (a technician re-assigning it by
    hand), and never an older certificate of its own site without ``allow_older``. The
    installed certificate itself comes only in the bundle that brought it (``resuming``:
    an import a power cut interrupted); in any other bundle it is an edited copy."""
    was = previous.get("site")
    if was != site:
        if not replace_site:
            raise ProvisionError(
                f"this gateway is provisioned as site {was!r}; the bundle is for site {site!r}. "
                "Nothing was changed. A technician re-assigning the box to another village "
                "runs `desanet provision import BUNDLE_DIR --replace-site` by hand")
        return str(was)
    start = _installed_start(etc, previous)
    if start is not None and cert.not_valid_before_utc < start and not allow_older:
        raise ProvisionError(
            f"the bundle's certificate for {site!r} (serial {cert.serial_number:x}, from "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M}) is older than the installed one "
            f"(from {start:%Y-%m-%d %H:%M} UTC): an old bundle over a renewed one. Nothing was "
            "changed. To put an older bundle back on purpose: --allow-older")
    serial = cert.serial_number
    if serial == _installed_serial(etc, previous) and not resuming and not allow_older:
        raise ProvisionError(
            f"the bundle carries the certificate this gateway already has (serial {serial:x}) "
            "but is not the bundle it was provisioned with: an edited copy, whose SSH or "
            "command keys may not be yours. Nothing was changed. A renewal brings a new "
            "certificate; to import this bundle on purpose: --allow-older")
    return None


def _read_marker(marker: Path) -> str | None:
    try:
        return marker.read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return None


def import_bundle(bundle: Path, etc: Path = DEFAULT_ETC, ssh_dir: Path = DEFAULT_SSH,
                  record: Path = DEFAULT_RECORD, trust_ca: Path | None = None,
                  raise_clock: Callable[[datetime.datetime], None] | None = None, *,
                  replace_site: bool = False, allow_older: bool = False) -> Outcome:
    etc, ssh_dir, record = etc.absolute(), ssh_dir.absolute(), record.absolute()
    data, digest = m.read(bundle)
    previous = read_record(record)
    if previous and previous.get("manifest_sha256") == digest:
        pending_marker(record).unlink(missing_ok=True)  # a power cut right after the record
        left = _remove_secrets(bundle, list(data["secrets"]))
        return Outcome(data["site"], True, tuple(previous.get("installed", ())), tuple(left))
    blobs = m.check_files(bundle, data)
    if trust_ca is None and previous is not None and (etc / m.CA).is_file():
        # Already provisioned: the boot partition is FAT, writable from any laptop, and a
        # bundle is imported at every boot. A bundle made with another CA (anyone's own)
        # would install its SSH keys and command keys; only the fleet's CA may re-provision
        # (its key signs the device certificate). Another CA: --trust-ca, by hand.
        trust_ca = etc / m.CA
    if trust_ca is not None:
        _pinned(blobs, trust_ca)
    floor = _clock_floor(blobs) if raise_clock is not None else None
    cert = _check(data, blobs, floor)
    marker = pending_marker(record)
    resuming = _read_marker(marker) == digest
    replaced = None if previous is None else _renewal_only(
        previous, data["site"], cert, etc, replace_site, allow_older, resuming)
    if raise_clock is not None and floor is not None:
        raise_clock(floor)  # only for a bundle that passed every check; never backwards
    where = targets(blobs, etc, ssh_dir)
    plan = [(target, blobs[rel], mode) for rel, (target, mode) in sorted(where.items())]
    installed = [str(target) for target, _, _ in plan]
    entry = {"format": 1, "site": data["site"], "manifest_sha256": digest,
             "created": data.get("created"), "imported": int(time.time()),
             "cert_serial": format(cert.serial_number, "x"),
             "cert_not_before": int(cert.not_valid_before_utc.timestamp()),
             "cert_not_after": int(cert.not_valid_after_utc.timestamp()),
             "ssh_fingerprint": sshkeys.fingerprint(blobs[m.HOST_PUB].decode("ascii", "replace")),
             "installed": installed}
    plan.append((marker, (digest + "\n").encode(), 0o644))
    plan.append((record, (json.dumps(entry, indent=1, sort_keys=True) + "\n").encode(), 0o644))
    *files, (pending, _), (rec, _) = _stage_all(plan)
    os.replace(pending, marker)  # first: from here a power cut leaves a half import
    _fsync_dir(marker.parent)
    for tmp, target in files:
        os.replace(tmp, target)
    for parent in sorted({target.parent for _, target in files}):
        _fsync_dir(parent)
    os.replace(rec, record)  # last: a power cut before it imports the bundle again
    marker.unlink()
    _fsync_dir(record.parent)
    left = _remove_secrets(bundle, list(data["secrets"]))
    return Outcome(data["site"], False, tuple(installed), tuple(left), replaced)
