"""The fleet CA: a self-signed CA and the gateways' MQTT client certificates.

A region's CA directory (``desanet provision ca init --dir CA``) holds
``ca.crt`` (given to every gateway and to the broker's ``cafile``), ``ca.key``
(mode 0600: whoever holds it can make gateways; keep it offline),
``issued.json`` (the record of every certificate issued: serial, site,
validity, key fingerprint) and ``issued/<serial>.crt`` (each certificate).

A device certificate's subject CN is the site id: the broker maps it to the
MQTT user name (Mosquitto ``use_identity_as_username``) and its ACL confines
the gateway to ``desanet/v1/<site id>/#`` (docs/mqtt.md). Keys are EC P-256,
which Mosquitto's OpenSSL and paho take everywhere.

Lifetimes: the CA 20 years (replacing it means touching every gateway);
a device certificate 2 years, renewed remotely long before
(``desanet provision renew`` + the ``cert.install`` command).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning.errors import ProvisionError

CA_DAYS = 20 * 365
DEVICE_DAYS = 2 * 365
BACKDATE = datetime.timedelta(minutes=10)  # a device clock slightly behind still accepts it
RECORD = "issued.json"


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` with ``mode`` from its first byte, replaced whole (rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_fingerprint(key: Any) -> str:
    """sha256 hex of the public key's SubjectPublicKeyInfo: names a key across renewals."""
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


@dataclass(frozen=True)
class Ca:
    dir: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_path(self) -> Path:
        return self.dir / "ca.crt"


def init_ca(where: Path, name: str, days: int = CA_DAYS) -> Ca:
    """A new CA in ``where``; refuses to overwrite one (that would orphan every gateway)."""
    if (where / "ca.key").exists() or (where / "ca.crt").exists():
        raise ProvisionError(f"{where} already holds a CA (ca.crt / ca.key); a new CA would "
                             "cut off every gateway it signed. Use another --dir")
    key = ec.generate_private_key(ec.SECP256R1())
    start = now()
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start - BACKDATE)
            .not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    where.mkdir(parents=True, exist_ok=True)
    os.chmod(where, 0o700)
    write_private(where / "ca.key", key_pem(key))
    write_private(where / "ca.crt", cert_pem(cert), 0o644)
    write_private(where / RECORD, b'{"format": 1, "issued": []}\n', 0o644)
    return Ca(where, cert, key)


