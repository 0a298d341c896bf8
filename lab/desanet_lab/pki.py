"""The lab's own certificate authority for its MQTT broker (``cryptography``, EC P-256).

A region runs its broker with a CA of its own: the broker's server
certificate, one client certificate per gateway whose CN is its site id (the
broker's ACL confines each to ``desanet/v1/<CN>/#``), and the operators'
certificates. The lab makes the same, per lab, under ``<state dir>/mqtt/pki``:
``ca.crt``/``ca.key``, ``server.*``, ``<site>.crt``/``.key`` per device and
``operator.*``. Private keys are written 0600 by a write-then-rename. A lab
lives for hours; everything is valid for a year, well past the 60 days before
expiry at which `desanet diag` and `status` start to warn (certexpiry.WARN_DAYS).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import LabError

VALID_FOR = datetime.timedelta(days=365)
_STEM = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def write_private(path: Path, data: bytes) -> None:
    """A private key file: mode 0600 from its first byte, replaced whole."""
    _write(path, data, 0o600)


def _save(where: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    pair = Pair(where / f"{stem}.crt", where / f"{stem}.key")
    _write(pair.key, key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return pair


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(where: Path, cn: str) -> Pair:
    """A new self-signed CA in ``where`` (``ca.crt``, ``ca.key``)."""
    where.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return _save(where, "ca", cert, key)


def issue(ca: Pair, stem: str, cn: str, server_names: tuple[str, ...] = ()) -> Pair:
    """A certificate signed by ``ca``, saved beside it as ``<stem>.crt``/``.key``.

    With ``server_names`` (host names and addresses) it is a server certificate,
    else a client certificate whose CN is the MQTT user name (Mosquitto's
    ``use_identity_as_username``). Raises LabError on a bad stem or an unreadable CA.
    """
    if not _STEM.match(stem):
        raise LabError(f"certificate name {stem!r} is not valid: 1-63 lower-case letters, digits, "
                       "'.', '-' or '_'; use e.g. \"desa-b\"")
    try:
        ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read the lab CA {ca.cert}: {exc}; is the lab up?") from exc
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + VALID_FOR)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if server_names:
        sans: list[x509.GeneralName] = []
        for name in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        builder = (builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False))
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                                        critical=False)
    return _save(ca.cert.parent, stem, builder.sign(ca_key, hashes.SHA256()), key)
