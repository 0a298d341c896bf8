"""Optional HTTPS for the portal and the RFC 8908 captive API.

A region may provision a certificate for a real domain name (``portal.hostname``
then names it). With ``portal.tls_certificate`` and ``portal.tls_key`` set,
the daemon also serves the portal on ``portal.https_port`` and DHCP option 114
announces the https API URL (RFC 8908/8910 want https there; recent Android
ignores an http one). Without them nothing changes.

Every function here reads files and blocks: call it on a thread.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from typing import Any

from gateway.config.schema import Portal

CERT_FIELD = "portal.tls_certificate"
KEY_FIELD = "portal.tls_key"
# Mozilla "intermediate" TLS 1.2 suites (forward secrecy, AEAD only); TLS 1.3 suites
# are OpenSSL's defaults, which are all fine.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"

Problem = tuple[str, Any, str]


class TlsError(ValueError):
    """A certificate or key that cannot serve; ``field`` names the config field."""

    def __init__(self, field: str, found: str, expected: str) -> None:
        super().__init__(f"{field} = {found!r}: expected {expected}")
        self.field, self.found, self.expected = field, found, expected

    def problem(self) -> Problem:
        return (self.field, self.found, self.expected)


def _no_password() -> bytes:
    # Without a callback OpenSSL would ask for a passphrase on the daemon's terminal.
    raise TlsError(KEY_FIELD, "(encrypted)", "an unencrypted PEM private key (the daemon "
                   "starts unattended; decrypt it with `openssl pkey -in KEY -out KEY.plain`)")


def _readable(path: str, field: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise TlsError(field, path, f"a readable PEM file ({exc.strerror or exc})") from None


@dataclass(frozen=True)
class CertificateInfo:
    """What the warnings need from the leaf certificate."""

    names: list[str]  # DNS subjectAltNames, else the subject's common names
    not_after: float  # epoch seconds


def decode_certificate(path: str) -> CertificateInfo:
    """The leaf (first) certificate of a PEM file.

    Raises TlsError naming ``portal.tls_certificate``.
    """
    # cryptography costs the daemon ~7 MB resident: loaded only when a certificate is set
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    _readable(path, CERT_FIELD)
    try:
        with open(path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as exc:
        raise TlsError(CERT_FIELD, path, "a PEM certificate (-----BEGIN CERTIFICATE-----), "
                       f"the leaf first, then its chain ({exc})") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return CertificateInfo(names, cert.not_valid_after_utc.timestamp())


def server_context(portal: Portal) -> ssl.SSLContext:
    """A TLS 1.2+ server context with the configured certificate chain and key.

    Raises TlsError naming the field at fault: unreadable, not PEM, encrypted,
    or a key that does not belong to the certificate.
    """
    cert, key = portal.tls_certificate, portal.tls_key
    if cert is None or key is None:
        raise TlsError(CERT_FIELD if cert is None else KEY_FIELD, "(unset)",
                       "both portal.tls_certificate and portal.tls_key")
    decode_certificate(cert)
    _readable(key, KEY_FIELD)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TlsError(KEY_FIELD, key, f"the private key of {CERT_FIELD} ({cert}); this key "
                           "belongs to another certificate") from None
        raise TlsError(KEY_FIELD, key, "a PEM private key (-----BEGIN PRIVATE KEY-----) "
                       f"({exc})") from None
    return ctx


def name_matches(pattern: str, hostname: str) -> bool:
    """RFC 6125 matching: exact, or one wildcard as the whole left-most label."""
    pattern, hostname = pattern.lower().rstrip("."), hostname.lower().rstrip(".")
    if pattern == hostname:
        return True
    if not pattern.startswith("*."):
        return False
    head, _, rest = hostname.partition(".")
    return bool(head) and rest == pattern[2:] and "." in rest


def warnings_for(portal: Portal, now: float | None = None) -> list[str]:
    """What would make browsers refuse the certificate but is no reason not to serve it:
    ``portal.hostname`` not among its names, or an expired certificate."""
    if portal.tls_certificate is None:
        return []
    info = decode_certificate(portal.tls_certificate)
    found: list[str] = []
    names = info.names
    if not any(name_matches(n, portal.hostname) for n in names):
        found.append(f"{CERT_FIELD} is for {', '.join(names) or 'no DNS name'}, not "
                     f"portal.hostname {portal.hostname!r}: phones will refuse the https portal "
                     "and fall back to http")
    if info.not_after < (time.time() if now is None else now):
        expired = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(info.not_after))
        found.append(f"{CERT_FIELD} expired on {expired}: phones will refuse the https portal")
    return found


def tls_problems(portal: Portal) -> list[Problem]:
    """Apply-time check (files exist, parse and match). What :func:`warnings_for` finds
    is no problem: the listener logs it when it starts."""
    if portal.tls_certificate is None:
        return []
    try:
        server_context(portal)
    except TlsError as exc:
        return [exc.problem()]
    return []
