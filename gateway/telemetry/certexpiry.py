"""When the gateway's MQTT client certificate ends (pure; no ``cryptography``).

The daemon reports the days left in its telemetry (``ce``) and in `desanet
status`; loading ``cryptography`` (~7 MB resident for the daemon's life) to
read one date is not worth it, so this reads the DER just far enough:
``Certificate -> tbsCertificate -> [version] serial signature issuer validity
-> notAfter`` (RFC 5280 4.1). Anything else in the file is ignored; a file that
is not a certificate raises ValueError.
"""

from __future__ import annotations

import base64
import calendar
import os
import re
import time
from dataclasses import dataclass

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s+([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----")
DAY = 86400
# From here on `desanet diag cert`, `desanet diag mqtt` and `desanet status` all ask for a
# renewal: two months leave the regional team time to renew remotely over a village uplink
# (`provision renew` + cert.install) or to get a new bundle out to the site.
WARN_DAYS = 60


def renewal_due(days: int) -> bool:
    """Whole days left (``days_left``) at which the warning starts; an ended one is < 0."""
    return 0 <= days <= WARN_DAYS


def ends_in(days: int, until: str | None = None) -> tuple[str, str]:
    """How the diag checks and `desanet status` say it (Bahasa Indonesia, English): a
    phrase to put in a sentence, for ``days`` >= 0 whole days left."""
    span = (("kurang dari 1 hari", "less than a day") if days < 1 else
            (f"{days} hari", f"{days} day" if days == 1 else f"{days} days"))
    on = (f" ({until})", f" ({until})") if until else ("", "")
    return (f"sertifikat MQTT berakhir dalam {span[0]}{on[0]}",
            f"the MQTT certificate ends in {span[1]}{on[1]}")


def ended(days: int, until: str | None = None) -> tuple[str, str]:
    """The same for an ended certificate (``days`` < 0: ``-days`` days ago, or on ``until``)."""
    if until:
        return (f"sertifikat MQTT sudah berakhir pada {until}",
                f"the MQTT certificate ended on {until}")
    return (f"sertifikat MQTT sudah berakhir {-days} hari lalu",
            f"the MQTT certificate ended {-days} day{'' if days == -1 else 's'} ago")


def _tlv(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the element at ``at``."""
    if at + 2 > len(der):
        raise ValueError("truncated DER")
    tag, first = der[at], der[at + 1]
    at += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if not 1 <= count <= 4 or at + count > len(der):
            raise ValueError("bad DER length")
        length = int.from_bytes(der[at:at + count], "big")
        at += count
    if at + length > len(der):
        raise ValueError("truncated DER")
    return tag, at, at + length


def _time(tag: int, text: bytes) -> int:
    s = text.decode("ascii")
    if tag == 0x17 and re.fullmatch(r"\d{12}Z", s):  # UTCTime: YY 50-99 are 19YY (RFC 5280)
        year = int(s[:2])
        s = f"{1900 + year if year >= 50 else 2000 + year}{s[2:]}"
    elif tag != 0x18 or not re.fullmatch(r"\d{14}Z", s):
        raise ValueError("not a certificate time")
    parts = (int(s[0:4]), int(s[4:6]), int(s[6:8]), int(s[8:10]), int(s[10:12]), int(s[12:14]))
    return calendar.timegm((*parts, 0, 0, 0))


def not_after_der(der: bytes) -> int:
    """The certificate's notAfter, Unix seconds."""
    tag, start, _ = _tlv(der, 0)
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, at, _ = _tlv(der, start)  # tbsCertificate
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, _, end = _tlv(der, at)
    if tag == 0xA0:  # [0] version
        at = end
    for _ in range(3):  # serial, signature algorithm, issuer
        _, _, at = _tlv(der, at)
    tag, at, _ = _tlv(der, at)  # validity
    if tag != 0x30:
        raise ValueError("not a certificate")
    _, _, at = _tlv(der, at)  # notBefore
    tag, start, end = _tlv(der, at)
    return _time(tag, der[start:end])


def not_after_pem(pem: bytes) -> int:
    """The first certificate's notAfter in a PEM file (the device's own, before any chain)."""
    match = _PEM.search(pem)
    if not match:
        raise ValueError("no PEM certificate")
    return not_after_der(base64.b64decode(b"".join(match.group(1).split())))


@dataclass
class CertExpiry:
    """The notAfter of a file, read again only when the file changes (a renewal)."""

    _stamp: tuple[str, int, int] | None = None
    _value: int | None = None

    def not_after(self, path: str | None) -> int | None:
        """Unix seconds, or None without a file or when it cannot be read."""
        if not path:
            return None
        try:
            st = os.stat(path)
            stamp = (path, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                with open(path, "rb") as fh:
                    self._value = not_after_pem(fh.read(64 * 1024))
                self._stamp = stamp
        except (OSError, ValueError):
            self._stamp, self._value = None, None
        return self._value

    def days_left(self, path: str | None, now: float | None = None) -> int | None:
        """Whole days until the end (negative: ended that many days ago)."""
        end = self.not_after(path)
        if end is None:
            return None
        return int((end - (time.time() if now is None else now)) // DAY)