def load_ca(where: Path) -> Ca:
    try:
        cert = x509.load_pem_x509_certificate((where / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((where / "ca.key").read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ProvisionError(f"no CA in {where} ({exc.filename} missing); make one with "
                             f"`desanet provision ca init --dir {where}`") from None
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"cannot read the CA in {where}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or \
            public_fingerprint(key.public_key()) != public_fingerprint(cert.public_key()):
        raise ProvisionError(f"{where}/ca.key does not belong to {where}/ca.crt")
    return Ca(where, cert, key)


def new_device_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def issue_certificate(ca: Ca, site_id: str, public_key: Any,
                      days: int = DEVICE_DAYS) -> x509.Certificate:
    """A client certificate for ``public_key`` with CN = ``site_id`` (not yet recorded:
    :func:`record_issued` once it is delivered)."""
    start = now()
    end = min(start + datetime.timedelta(days=days), ca.cert.not_valid_after_utc)
    cert = (x509.CertificateBuilder().subject_name(_name(site_id, "desanet gateway"))
            .issuer_name(ca.cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - BACKDATE).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=True, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                           critical=False)
            .sign(ca.key, hashes.SHA256()))
    return cert


@contextlib.contextmanager
def record_lock(ca_dir: Path) -> Iterator[None]:
    """Held while the record is read and rewritten: two teams' runs on one CA lose nothing."""
    try:
        fd = os.open(ca_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ProvisionError(f"cannot use the CA directory {ca_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_record(ca_dir: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads((ca_dir / RECORD).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"cannot read {ca_dir / RECORD}: {exc}") from exc
    issued = data.get("issued") if isinstance(data, dict) else None
    if not isinstance(issued, list):
        raise ProvisionError(f"{ca_dir / RECORD}: not a provisioning record (no \"issued\" list)")
    return issued


def write_record(ca_dir: Path, issued: list[dict[str, Any]]) -> None:
    text = json.dumps({"format": 1, "issued": issued}, indent=1, sort_keys=True) + "\n"
    write_private(ca_dir / RECORD, text.encode(), 0o644)


def issue_server(ca: Ca, names: list[str], days: int = DEVICE_DAYS
                 ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The broker's server certificate (names: host names or addresses), so gateways that
    trust only the fleet CA (telemetry.ca_file) accept the broker."""
    if not names:
        raise ProvisionError("a broker certificate needs at least one --name (its host name)")
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    key = new_device_key()
    start = now()
    cert = (x509.CertificateBuilder().subject_name(_name(names[0], "desanet broker"))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - BACKDATE)
            .not_valid_after(min(start + datetime.timedelta(days=days), ca.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                           critical=False)
            .sign(ca.key, hashes.SHA256()))
    return cert, key


def valid_serials(ca_dir: Path, sites: list[str]) -> dict[str, list[str]]:
    """``site -> serials`` of the certificates on record for ``sites`` that are neither
    revoked nor ended: each is a working identity at the broker."""
    wanted, stamp = set(sites), now().timestamp()
    held: dict[str, list[str]] = {}
    for e in read_record(ca_dir):
        if e.get("site") in wanted and not e.get("revoked") and e.get("not_after", 0) > stamp:
            held.setdefault(e["site"], []).append(e["serial"])
    return held


def refuse_second_identity(ca_dir: Path, sites: list[str]) -> None:
    """Raise ProvisionError naming the sites that already hold a valid certificate."""
    held = valid_serials(ca_dir, sites)
    if not held:
        return
    names = [s for s in sites if s in held]
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    raise ProvisionError(
        f"{len(names)} site(s) already hold a valid certificate of this CA: {shown} "
        f"(`desanet provision list --ca {ca_dir}`). Nothing was written: a second bundle would "
        "give a site two working identities. To replace them on purpose (a replaced box, a "
        "lost card) add --reissue, then revoke the old certificates")


def record_issued(ca: Ca, certs: list[tuple[str, x509.Certificate]], reason: str, *,
                  first_only: bool = False) -> None:
    """Add ``(site, certificate)`` pairs to the CA's record (one rewrite of issued.json).
    ``first_only``: refuse (ProvisionError, nothing recorded) if a site already holds a
    valid certificate; checked under the lock, so two runs at once cannot both issue."""
    with record_lock(ca.dir):
        if first_only:
            refuse_second_identity(ca.dir, [site for site, _ in certs])
        _append(ca, certs, reason)


def _append(ca: Ca, certs: list[tuple[str, x509.Certificate]], reason: str) -> None:
    issued = read_record(ca.dir)
    for site_id, cert in certs:
        serial = format(cert.serial_number, "x")
        write_private(ca.dir / "issued" / f"{serial}.crt", cert_pem(cert), 0o644)
        issued.append({"serial": serial, "site": site_id, "reason": reason,
                       "issued": int(now().timestamp()),
                       "not_before": int(cert.not_valid_before_utc.timestamp()),
                       "not_after": int(cert.not_valid_after_utc.timestamp()),
                       "key_sha256": public_fingerprint(cert.public_key()),
                       "revoked": None})
    write_record(ca.dir, issued)


def latest_for(ca_dir: Path, site_id: str) -> tuple[dict[str, Any], x509.Certificate]:
    """The newest unrevoked certificate issued to ``site_id`` and its record entry."""
    entries = [e for e in read_record(ca_dir) if e.get("site") == site_id and not e.get("revoked")]
    if not entries:
        raise ProvisionError(f"no certificate for site {site_id!r} in {ca_dir / RECORD}; "
                             "was it provisioned with this CA? (`desanet provision list --ca`)")
    entry = max(entries, key=lambda e: (e["issued"], e["not_after"]))
    try:
        cert = x509.load_pem_x509_certificate(
            (ca_dir / "issued" / f"{entry['serial']}.crt").read_bytes())
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"cannot read the certificate {entry['serial']}: {exc}") from exc
    return entry, cert


def site_of(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def verify_chain(cert: x509.Certificate, ca_cert: x509.Certificate,
                 at: datetime.datetime | None = None) -> None:
    """Raise ProvisionError unless ``cert`` is signed by ``ca_cert`` (a CA certificate) and
    both are valid at ``at`` (default now). One level: the fleet CA signs devices directly."""
    when = at or now()
    try:
        constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ProvisionError("the CA certificate is not a CA (no basicConstraints CA:TRUE)")
    if cert.issuer != ca_cert.subject:
        raise ProvisionError(f"the certificate was issued by {cert.issuer.rfc4514_string()}, "
                             f"not by this CA ({ca_cert.subject.rfc4514_string()})")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise ProvisionError(f"the certificate's signature does not verify with this CA: "
                             f"{exc or 'bad signature'}") from None
    for what, c in (("the CA certificate", ca_cert), ("the certificate", cert)):
        if not c.not_valid_before_utc <= when <= c.not_valid_after_utc:
            raise ProvisionError(f"{what} is valid from {c.not_valid_before_utc:%Y-%m-%d} to "
                                 f"{c.not_valid_after_utc:%Y-%m-%d}, not now ({when:%Y-%m-%d})")


def key_matches(cert: x509.Certificate, key: Any) -> bool:
    return public_fingerprint(cert.public_key()) == public_fingerprint(key.public_key())
