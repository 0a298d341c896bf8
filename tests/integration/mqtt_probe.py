"""An MQTT 5 client driven line by line (run as a process, in a namespace if need be).

argv: HOST PORT CA CERT KEY OUT. TLS with the given client certificate. Each
line on stdin is a JSON command: ``{"sub": [filter, ...]}`` or ``{"pub": topic,
"payload": text}`` (QoS 1, not retained). Everything that happens is one JSON
line in OUT, flushed at once: ``{"connected": reason}``, ``{"suback": [reason,
...], "filters": [...]}``, ``{"puback": reason, "topic": topic}``, ``{"topic":
topic, "payload": text}`` for each message received.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


def main() -> None:
    host, port, ca, cert, key, out = sys.argv[1:7]
    fh = open(out, "a", buffering=1)  # noqa: SIM115 (open for the life of the process)
    pending: dict[int, Any] = {}  # mid -> what was sent, until its ack
    early: dict[int, tuple[dict[str, Any], str]] = {}  # acks that came before their mid was noted
    # Only the two dicts are under this lock, never a paho call: paho runs on_publish
    # with its own message lock held, and publish() takes that lock, so holding ours
    # across publish() while an earlier PUBACK's callback waits for it would deadlock.
    lock = threading.Lock()

    def record(data: dict[str, Any]) -> None:
        fh.write(json.dumps(data) + "\n")
        fh.flush()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{cert.rsplit('/', 1)[-1]}",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
    client.on_connect = lambda c, u, f, rc, p: record({"connected": str(rc)})

    def acked(mid: int, data: dict[str, Any], key: str) -> None:
        with lock:
            if mid not in pending:
                early[mid] = (data, key)
                return
            sent = pending.pop(mid)
        record({**data, key: sent})

    def note(mid: int, sent: Any) -> None:
        with lock:
            ack = early.pop(mid, None)
            if ack is None:
                pending[mid] = sent
                return
        record({**ack[0], ack[1]: sent})

    client.on_subscribe = lambda c, u, mid, rcs, p: acked(
        mid, {"suback": [str(r) for r in rcs]}, "filters")
    client.on_publish = lambda c, u, mid, rc, p: acked(mid, {"puback": str(rc)}, "topic")
    client.on_message = lambda c, u, m: record(
        {"topic": m.topic, "payload": m.payload.decode(errors="replace")})
    client.connect(host, int(port), keepalive=30)
    client.loop_start()
    for line in sys.stdin:
        cmd = json.loads(line)
        if "sub" in cmd:
            _, mid = client.subscribe([(f, 1) for f in cmd["sub"]])
            note(mid, cmd["sub"])
        elif "pub" in cmd:
            note(client.publish(cmd["pub"], cmd["payload"].encode(), qos=1).mid, cmd["pub"])
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
