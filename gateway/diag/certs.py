"""`desanet diag cert`: how long until the gateway's MQTT client certificate ends.

An ended certificate cuts the gateway off from the region's broker (no reports,
no remote commands, so no remote renewal either), so the warning starts two
months ahead: time for the regional team to renew it remotely (`desanet
provision renew` + the ``cert.install`` command) or to send a new bundle. The
threshold and the words are gateway/telemetry/certexpiry.py's, shared with the
``mqtt`` check and `desanet status`. Read without the daemon and without
``cryptography``.
"""

from __future__ import annotations

import datetime
import time

from gateway.diag.context import DiagContext
from gateway.diag.result import CheckResult, verdict
from gateway.diag.threads import in_thread
from gateway.telemetry.certexpiry import DAY, ended, ends_in, not_after_pem, renewal_due

NEW_BUNDLE = ("Pasang bundel baru dari tim kabupaten (desanet provision build-bundle, lalu "
              "desanet provision import); perintah jarak jauh tidak sampai lagi.",
              "Install a new bundle from the regional team (desanet provision build-bundle, "
              "then desanet provision import); remote commands no longer reach it.")
RENEW = ("Minta tim kabupaten memperbarui sertifikat dari jarak jauh (desanet provision renew, "
         "lalu perintah cert.install), atau memasang bundel baru.",
         "Ask the regional team to renew the certificate remotely (desanet provision renew, "
         "then the cert.install command), or to install a new bundle.")


def classify_cert(name: str, path: str, not_after: int | None, now: float,
                  error: str = "") -> CheckResult:
    if not_after is None:
        return verdict(name, "fail",
                       (f"Sertifikat MQTT {path} tidak bisa dibaca: {error}.",
                        f"The MQTT certificate {path} cannot be read: {error}."),
                       ("Pasang lagi bundel provisioning perangkat ini, atau minta sertifikat "
                        "baru dari tim kabupaten.",
                        "Install this device's provisioning bundle again, or ask the regional "
                        "team for a new certificate."), path=path)
    days = int((not_after - now) // DAY)
    until = datetime.datetime.fromtimestamp(not_after, datetime.UTC).strftime("%Y-%m-%d")
    details = {"path": path, "not_after": not_after, "days_left": days}
    if days < 0:
        words = ended(days, until)
        return verdict(name, "fail",
                       (f"{cap(words[0])}: gateway tidak bisa melapor ke broker.",
                        f"{cap(words[1])}: the gateway cannot report to the broker."),
                       NEW_BUNDLE, **details)
    if renewal_due(days):
        words = ends_in(days, until)
        return verdict(name, "warn", (f"{cap(words[0])}.", f"{cap(words[1])}."), RENEW,
                       **details)
    return verdict(name, "ok",
                   (f"Sertifikat MQTT berlaku {days} hari lagi (sampai {until}).",
                    f"The MQTT certificate is valid for {days} more days (until {until})."),
                   **details)


def cap(phrase: str) -> str:
    """A phrase of certexpiry.ends_in / ended as the start of a sentence."""
    return phrase[:1].upper() + phrase[1:]


def _read(path: str) -> tuple[int | None, str]:
    try:
        with open(path, "rb") as fh:
            return not_after_pem(fh.read(64 * 1024)), ""
    except OSError as exc:
        return None, exc.strerror or str(exc)
    except ValueError as exc:
        return None, str(exc)


async def check_cert(ctx: DiagContext) -> CheckResult:
    assert ctx.config is not None
    tel = ctx.config.telemetry
    if not tel.enabled or not tel.cert_file:
        return verdict("cert", "skip",
                       ("Dilewati: telemetri tanpa sertifikat klien (telemetry.cert_file).",
                        "Skipped: telemetry has no client certificate (telemetry.cert_file)."))
    not_after, error = await in_thread(_read, tel.cert_file)
    return classify_cert("cert", tel.cert_file, not_after, time.time(), error)
