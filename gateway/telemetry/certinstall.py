"""The ``cert.install`` command: a renewed MQTT client certificate, installed remotely.

The regional team signs a new certificate for the key the gateway already
holds (`desanet provision renew`; the private key never travels) and sends it
with ``desanet fleet send SITE cert.install cert=@new.crt``. The gateway
installs it only when it:

- is one PEM certificate (``malformed``, field ``args.cert``, otherwise);
- is for the key in ``telemetry.key_file`` (refused, ``key_mismatch``);
- is signed by a CA in ``telemetry.ca_file`` (refused, ``untrusted``);
- names this gateway (CN = ``telemetry.site_id``; refused, ``other_site``);
- is valid now, within the command clock skew (refused, ``not_valid_now``).

Then the old file is kept as ``<cert_file>.prev`` and the new one replaces
``cert_file`` (write, fsync, rename); the answer goes out and the gateway
reconnects with it (the TLS context is re-made when the file changes,
gateway/telemetry/tls.py). A **trial** protects the link: unless a connection
with the new certificate is up within the trial window, the previous file
is put back and the next attempt uses it, so a certificate the broker
refuses (a CA the broker does not know, a revoked serial) cannot cut the
gateway off for good. The trial is kept on disk and taken up again after a
restart (gateway/telemetry/certtrial.py). ``cryptography`` loads here, at the first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from gateway.config.telemetry import Telemetry
from gateway.control.schema import Request, RequestInvalid
from gateway.errors import Refused
from gateway.telemetry import certtrial

MAX_PEM = 16 * 1024
TRIAL = 600.0  # s: a connection with the new certificate must be up by then


class CertInstallArgs(Request):
    cert: Annotated[str, Field(min_length=1, max_length=MAX_PEM, examples=["-----BEGIN ..."])]


@dataclass(frozen=True)
class Installed:
    trial: certtrial.Trial
    result: dict[str, Any]


def _malformed(why: str) -> RequestInvalid:
    return RequestInvalid([f"field cert: {why}; send the PEM file `desanet provision renew` "
                           "wrote (cert=@new.crt)"], ["cert"], None)


def check(pem: str, tel: Telemetry, now: float, skew: float) -> Any:
    """The new certificate, checked (see the module doc); raises RequestInvalid or Refused.
    Blocks (reads the key and CA files)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    if not (tel.cert_file and tel.key_file and tel.ca_file):
        raise Refused("no_client_cert", "this gateway has no telemetry.cert_file, key_file and "
                      "ca_file to renew; install a provisioning bundle instead")
    if pem.count("-----BEGIN CERTIFICATE-----") != 1:
        raise _malformed("not one PEM certificate")
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise _malformed("not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(Path(tel.key_file).read_bytes(), password=None)
        cas = x509.load_pem_x509_certificates(Path(tel.ca_file).read_bytes())
    except (OSError, ValueError) as exc:
        raise Refused("files", f"cannot read telemetry.key_file or ca_file: {exc}") from None

    def spki(k: Any) -> bytes:
        return bytes(k.public_bytes(serialization.Encoding.DER,
                                    serialization.PublicFormat.SubjectPublicKeyInfo))
    if spki(cert.public_key()) != spki(key.public_key()):
        raise Refused("key_mismatch", "the certificate is not for this gateway's key "
                      "(renew it with `desanet provision renew`, which keeps the key)")
    signed = False
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            signed = True
            break
        except (InvalidSignature, ValueError, TypeError):
            continue
    if not signed:
        raise Refused("untrusted", "the certificate is not signed by a CA in telemetry.ca_file")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or names[0].value != tel.site_id:
        raise Refused("other_site", f"the certificate names {names[0].value if names else '?'!r}, "
                      f"not this gateway ({tel.site_id})")
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    if not start - skew <= now <= end:
        raise Refused("not_valid_now", "the certificate is not valid now (check the gateway's "
                      "clock: `desanet diag clock`)")
    return cert


def install(pem: str, tel: Telemetry, now: float, skew: float, *, id: str, window: float,
            mono: float, boot: str) -> Installed:
    """Check, keep the old file as ``.prev``, record the trial, replace the file
    (gateway/telemetry/certtrial.py); blocks (run in a thread)."""
    cert = check(pem, tel, now, skew)
    assert tel.cert_file is not None
    trial = certtrial.install(Path(tel.cert_file), pem if pem.endswith("\n") else pem + "\n",
                              id, window, mono, boot)
    end = cert.not_valid_after_utc
    return Installed(trial, {
        "serial": format(cert.serial_number, "x"), "not_after": int(end.timestamp()),
        "days_left": int((end.timestamp() - now) // 86400),
        "trial": "confirmed once connected with it, else the previous one returns"})
