"""TLS session resumption on reconnect against a real Mosquitto (gateway/telemetry/tls.py).

The daemon's Negotiator keeps the SSL context and the TLS session of its last
connection: a reconnect resumes it (no certificates on the wire) and the broker
still knows the device by its certificate (its CN is the user name the ACL
sees); a certificate file renewed on disk makes a new context and a full
handshake.
"""

from __future__ import annotations

import os
import re

import pytest

from gateway.telemetry.mqtt import LinkSettings, MqttLink, Negotiator
from tests.integration.conftest import wait_until
from tests.integration.mosquitto import Broker

pytestmark = [pytest.mark.integration]


def settings(broker: Broker, client_id: str) -> LinkSettings:
    assert broker.pki is not None and broker.tls_port is not None
    return LinkSettings(host=broker.host, port=broker.tls_port, client_id=client_id, keepalive=60,
                        will_topic="desanet/v1/s1/status", will_payload=b"{}", tls=True,
                        ca_file=str(broker.pki.ca), cert_file=str(broker.pki.device_cert),
                        key_file=str(broker.pki.device_key), protocol="5")


async def test_a_reconnect_resumes_the_tls_session_and_keeps_the_device_identity(
        mosquitto: Broker) -> None:
    negotiate = Negotiator(timeout=10)
    s = settings(mosquitto, "desanet-resume")
    resumed = []
    for _ in range(3):
        link = await negotiate(s, lambda mid, ok: None, lambda reason: None)
        assert isinstance(link, MqttLink)
        resumed.append(link.resumed)
        await link.close(will=False)
    assert resumed == [False, True, True]  # the first is a full handshake
    # every connection, resumed or not, is the device of the certificate (CN "s1")
    def logins() -> list[str]:
        return re.findall(r"as desanet-resume \(.*u'([^']*)'\)", mosquitto.log.read_text())
    # the broker may write its log line a moment after the client saw CONNACK
    wait_until(lambda: len(logins()) >= 3, 10, "three logins in the broker's log")
    assert logins() == ["s1", "s1", "s1"], mosquitto.tail()

    assert mosquitto.pki is not None
    os.utime(mosquitto.pki.device_cert)  # renewed on disk: a new context, a full handshake
    link = await negotiate(s, lambda mid, ok: None, lambda reason: None)
    assert isinstance(link, MqttLink) and link.resumed is False
    await link.close(will=False)
