"""A cert.install trial cut short by kill -9 goes on after the restart, through a real
Mosquitto (no root needed).

A village's bundle from provisioning/ is imported and the gateway's telemetry link
(tests/integration/mqtt_gateway.py: the real TelemetryService and dispatcher, its own
process) logs in with it. The broker's CRL revokes a renewed certificate for the same key;
the operator sends that one with cert.install, and the gateway process dies by SIGKILL
the moment the certificate and its trial are written. Restarted, the gateway tries the
revoked certificate, which the broker refuses, and once the trial's window is over puts the
old one back and comes online. The positive control: a renewed certificate the broker takes,
the same kill, the restarted gateway comes online with it and keeps it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

from gateway.telemetry import certtrial
from gateway.telemetry import commands as c
from provisioning import bundle, importer, renew
from provisioning import ca as fleetca
from provisioning.villages import parse_villages
from tests.integration.mosquitto import Broker, Consumer, Pki, _wait, free_port, have_mosquitto
from tests.integration.test_mqtt_311 import gateway_process, settings, wait
from tests.unit.provkit import HEADER, make_fleet

pytestmark = [pytest.mark.integration]
SITE = "jabar-trial"


def _send(broker: Broker, payload: bytes) -> None:
    """Publish a command without waiting for an answer (the gateway dies before it)."""
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1",
                    "-t", f"desanet/v1/{SITE}/cmd/req", "-m", payload.decode()],
                   check=True, timeout=30)


def _stderr(proc: subprocess.Popen[str]) -> str:
    proc.kill()
    proc.wait(10)
    return proc.stderr.read() if proc.stderr else ""


def test_a_trial_cut_by_kill_9_goes_on_after_the_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not have_mosquitto():
        pytest.skip("needs mosquitto")
    fleet = make_fleet(tmp_path / "fleet")
    server, server_key = fleetca.issue_server(fleet.ca, ["127.0.0.1"])
    pki_dir = tmp_path / "pki"
    fleetca.write_private(pki_dir / "server.crt", fleetca.cert_pem(server), 0o644)
    fleetca.write_private(pki_dir / "server.key", fleetca.key_pem(server_key))
    port, tls_port = free_port(), free_port()
    row = (f"{SITE},Hotspot Uji,Desa Uji,Kab. Uji,WIB,Uji WiFi,,,10mbit/2mbit,"
           f"mqtts://127.0.0.1:{tls_port}\n")
    bundle.build(fleet.ca, parse_villages(HEADER + row), fleet.keys, fleet.authorized,
                 tmp_path / "out")
    box = tmp_path / "box"
    importer.import_bundle(tmp_path / "out" / SITE / "desanet", box / "etc", box / "ssh",
                           box / "provisioned.json")
    mqtt = box / "etc" / "mqtt"
    cert = mqtt / "device.crt"
    old = cert.read_bytes()
    # a renewal the broker refuses: revoked in its CRL from the start
    bad_path, bad = renew.renew(fleet.ca.dir, SITE, tmp_path / "bad.crt")
    renew.revoke(fleet.ca.dir, SITE, format(bad.serial_number, "x"))
    renew.write_crl(fleet.ca.dir, tmp_path / "crl.pem")
    good_path, _ = renew.renew(fleet.ca.dir, SITE, tmp_path / "good.crt")
    assert x509.load_pem_x509_certificate(old).serial_number != bad.serial_number

    pki = Pki(fleet.ca.cert_path, pki_dir / "server.crt", pki_dir / "server.key", cert,
              mqtt / "device.key")
    tel = settings(f"mqtts://127.0.0.1:{tls_port}", SITE, fleet.operator,
                   ca_file=str(mqtt / "ca.crt"), cert_file=str(cert),
                   key_file=str(mqtt / "device.key"))
    broker = Broker(tmp_path / "broker", port, tls_port=tls_port, pki=pki)
    with broker.conf.open("a") as fh:
        fh.write(f"crlfile {tmp_path / 'crl.pem'}\n")
    n = 0

    def install_and_die(consumer: Consumer, pem: Path, window: float) -> None:
        """A gateway that comes online, takes cert.install of ``pem`` and dies in the trial."""
        nonlocal n
        n += 1
        monkeypatch.setenv("DESANET_TEST_KILL_IN_CERT_TRIAL", "1")
        monkeypatch.setenv("DESANET_TEST_CERT_TRIAL", str(window))
        seen = len(consumer.messages())
        with gateway_process(tel, tmp_path / "gw") as proc:
            wait(consumer, SITE, "status", f"online before install {n}", after=seen,
                 match=lambda b: b["online"])
            now = int(time.time())
            _send(broker, c.sign(c.body_json(f"cert-trial-{n:04d}", SITE, "cert.install",
                                             {"cert": pem.read_text()}, now - 5, now + 600),
                                 fleet.operator))
            _wait(lambda: proc.poll() is not None, 30, "the gateway to die in the trial")
        monkeypatch.delenv("DESANET_TEST_KILL_IN_CERT_TRIAL")
        assert cert.read_bytes() == pem.read_bytes()
        assert certtrial.previous_path(cert).read_bytes() == old
        assert certtrial.state_path(cert).exists()

    def restart_until(consumer: Consumer, want: bytes, what: str) -> str:
        """Start the gateway again; wait until it is online and the trial is over."""
        seen = len(consumer.messages())
        with gateway_process(tel, tmp_path / "gw") as proc:
            wait(consumer, SITE, "status", f"online after the restart ({what})", after=seen,
                 match=lambda b: b["online"])
            def done() -> bool:
                return (cert.read_bytes() == want and not certtrial.state_path(cert).exists()
                        and not certtrial.previous_path(cert).exists())
            _wait(done, 30, f"the trial to end ({what})")
            return _stderr(proc)

    with broker, broker.consumer("desanet/v1/#") as consumer:
        install_and_die(consumer, bad_path, 4.0)
        log = restart_until(consumer, old, "revoked certificate")
        assert "the trial goes on after a restart" in log, log
        assert "the previous certificate is back" in log, log + broker.tail()

        # positive control: a certificate the broker takes survives the same kill
        install_and_die(consumer, good_path, 120.0)
        log = restart_until(consumer, good_path.read_bytes(), "good certificate")
        assert "the trial goes on after a restart" in log, log
        assert "connected with the new certificate; kept" in log, log
