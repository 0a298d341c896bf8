"""The `mqtt` diagnostic against a real Mosquitto (TLS, client certificates): why a broker
cannot be reached is told, stage and reason, beside a positive control that connects.

No root and no lab: the broker runs on free loopback ports with its own test PKI
(tests/integration/mosquitto.py); the diagnostic reads a config file written here.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.diag import CheckResult, DiagOptions, run_checks
from tests.integration.mosquitto import free_port, make_pki

pytestmark = [pytest.mark.integration]


def config(tmp_path: Path, broker: str, **tls: Path) -> str:
    lines = ["[site]", 'name = "T"', 'village = "T"', "[network]", 'lan_interface = "br-lan"',
             'wan_interface = "eth0"', 'lan_address = "10.42.0.1/24"', "[dhcp]",
             'range_start = "10.42.0.100"', 'range_end = "10.42.0.200"', "[telemetry]",
             "enabled = true", f'broker = "{broker}"', 'site_id = "s1"']
    lines += [f'{key} = "{value}"' for key, value in tls.items()]
    path = tmp_path / "gateway.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def mqtt(path: str, timeout: float = 2.0) -> CheckResult:
    [result] = asyncio.run(run_checks(["mqtt"], path, DiagOptions(timeout=timeout)))
    return result


def device_files(pki: Any) -> dict[str, Path]:
    return {"ca_file": pki.ca, "cert_file": pki.device_cert, "key_file": pki.device_key}


def test_broker_with_the_right_certificates_is_reached(mosquitto: Any, tmp_path: Path) -> None:
    """Positive control: TLS with the device certificate connects; the test certificate's
    one day left is the only concern."""
    r = mqtt(config(tmp_path, f"mqtts://127.0.0.1:{mosquitto.tls_port}", **device_files(mosquitto.pki)))
    assert r.details["stage"] == "connected", r
    assert r.status == "warn" and r.details["cert_days_left"] < 2
    assert "certificate ends in" in r.summary_en and "berakhir dalam" in r.summary_id


def test_plain_listener_is_reached(mosquitto: Any, tmp_path: Path) -> None:
    r = mqtt(config(tmp_path, f"mqtt://127.0.0.1:{mosquitto.port}"))
    assert (r.status, r.details["stage"]) == ("ok", "connected"), r


def test_untrusted_broker_certificate_is_a_tls_failure(mosquitto: Any, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other")  # a CA that did not sign the broker's certificate
    files = {**device_files(mosquitto.pki), "ca_file": other.ca}
    r = mqtt(config(tmp_path, f"mqtts://127.0.0.1:{mosquitto.tls_port}", **files))
    assert r.status == "fail"
    assert (r.details["stage"], r.details["reason"]) == ("tls", "tls-verify"), r
    assert "not trusted" in r.summary_en and "tidak dipercaya" in r.summary_id


def test_device_certificate_the_broker_does_not_know_is_refused(mosquitto: Any,
                                                                 tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other")
    files = {"ca_file": mosquitto.pki.ca, "cert_file": other.device_cert,
             "key_file": other.device_key}
    r = mqtt(config(tmp_path, f"mqtts://127.0.0.1:{mosquitto.tls_port}", **files))
    assert r.status == "fail"
    # TLS 1.3 reports the refusal after the handshake, on the first read: an alert
    # (decrypt error: the issuer has the broker CA's name, not its key) or a closed session
    assert r.details["stage"] in ("tls", "mqtt"), r
    assert r.details["reason"] == "tls-rejected", r
    assert "refused the gateway's certificate" in r.summary_en
    assert "menolak sertifikat" in r.summary_id


def test_nothing_listening_is_refused(tmp_path: Path) -> None:
    r = mqtt(config(tmp_path, f"mqtt://127.0.0.1:{free_port()}"))
    assert r.status == "fail"
    assert (r.details["stage"], r.details["reason"]) == ("tcp", "refused"), r
    assert "refused" in r.summary_en and "ditolak" in r.summary_id


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel completes them) and never speaks."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        yield srv.getsockname()[1]


def test_broker_that_never_answers_times_out_in_the_handshake(tmp_path: Path,
                                                               silent_listener: int,
                                                               mosquitto: Any) -> None:
    r = mqtt(config(tmp_path, f"mqtts://127.0.0.1:{silent_listener}",
                    **device_files(mosquitto.pki)), timeout=1.0)
    assert r.status == "fail"
    assert (r.details["stage"], r.details["reason"]) == ("tls", "timeout"), r
    assert "no answer" in r.summary_en


def test_unreadable_certificate_files_are_named(mosquitto: Any, tmp_path: Path) -> None:
    files = {**device_files(mosquitto.pki), "key_file": tmp_path / "missing.key"}
    r = mqtt(config(tmp_path, f"mqtts://127.0.0.1:{mosquitto.tls_port}", **files))
    assert r.status == "fail"
    assert (r.details["stage"], r.details["reason"]) == ("tls", "files"), r
    assert "cannot be read" in r.summary_en and "tidak bisa dibaca" in r.summary_id
