"""Helpers for test_portal_bypass.py: probes run inside lab namespaces, and
packet counters in the WAN namespace that show whether anything got out.

Probes are small Python programs run with this interpreter through
``ip netns exec`` (see :func:`probe`); they print one JSON value so a test
asserts on what the client saw, not on exit codes.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from desanet_lab import Lab, run_in

# --- what a client (or an attacker on the LAN) can try ----------------------

PROBE = r'''
import json, socket, struct, sys

def udp(addr, port, timeout=2.0):
    timeout = float(timeout)
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(b"bypass", (addr, int(port)))
        data, src = s.recvfrom(512)
        return {"reply": data.decode(errors="replace"), "from": src[0]}
    except socket.timeout:
        return {"reply": None, "error": "timeout"}
    except OSError as exc:
        return {"reply": None, "error": type(exc).__name__ + ": " + str(exc)}

def tcp(addr, port, timeout=2.0):
    timeout = float(timeout)
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((addr, int(port)))
    except ConnectionRefusedError:
        return {"result": "refused"}
    except socket.timeout:
        return {"result": "timeout"}
    except OSError as exc:
        return {"result": "error", "error": type(exc).__name__ + ": " + str(exc)}
    s.settimeout(0.5)
    try:
        greeting = s.recv(100).decode(errors="replace")
    except OSError:
        greeting = ""
    return {"result": "connected", "greeting": greeting}

def _query(name, qid=0x4242):
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack("!HH", 1, 1)

def _skip_name(msg, i):
    while True:
        n = msg[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += n + 1

def _answers(msg):
    qid, flags, qd, an, _, _ = struct.unpack("!HHHHHH", msg[:12])
    i = 12
    for _ in range(qd):
        i = _skip_name(msg, i) + 4
    out = []
    for _ in range(an):
        i = _skip_name(msg, i)
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[i:i + 10])
        i += 10
        if rtype == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(msg[i:i + 4]))
        i += rdlen
    return {"rcode": flags & 0xF, "a": out}

def dns(server, name, transport, timeout=2.0):
    q = _query(name)
    try:
        if transport == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(timeout)
            s.sendto(q, (server, 53))
            msg, _ = s.recvfrom(4096)
        else:
            s = socket.create_connection((server, 53), timeout=timeout)
            s.sendall(struct.pack("!H", len(q)) + q)
            buf = b""
            while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            msg = buf[2:]
        return _answers(msg)
    except socket.timeout:
        return {"error": "timeout"}
    except OSError as exc:
        return {"error": type(exc).__name__ + ": " + str(exc)}

kind, *args = sys.argv[1:]
print(json.dumps({"udp": udp, "tcp": tcp, "dns": dns}[kind](*args)))
'''


def probe(lab: Lab, role: str, kind: str, *args: str, timeout: float = 15.0) -> dict[str, Any]:
    """Run one probe: "udp ADDR PORT [WAIT]", "tcp ADDR PORT [WAIT]", "dns SERVER NAME udp|tcp"."""
    res = lab.exec(role, [sys.executable, "-c", PROBE, kind, *args], timeout=timeout)
    assert res.returncode == 0, f"probe {kind} {args} failed in {role}: {res.stderr}"
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def curl(lab: Lab, role: str, url: str, *extra: str, timeout: float = 3.0) -> dict[str, Any]:
    """curl ``url`` from ``role``; return status code, headers, body and curl's exit code."""
    argv = ["curl", "-sS", "-i", "-m", f"{timeout:g}", *extra, url]
    res = lab.exec(role, argv, timeout=timeout + 10)
    head, _, body = res.stdout.replace("\r\n", "\n").partition("\n\n")
    status = 0
    headers: dict[str, str] = {}
    lines = head.splitlines()
    if lines and lines[0].startswith("HTTP/"):
        status = int(lines[0].split()[1])
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    return {"status": status, "headers": headers, "body": body, "rc": res.returncode,
            "stderr": res.stderr}


def ping(lab: Lab, role: str, addr: str, *, count: int = 1, wait: int = 1) -> bool:
    argv = ["ping", "-n", "-c", str(count), "-W", str(wait), addr]
    if ":" in addr:
        argv.insert(1, "-6")
    return lab.exec(role, argv, timeout=count * wait + 10).returncode == 0


# --- scapy, for frames the kernel's own stack would never send ---------------

SPOOF = r'''
import json, sys
from scapy.all import IP, UDP, AsyncSniffer, Ether, conf, sendp
conf.verb = 0
dst_mac, dst_ip, dport = sys.argv[1], sys.argv[2], int(sys.argv[3])
frames = [json.loads(arg) for arg in sys.argv[4:]]  # [src_mac, src_ip, sport]
sniffer = AsyncSniffer(
    iface="eth0", store=True,
    lfilter=lambda p: IP in p and UDP in p and p[IP].src == dst_ip and p[UDP].sport == dport,
)
sniffer.start()
import time; time.sleep(0.3)
for _ in range(3):
    for src_mac, src_ip, sport in frames:
        sendp(Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip)
              / UDP(sport=sport, dport=dport) / b"spoofed", iface="eth0")
    time.sleep(0.2)
time.sleep(1.0)
got = sniffer.stop()
print(json.dumps([[p[UDP].dport, bytes(p[UDP].payload).decode(errors="replace")] for p in got]))
'''


