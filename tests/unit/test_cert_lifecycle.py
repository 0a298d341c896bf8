"""The device certificate's end: read without cryptography, in telemetry (ce) and in diag."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.diag.certs import classify_cert
from gateway.telemetry import metrics
from gateway.telemetry.certexpiry import DAY, WARN_DAYS, CertExpiry, ended, ends_in, not_after_pem

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)


def make_cert(end: datetime.datetime, version_one: bool = False) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jabar-sukamaju")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(end))
    if not version_one:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("end", [
    datetime.datetime(2028, 12, 1, 10, 30, 5, tzinfo=datetime.UTC),   # UTCTime
    datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=datetime.UTC),  # last UTCTime year
    datetime.datetime(2051, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),      # GeneralizedTime
])
def test_not_after_matches_cryptography(end: datetime.datetime) -> None:
    pem = make_cert(end)
    assert not_after_pem(pem) == int(end.timestamp())
    assert not_after_pem(b"junk before\n" + pem + make_cert(NOW)) == int(end.timestamp())


@pytest.mark.parametrize("bad", [b"", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                                 b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"])
def test_not_a_certificate_raises_value_error(bad: bytes) -> None:
    with pytest.raises(ValueError):
        not_after_pem(bad)


def test_the_expiry_is_read_again_when_the_file_is_renewed(tmp_path: Path) -> None:
    path = tmp_path / "device.crt"
    first, second = NOW + datetime.timedelta(days=10), NOW + datetime.timedelta(days=700)
    path.write_bytes(make_cert(first))
    cache = CertExpiry()
    assert cache.days_left(str(path), NOW.timestamp()) == 10
    path.write_bytes(make_cert(second) + b"\n")  # a new size: a renewal
    os.utime(path, ns=(1, 1))
    assert cache.days_left(str(path), NOW.timestamp()) == 700
    assert cache.days_left(str(tmp_path / "missing"), NOW.timestamp()) is None
    assert cache.days_left(None) is None
    assert cache.days_left(str(path), (NOW + datetime.timedelta(days=701)).timestamp()) == -1


def test_telemetry_reports_the_days_left_as_ce() -> None:
    tel = {"enabled": True, "backlog": 0, "connects": 1, "cert_days": 41}
    got = metrics.sample(metrics.Readings(metrics.SystemReadings(), {"telemetry": tel}))
    assert got["ce"] == 41
    without = metrics.sample(metrics.Readings(metrics.SystemReadings(),
                                              {"telemetry": {**tel, "cert_days": None}}))
    assert "ce" not in without


@pytest.mark.parametrize(("days", "status", "words"), [
    (400, "ok", "400 more days"), (60, "warn", "ends in 60 days"), (1, "warn", "ends in 1 day ("),
    (-3, "fail", "ended on"),
])
def test_the_diag_check_says_how_long_and_what_to_do(days: int, status: str, words: str) -> None:
    end = int(NOW.timestamp()) + days * DAY
    got = classify_cert("cert", "/etc/desanet/mqtt/device.crt", end, NOW.timestamp())
    assert got.status == status and words in got.summary_en and got.summary_id
    assert got.details["days_left"] == days
    if status == "warn":
        assert "cert.install" in got.advice_en and "cert.install" in got.advice_id
    if status == "fail":
        assert "new bundle" in got.advice_en and "bundel baru" in got.advice_id


def test_an_unreadable_certificate_fails_the_check() -> None:
    got = classify_cert("cert", "/x.crt", None, NOW.timestamp(), "No such file or directory")
    assert got.status == "fail" and "No such file" in got.summary_en


def test_desanet_status_says_when_to_renew() -> None:
    from gateway.cli_format import telemetry_status_line

    base = {"enabled": True, "connected": True, "broker": "mqtts://b:8883", "site_id": "s1",
            "session": 2, "backlog": 0, "dropped": {}}
    assert "certificate" not in telemetry_status_line({**base, "cert_days": 400})
    assert "certificate" not in telemetry_status_line({**base, "cert_days": None})
    assert telemetry_status_line({**base, "cert_days": 12}).endswith(
        "the MQTT certificate ends in 12 days: renew it (desanet diag cert)")
    assert "CERTIFICATE ENDED 3 DAYS AGO: install a new bundle" in \
        telemetry_status_line({**base, "cert_days": -3})


@pytest.mark.parametrize("days", [WARN_DAYS + 1, WARN_DAYS, 30, 13, 1, 0, -1, -3])
def test_the_two_diag_checks_and_the_status_line_agree(days: int) -> None:
    """`diag cert`, `diag mqtt` (connected) and `desanet status` warn from the same day on
    and say it in the same words."""
    from gateway.cli_format import telemetry_status_line
    from gateway.diag import probes, reach

    now = NOW.timestamp()
    end = int(now) + days * DAY + DAY // 2  # half a day into the day: whole days agree
    cert = classify_cert("cert", "/etc/desanet/mqtt/device.crt", end, now)
    mqtt = reach.classify_mqtt("mqtt", "mqtts://b:8883", probes.MqttProbe("connected", "", "", 0.1),
                               ((end - now) / DAY, 300.0))
    line = telemetry_status_line({"enabled": True, "connected": True, "broker": "mqtts://b:8883",
                                  "site_id": "s1", "session": 1, "backlog": 0, "dropped": {},
                                  "cert_days": days})
    want = "ok" if days > WARN_DAYS else "warn" if days >= 0 else "fail"
    assert (cert.status, mqtt.status) == (want, want), (cert.summary_en, mqtt.summary_en)
    assert ("certificate" in line.lower()) == (want != "ok"), line
    if want != "ok":
        words = [w.lower() for w in (ends_in(days) if days >= 0 else ended(days))]
        assert words[1] in mqtt.summary_en.lower() and words[0] in mqtt.summary_id.lower()
        assert words[1] in line.lower()
        if days >= 0:  # the cert check adds the date (and says "ended on DATE" once ended)
            assert words[1] in cert.summary_en.lower() and words[0] in cert.summary_id.lower()
