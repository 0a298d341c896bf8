"""Certificate lifecycle at the CA: renewal for the same key, revocation and the CRL.

Renewal signs a new certificate for the public key of the site's newest
certificate on record: the device's private key never leaves the box, and
the ``cert.install`` command (gateway/telemetry/certinstall.py) accepts only
a certificate for the key it already holds. Revocation marks serials in the
record; ``write_crl`` makes the CRL the broker reads (Mosquitto ``crlfile``).
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from provisioning import ca as fleetca
from provisioning.errors import ProvisionError


def renew(ca_dir: Path, site: str, out: Path, days: int = fleetca.DEVICE_DAYS
          ) -> tuple[Path, x509.Certificate]:
    ca = fleetca.load_ca(ca_dir)
    _, old = fleetca.latest_for(ca_dir, site)
    cert = fleetca.issue_certificate(ca, site, old.public_key(), days)
    fleetca.write_private(out, fleetca.cert_pem(cert), 0o644)
    fleetca.record_issued(ca, [(site, cert)], "renew")
    return out, cert


def revoke(ca_dir: Path, site: str, serial: str | None = None) -> list[str]:
    with fleetca.record_lock(ca_dir):
        return _revoke(ca_dir, site, serial)


def _revoke(ca_dir: Path, site: str, serial: str | None) -> list[str]:
    issued = fleetca.read_record(ca_dir)
    hit = [e for e in issued if e["site"] == site and not e.get("revoked")
           and (serial is None or e["serial"] == serial.lower())]
    if not hit:
        raise ProvisionError(f"no unrevoked certificate of {site!r}"
                             + (f" with serial {serial}" if serial else "") + " on record")
    stamp = int(fleetca.now().timestamp())
    for e in hit:
        e["revoked"] = stamp
    fleetca.write_record(ca_dir, issued)
    return [e["serial"] for e in hit]


def write_crl(ca_dir: Path, out: Path, days: int = 30) -> int:
    ca = fleetca.load_ca(ca_dir)
    start = fleetca.now()
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
               .last_update(start).next_update(start + datetime.timedelta(days=days)))
    revoked = [e for e in fleetca.read_record(ca_dir) if e.get("revoked")]
    for e in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(int(e["serial"], 16))
            .revocation_date(datetime.datetime.fromtimestamp(e["revoked"], datetime.UTC)).build())
    crl = builder.sign(ca.key, hashes.SHA256())
    fleetca.write_private(out, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    return len(revoked)
