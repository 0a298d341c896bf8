"""Send one raw command request and print the answer (JSON, or null after the deadline).

Run by tests/integration/test_mqtt_commands.py, inside the lab's WAN namespace
where the region's broker listens: ``mqtt_request.py URL PREFIX SITE PAYLOAD_HEX TIMEOUT``.
The payload is sent as given (unsigned, badly signed, expired ...); the
request/response plumbing is `desanet fleet send`'s own (gateway/fleet/cli.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.fleet.cli import BrokerAccess, exchange
from gateway.telemetry.topics import Topics


def main() -> None:
    url, prefix, site, payload, timeout = sys.argv[1:6]
    answer = exchange(BrokerAccess(url), Topics(prefix, site), bytes.fromhex(payload), float(timeout))
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
