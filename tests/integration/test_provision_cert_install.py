"""Certificate renewal end to end through a real Mosquitto (no root needed).

A fleet CA made by provisioning/ signs the broker's certificate and a village's
bundle; the bundle is imported as on first boot, and the gateway's telemetry
link (tests/integration/mqtt_gateway.py: the real TelemetryService and
dispatcher) logs in with the imported device certificate. The operator renews
the certificate for the same key (`provision renew`) and sends it with a
signed ``cert.install``; the gateway answers and reconnects. Then the old
certificate is revoked in the broker's CRL (Mosquitto ``crlfile``) and the
broker restarted: the gateway comes back online, which it can only do with
the renewed certificate; the positive control beside it, a client with the
old certificate, is refused by that broker.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

from gateway.fleet.cli import BrokerAccess, exchange
from gateway.telemetry import commands as c
from gateway.telemetry.topics import Topics
from provisioning import bundle, importer, renew
from provisioning import ca as fleetca
from provisioning.villages import parse_villages
from tests.integration.mosquitto import Broker, Pki, _wait, free_port, have_mosquitto
from tests.integration.test_mqtt_311 import gateway_process, settings, wait
from tests.unit.provkit import HEADER, make_fleet

pytestmark = [pytest.mark.integration]
SITE = "jabar-renew"


def _old_cert_login(broker: Broker, ca: Path, cert: Path, key: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.tls_port),
                           "--cafile", str(ca), "--cert", str(cert), "--key", str(key),
                           "-i", "old-cert-probe", "-q", "1", "-t", f"desanet/v1/{SITE}/probe",
                           "-m", "x"], capture_output=True, text=True, timeout=30, check=False)


def test_cert_install_then_the_gateway_reconnects_with_the_renewed_certificate(
        tmp_path: Path) -> None:
    if not have_mosquitto():
        pytest.skip("needs mosquitto")
    fleet = make_fleet(tmp_path / "fleet")
    server, server_key = fleetca.issue_server(fleet.ca, ["127.0.0.1"])
    pki_dir = tmp_path / "pki"
    fleetca.write_private(pki_dir / "server.crt", fleetca.cert_pem(server), 0o644)
    fleetca.write_private(pki_dir / "server.key", fleetca.key_pem(server_key))
    port, tls_port = free_port(), free_port()
    row = (f"{SITE},Hotspot Renew,Desa Renew,Kab. Uji,WIB,Renew WiFi,,,10mbit/2mbit,"
           f"mqtts://127.0.0.1:{tls_port}\n")
    bundle.build(fleet.ca, parse_villages(HEADER + row), fleet.keys, fleet.authorized,
                 tmp_path / "out")
    box = tmp_path / "box"
    importer.import_bundle(tmp_path / "out" / SITE / "desanet", box / "etc", box / "ssh",
                           box / "provisioned.json")
    mqtt = box / "etc" / "mqtt"
    old_serial = x509.load_pem_x509_certificate((mqtt / "device.crt").read_bytes()).serial_number
    (tmp_path / "old.crt").write_bytes((mqtt / "device.crt").read_bytes())
    pki = Pki(fleet.ca.cert_path, pki_dir / "server.crt", pki_dir / "server.key",
              mqtt / "device.crt", mqtt / "device.key")
    tel = settings(f"mqtts://127.0.0.1:{tls_port}", SITE, fleet.operator,
                   ca_file=str(mqtt / "ca.crt"), cert_file=str(mqtt / "device.crt"),
                   key_file=str(mqtt / "device.key"))
    broker = Broker(tmp_path / "broker", port, tls_port=tls_port, pki=pki)
    with broker, broker.consumer("desanet/v1/#") as consumer, \
            gateway_process(tel, tmp_path / "gw"):
        wait(consumer, SITE, "status", "online with the bundle's certificate",
             match=lambda b: b["online"])
        new_path, new = renew.renew(fleet.ca.dir, SITE, tmp_path / "renewed.crt")
        now = int(time.time())
        payload = c.sign(c.body_json("cert-renew-0001", SITE, "cert.install",
                                     {"cert": new_path.read_text()}, now - 5, now + 600),
                         fleet.operator)
        seen = len(consumer.messages())
        answer = exchange(BrokerAccess(broker.url), Topics("desanet/v1", SITE), payload, 20.0)
        assert answer is not None and answer["ok"] is True, f"{answer}{broker.tail()}"
        assert answer["result"]["serial"] == format(new.serial_number, "x")
        assert (mqtt / "device.crt").read_bytes() == new_path.read_bytes()
        # the gateway reconnects with it at once and keeps it (the trial ends)
        wait(consumer, SITE, "status", "online again after cert.install", after=seen,
             match=lambda b: b["online"])
        _wait(lambda: not (mqtt / "device.crt.prev").exists(), 20, "the trial to be confirmed")

        # revoke the old certificate at the broker: only the renewed one gets in now
        renew.revoke(fleet.ca.dir, SITE, format(old_serial, "x"))
        renew.write_crl(fleet.ca.dir, tmp_path / "crl.pem")
        broker.stop()
        with broker.conf.open("a") as fh:
            fh.write(f"crlfile {tmp_path / 'crl.pem'}\n")
        seen = len(consumer.messages())
        broker.start()
        wait(consumer, SITE, "status", "online after the restart, old certificate revoked",
             after=seen, match=lambda b: b["online"])
        refused = _old_cert_login(broker, fleet.ca.cert_path, tmp_path / "old.crt",
                                  mqtt / "device.key")
        assert refused.returncode != 0, refused.stdout + refused.stderr
        # positive control for that probe: the renewed certificate is let in
        accepted = _old_cert_login(broker, fleet.ca.cert_path, mqtt / "device.crt",
                                   mqtt / "device.key")
        assert accepted.returncode == 0, accepted.stdout + accepted.stderr + broker.tail()
