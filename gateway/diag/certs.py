"""`desanet diag cert`: how long until the gateway's MQTT client certificate ends.

An ended certificate cuts the gateway off from the region's broker (no reports,
no remote commands, so no remote renewal either), so the warning starts two
months ahead: time for the regional team to renew it remotely
(`desanet provision renew` + the ``cert.install`` command) or to send a new
bundle. Read without the daemon and without ``cryptography``
(gateway/telemetry/certexpiry.py).
"""

from __future__ import annotations

import datetime
import time

from gateway.diag.context import DiagContext
from gateway.diag.result import CheckResult, verdict
from gateway.diag.threads import in_thread
from gateway.telemetry.certexpiry import DAY, WARN_DAYS, not_after_pem

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
        return verdict(name, "fail",
                       (f"Sertifikat MQTT sudah berakhir pada {until}: gateway tidak bisa "
                        "melapor ke broker.",
                        f"The MQTT certificate ended on {until}: the gateway cannot report to "
                        "the broker."),
                       ("Pasang bundel baru dari tim kabupaten (desanet provision build-bundle, "
                        "lalu desanet provision import); perintah jarak jauh tidak sampai lagi.",
                        "Install a new bundle from the regional team (desanet provision "
                        "build-bundle, then desanet provision import); remote commands no longer "
                        "reach it."), **details)
    if days <= WARN_DAYS:
        return verdict(name, "warn",
                       (f"Sertifikat MQTT berakhir dalam {days} hari ({until}).",
                        f"The MQTT certificate ends in {days} days ({until})."), RENEW, **details)
    return verdict(name, "ok",
                   (f"Sertifikat MQTT berlaku {days} hari lagi (sampai {until}).",
                    f"The MQTT certificate is valid for {days} more days (until {until})."),
                   **details)


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
