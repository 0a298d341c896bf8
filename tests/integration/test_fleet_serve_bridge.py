"""A district's Mosquitto bridged to the region's broker, `desanet fleet serve` on the
region's (docs/fleet.md, "A region with thousands of gateways").

Gateways (stand-ins with the real payload code) publish to the district broker;
its bridge forwards their status, telemetry and events to the region (QoS 1, a
persistent bridge session) and commands back. The region's broker is stopped
for a while: the district queues, and the consumer still stores every message
exactly once, with the status retained at the region; a Will published by the
district broker reaches the region's consumer.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gateway.telemetry import payloads
from tests.integration.mosquitto import Broker, free_port
from tests.integration.serve_harness import Gateway, Serve, query, traffic, wait_until

pytestmark = [pytest.mark.integration]


def bridge_lines(region: Broker, district: str) -> list[str]:
    """The bridge of docs/fleet.md, pointed at ``region``."""
    return [f"connection {district}", f"address {region.host}:{region.port}",
            "bridge_protocol_version mqttv50", "cleansession false",
            f"remote_clientid bridge-{district}", "restart_timeout 1 2",
            "topic desanet/v1/+/status out 1", "topic desanet/v1/+/telemetry out 1",
            "topic desanet/v1/+/event out 1", "topic desanet/v1/+/cmd/res/# out 1",
            "topic desanet/v1/+/cmd/req in 1"]


def test_a_bridged_district_loses_nothing_across_a_region_outage(mosquitto: Broker,
                                                                 tmp_path: Path) -> None:
    district = Broker(tmp_path / "district", free_port())
    with district.conf.open("a") as fh:
        fh.write("\n".join(bridge_lines(mosquitto, "district-a")) + "\n")
    db = tmp_path / "fleet.db"
    with district:
        serve = Serve(tmp_path, mosquitto, f"sqlite://{db}", "region-serve").start()
        gw = Gateway(district, "desa-x", session=4)
        holder: subprocess.Popen[bytes] | None = None
        try:
            wait_until(lambda: "bridge-district-a" in mosquitto.log.read_text(), 30,
                       "the bridge to connect to the region")
            gw.status()
            traffic(gw, 20)
            wait_until(lambda: query(db, "SELECT COUNT(*) FROM messages")[0][0] == 20, 30,
                       "the first 20 through the bridge")
            mosquitto.stop()  # the region's broker goes away; the district keeps taking
            traffic(gw, 30)
            mosquitto.start()
            wait_until(lambda: query(db, "SELECT COUNT(*) FROM messages")[0][0] == 50, 90,
                       "all 50 after the region's broker came back")
            seqs = [r[0] for r in query(db, "SELECT seq FROM messages ORDER BY seq")]
            assert seqs == list(range(1, 51))
            row = query(db, "SELECT online, session, messages, clients FROM gateways "
                            "WHERE site = 'desa-x'")[0]
            assert row == (1, 4, 50, 50)
            # the status is retained at the region: a new consumer learns it at once
            fresh = Serve(tmp_path, mosquitto, f"sqlite://{tmp_path}/fresh.db", "fresh").start()
            wait_until(lambda: query(tmp_path / "fresh.db", "SELECT online, session FROM "
                                     "gateways") == [(1, 4)], 30, "the retained status")
            fresh.stop()
            # The gateway's Will, published by the district broker, reaches the region.
            will = payloads.encode(payloads.status(gw.who, "3f9a1c07b2de", online=False))
            holder = subprocess.Popen(
                ["mosquitto_sub", "-h", district.host, "-p", str(district.port), "-V", "mqttv5",
                 "-i", "desanet-desa-x-will", "-t", "desanet/v1/desa-x/cmd/req", "-k", "5",
                 "--will-topic", gw.topics.status, "--will-payload", will.decode(),
                 "--will-qos", "1", "--will-retain"], stdout=subprocess.DEVNULL)
            wait_until(lambda: "desanet-desa-x-will" in district.log.read_text(), 30,
                       "the Will's holder to connect")
            holder.kill()  # no DISCONNECT: the district broker publishes the Will
            holder.wait(10)
            wait_until(lambda: query(db, "SELECT online FROM gateways") == [(0,)], 30,
                       "the Will through the bridge")
        finally:
            if holder is not None and holder.poll() is None:
                holder.kill()
                holder.wait(10)
            gw.close()
            serve.stop()