def spoofed_udp(lab: Lab, role: str, *, dst_mac: str, dst_ip: str, dport: int,
                frames: Sequence[tuple[str, str, int]]) -> list[list[Any]]:
    """Send hand-made UDP frames (src MAC, src IP, src port) from ``role`` with scapy;
    return [port, payload] of every UDP answer from ``dst_ip`` seen on its eth0."""
    argv = [sys.executable, "-c", SPOOF, dst_mac, dst_ip, str(dport)]
    argv += [json.dumps(list(f)) for f in frames]
    res = lab.exec(role, argv, timeout=30)
    assert res.returncode == 0, f"scapy failed in {role}: {res.stderr}"
    replies: list[list[Any]] = json.loads(res.stdout)
    return replies


# --- the WAN side: did anything arrive? --------------------------------------

WATCH_TABLE = "bpwatch"
# name -> match, counted on packets the WAN namespace receives from the gateway.
WATCH_COUNTERS: Mapping[str, str] = {
    "udp_echo4": "ip daddr 198.51.100.10 udp dport 9999",
    "tcp443_4": "ip daddr 198.51.100.10 tcp dport 443",
    "icmp4": "ip daddr 198.51.100.10 icmp type echo-request",
    "outside_resolver": "ip daddr 198.51.100.99",
    "v6_internet": "ip6 daddr 2001:db8:100::10",
    "v6_not_gateway": "ip6 saddr != { 2001:db8:64::/64, fe80::/10 }",
}


def install_wan_watch(lab: Lab, iface: str = "isp0") -> None:
    """Named nftables counters in the WAN namespace (the lab's "internet")."""
    decl = "".join(f"  counter {name} {{}}\n" for name in WATCH_COUNTERS)
    rules = "".join(f"    iifname \"{iface}\" {match} counter name {name}\n"
                    for name, match in WATCH_COUNTERS.items())
    script = (
        f"table inet {WATCH_TABLE} {{}}\ndelete table inet {WATCH_TABLE}\n"
        f"table inet {WATCH_TABLE} {{\n{decl}"
        "  chain pre {\n    type filter hook prerouting priority raw; policy accept;\n"
        f"{rules}  }}\n}}\n"
    )
    res = run_in(lab.ns("wan"), ["nft", "-f", "-"], input=script, timeout=15)
    assert res.returncode == 0, f"cannot install WAN counters: {res.stderr}\n{script}"


def wan_counts(lab: Lab) -> dict[str, int]:
    res = run_in(lab.ns("wan"), ["nft", "-j", "list", "counters", "table", "inet", WATCH_TABLE],
                 timeout=15, check=True)
    counts: dict[str, int] = {}
    for item in json.loads(res.stdout)["nftables"]:
        if "counter" in item:
            counts[item["counter"]["name"]] = int(item["counter"]["packets"])
    return counts


def delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


# --- small facts about the lab ------------------------------------------------

def link_info(lab: Lab, role: str, dev: str) -> dict[str, Any]:
    res = lab.exec(role, ["ip", "-j", "addr", "show", "dev", dev], timeout=10, check=True)
    data: list[dict[str, Any]] = json.loads(res.stdout)
    return data[0]


def link_local(lab: Lab, role: str, dev: str) -> str:
    info = link_info(lab, role, dev)
    return next(a["local"] for a in info["addr_info"]
                if a["family"] == "inet6" and a["scope"] == "link")


UDHCPC_PRINT_ENV = """#!/bin/sh
# prints what the DHCP server sent; configures nothing
[ "$1" = bound ] && env | grep -E '^(ip|router|dns|subnet|mask|opt[0-9]+)='
exit 0
"""


def dhcp_options(lab: Lab, role: str, workdir: Path, *extra_opts: str) -> dict[str, str]:
    """One DHCP exchange with busybox udhcpc from ``role``; its environment on "bound"."""
    script = workdir / "udhcpc-print.sh"
    script.write_text(UDHCPC_PRINT_ENV)
    script.chmod(0o755)
    argv = ["busybox", "udhcpc", "-f", "-q", "-n", "-t", "5", "-T", "1", "-i", "eth0",
            "-s", str(script)]
    for opt in extra_opts:
        argv += ["-O", opt]
    res = lab.exec(role, argv, timeout=20)
    assert res.returncode == 0, f"udhcpc failed: {res.stdout}{res.stderr}"
    env = {}
    for line in res.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value
    return env


def missing_tools(tools: Sequence[str]) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]
