"""A test consumer (run as a process, in a namespace if need be): records every message.

argv: HOST PORT TOPIC CLIENT_ID OUT. MQTT 5 with a persistent session (clean
start off, session kept an hour), QoS 1, reconnecting by itself; each message
is one JSON line in OUT (payload as hex), flushed at once; a line with
"subscribed" marks each SUBACK.
"""

from __future__ import annotations

import json
import sys

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def main() -> None:
    host, port, topic, client_id, out = sys.argv[1:6]
    fh = open(out, "a", buffering=1)  # noqa: SIM115 (open for the life of the process)

    def record(data: dict[str, object]) -> None:
        fh.write(json.dumps(data) + "\n")
        fh.flush()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.reconnect_delay_set(0.1, 0.5)

    def on_connect(c: paho.Client, u: object, flags: object, rc: object, props: object) -> None:
        c.subscribe(topic, qos=1)

    def on_subscribe(c: paho.Client, u: object, mid: int, rcs: object, props: object) -> None:
        record({"subscribed": True})

    def on_message(c: paho.Client, u: object, msg: paho.MQTTMessage) -> None:
        record({"topic": msg.topic, "retain": bool(msg.retain), "payload": msg.payload.hex()})

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect_async(host, int(port), keepalive=30, clean_start=False, properties=props)
    client.loop_forever(retry_first_connection=True)


if __name__ == "__main__":
    main()
