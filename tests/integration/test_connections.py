"""Connections that outlive a change of authorization, in the virtual village.

The kernel's verdicts are bound to tracked connections: the portal redirect
of port 80 is decided on a connection's first packet, and the download
direction of an established flow is accepted by ``ct state established``.
These tests hold such connections across a login, a deauth and an expiry:

- a TCP connection opened to an http site before login (a browser's
  preconnect) must not be answered by the portal after login;
- a download in progress (TCP, and a UDP stream) stops soon after ``desanet
  clients deauth``, after the session expires, and after the client went idle
  (a UDP stream the client never answers: only the client's own packets keep
  it active). The product target is one second; the deadline asserted here
  is generous for a busy machine, and the measured delay is printed (``-s``).

The streams come from small servers this module starts in the lab's WAN
namespace; curl and a UDP receiver run in the clients' namespaces.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from desanet_lab import LabInfo, LabSpec
from desanet_lab import netns as nsa
from desanet_lab import plan as p
from tests.integration.conftest import (
    INTERNET_URL,
    LAB_TOOLS,
    RESOLVE_INTERNET,
    LabFactory,
    desanet,
    desanet_json,
    form_token,
    in_namespace,
    internet,
    login_terms,
    require_root,
    require_tools,
    unique_prefix,
    wait_until,
)

pytestmark = [pytest.mark.integration, require_root, require_tools(*LAB_TOOLS)]

SESSION = 30  # seconds: long enough for the deauth tests, short enough to wait for
IDLE = 8  # seconds without a packet from the client
KEEPALIVE = 1.0  # the UDP receivers that answer send this often (well inside IDLE)
STREAM_TCP, STREAM_UDP = 18080, 18081  # the stream servers' ports on the internet host
CHUNK_EVERY = 0.02  # the servers send a chunk every 20 ms: 1 s of silence means stopped
QUIET = 1.0
DEADLINE = 6.0  # generous for a busy machine; the product target is 1 s

STREAMS = r"""
import socket, sys, threading, time
host, tport, uport, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])

def tcp_client(conn):
    try:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        while True:
            conn.sendall(b"x" * 2048)
            time.sleep(every)
    except OSError:
        pass
    finally:
        conn.close()

def tcp():
    srv = socket.create_server((host, tport))
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=tcp_client, args=(conn,), daemon=True).start()

def udp_stream(sock, addr):
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            sock.sendto(b"y" * 200, addr)
        except OSError:
            pass
        time.sleep(every)

def udp():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, uport))
    while True:
        _, addr = sock.recvfrom(100)
        threading.Thread(target=udp_stream, args=(sock, addr), daemon=True).start()

threading.Thread(target=tcp, daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# Ask for a UDP stream, count what arrives; answer every KEEPALIVE s (0: never answer).
UDP_RECEIVER = r"""
import os, socket, sys, time
host, port, out, keepalive = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.05)
s.sendto(b"start", (host, port))
n, end, last = 0, time.monotonic() + 90, time.monotonic()
while time.monotonic() < end:
    try:
        s.recv(1000)
        n += 1
    except OSError:
        pass
    if keepalive and time.monotonic() - last >= keepalive:
        s.sendto(b"ack", ("192.0.2.1", 9))  # any outside address: only the client's packet counts
        last = time.monotonic()
    with open(out + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(out + ".tmp", out)
"""

# A connection to an http site opened before login, used after it (a browser's preconnect).
PRECONNECT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=5)
print("connected", flush=True)
sys.stdin.readline()
try:
    s.sendall(b"GET / HTTP/1.1\r\nHost: " + sys.argv[2].encode() + b"\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        part = s.recv(4096)
        if not part:
            break
        data += part
    print(data.split(b"\r\n")[0].decode() or "(closed)", flush=True)
    loc = [l for l in data.split(b"\r\n") if l.lower().startswith(b"location:")]
    print(loc[0].decode() if loc else "", flush=True)
except OSError as exc:
    print("error " + type(exc).__name__, flush=True)
"""


@pytest.fixture(scope="module")
def lab(make_lab: LabFactory) -> LabInfo:
    return make_lab(LabSpec(prefix=unique_prefix("ct"), clients=4, session_length=f"{SESSION}s",
                            idle_timeout=f"{IDLE}s"))


@pytest.fixture(scope="module")
def streams(lab: LabInfo) -> Iterator[None]:
    """The stream servers on the internet host (TCP: endless HTTP body; UDP: 120 s)."""
    proc = subprocess.Popen(
        [nsa.IP, "netns", "exec", lab.wan, sys.executable, "-c", STREAMS, p.INTERNET_V4,
         str(STREAM_TCP), str(STREAM_UDP), str(CHUNK_EVERY)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def ns(lab: LabInfo, k: int) -> str:
    return lab.client(k).name


def mac(k: int) -> str:
    return p.client_mac(k)


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def file_count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


class Flow:
    """A growing counter (bytes or datagrams received) and when it last grew."""

    def __init__(self, read: Callable[[], int]) -> None:
        self.read = read
        self.value = read()
        self.changed = time.monotonic()

    def poll(self) -> int:
        value = self.read()
        if value != self.value:
            self.value, self.changed = value, time.monotonic()
        return value

    def grows(self, by: int, timeout: float = 10.0) -> None:
        start = self.poll()
        wait_until(lambda: self.poll() >= start + by, timeout, "the stream to flow",
                   interval=0.05)


def stopped(t0: float, flows: dict[str, Flow], also: Callable[[], object] = lambda: None,
            ) -> dict[str, float]:
    """Watch ``flows`` together until none grew for QUIET seconds; for each, how long after
    ``t0`` it last grew. ``also`` is polled in the same loop (curl's exit)."""
    def quiet() -> bool:
        for f in flows.values():
            f.poll()
        also()
        return all(time.monotonic() - f.changed >= QUIET for f in flows.values())
    wait_until(quiet, DEADLINE + QUIET, f"{', '.join(flows)} to stop", interval=0.02)
    return {name: max(0.0, f.changed - t0) for name, f in flows.items()}


class Download:
    """curl fetching the endless TCP stream in a client's namespace, into a file."""

    def __init__(self, client: str, tmp: Path) -> None:
        self.path = tmp / f"{client}-download"
        self.proc = subprocess.Popen(
            [nsa.IP, "netns", "exec", client, "curl", "-sS", "-o", str(self.path),
             "--max-time", "120", f"http://{p.INTERNET_V4}:{STREAM_TCP}/big"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.flow = Flow(lambda: file_size(self.path))
        self.ended_at: float | None = None

    def ended(self) -> bool:
        if self.ended_at is None and self.proc.poll() is not None:
            self.ended_at = time.monotonic()
        return self.ended_at is not None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


class UdpStream:
    """A client that asked once for a UDP stream and counts the datagrams arriving."""

    def __init__(self, client: str, tmp: Path, keepalive: float = KEEPALIVE) -> None:
        self.path = tmp / f"{client}-udp"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [nsa.IP, "netns", "exec", client, sys.executable, "-c", UDP_RECEIVER,
             p.INTERNET_V4, str(STREAM_UDP), str(self.path), str(keepalive)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.flow = Flow(lambda: file_count(self.path))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)


def expires_of(lab: LabInfo, k: int) -> int:
    rows = {c["mac"]: c for c in desanet_json(lab.control_socket, "clients")["clients"]}
    return int(rows[mac(k)]["expires"])


def deauth(lab: LabInfo, k: int) -> None:
    out = desanet(lab.control_socket, "clients", "deauth", mac(k))
    assert out.returncode == 0, out.stderr


def report(what: str, seconds: float) -> None:
    print(f"\n[measured] {what}: {seconds:.2f} s", flush=True)


# -- a connection opened before login ----------------------------------------------------


def preconnect(client: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [nsa.IP, "netns", "exec", client, sys.executable, "-c", PRECONNECT, p.INTERNET_V4,
         p.INTERNET_HOST],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "connected"
    return proc


def use(proc: subprocess.Popen[str]) -> list[str]:
    out, _ = proc.communicate("go\n", timeout=15)
    return out.splitlines()


def test_a_connection_opened_before_login_is_not_answered_by_the_portal_after_it(
        lab: LabInfo) -> None:
    c1 = ns(lab, 1)
    # Control: logged out, such a connection really is the portal's.
    before = use(preconnect(c1))
    assert before[0].startswith("HTTP/1.1 302") and p.PORTAL_HOSTNAME in before[1], before

    held = preconnect(c1)
    try:
        assert login_terms(c1).status == 303
        after = use(held)
    finally:
        if held.poll() is None:
            held.kill()
        held.wait(timeout=5)
    # Its redirect ended with the login: the site resets it (a browser retries), and
    # whatever comes back is not the portal.
    assert not any(p.PORTAL_HOSTNAME in line for line in after), after
    assert internet(c1, retry=True).status == 200
    # The one-curl-process case: site (redirected), login, site again.
    deauth(lab, 1)
    out = in_namespace(c1, "curl", "-s", "--resolve", RESOLVE_INTERNET, "-o", "/dev/null",
                       "-w", "%{http_code} ", INTERNET_URL,
                       "--next", "-s", "-o", "/dev/null", "-w", "%{http_code} ",
                       "-d", "action=terms", "-d", f"csrf={form_token(c1)}",
                       f"http://{p.PORTAL_HOSTNAME}/login",
                       "--next", "-s", "--resolve", RESOLVE_INTERNET, "-o", "/dev/null",
                       "-w", "%{http_code}", INTERNET_URL)
    assert out.split() == ["302", "303", "200"], out
    deauth(lab, 1)


# -- downloads in progress -----------------------------------------------------------------


def test_a_download_in_progress_stops_after_deauth(lab: LabInfo, streams: None,
                                                   tmp_path: Path) -> None:
    c2 = ns(lab, 2)
    assert login_terms(c2).status == 303
    down, udp = Download(c2, tmp_path), UdpStream(c2, tmp_path)
    try:
        down.flow.grows(50_000)  # control: both flow while authorized
        udp.flow.grows(20)
        t0 = time.monotonic()
        deauth(lab, 2)
        report("deauth command returned", time.monotonic() - t0)
        stop = stopped(t0, {"tcp": down.flow, "udp": udp.flow}, down.ended)
        wait_until(down.ended, DEADLINE, "curl to end", interval=0.02)
        assert down.ended_at is not None
        report("deauth -> TCP download stopped", stop["tcp"])
        report("deauth -> curl ended (connection reset)", down.ended_at - t0)
        report("deauth -> UDP stream stopped", stop["udp"])
        assert stop["tcp"] <= DEADLINE and stop["udp"] <= DEADLINE
        assert down.ended_at - t0 <= DEADLINE + QUIET
    finally:
        down.close()
        udp.close()
    assert internet(c2, retry=True).redirected_to_portal()


def test_a_download_in_progress_stops_when_the_session_expires(
        lab: LabInfo, streams: None, tmp_path: Path) -> None:
    c3 = ns(lab, 3)
    assert login_terms(c3).status == 303
    expires = expires_of(lab, 3)
    down, udp = Download(c3, tmp_path), UdpStream(c3, tmp_path)
    try:
        down.flow.grows(50_000)
        udp.flow.grows(20)
        # Still flowing shortly before the end (control), then the session ends.
        wait_until(lambda: time.time() >= expires - 2, SESSION + 5, "the session's last seconds",
                   interval=0.2)
        assert not down.ended(), "the download ended before the session did"
        udp.flow.grows(5)
        wait_until(lambda: time.time() >= expires, 5, "the expiry", interval=0.05)
        t0 = time.monotonic()
        stop = stopped(t0, {"tcp": down.flow, "udp": udp.flow}, down.ended)
        wait_until(down.ended, DEADLINE, "curl to end", interval=0.02)
        assert down.ended_at is not None
        report("expiry -> TCP download stopped", stop["tcp"])
        report("expiry -> curl ended (connection reset)", down.ended_at - t0)
        report("expiry -> UDP stream stopped", stop["udp"])
        assert stop["tcp"] <= DEADLINE and stop["udp"] <= DEADLINE
        assert down.ended_at - t0 <= DEADLINE + QUIET
        ended = wait_until(lambda: not any(c["mac"] == mac(3) and c.get("authorized") for c in
                                           desanet_json(lab.control_socket, "clients")["clients"]),
                           DEADLINE, "the session to end")
        assert ended
    finally:
        down.close()
        udp.close()
    assert internet(c3, retry=True).redirected_to_portal()


def test_a_stream_the_client_never_answers_stops_when_the_client_goes_idle(
        lab: LabInfo, streams: None, tmp_path: Path) -> None:
    c4 = ns(lab, 4)
    assert login_terms(c4).status == 303
    udp = UdpStream(c4, tmp_path, keepalive=0)  # the client's last packet: "start"
    try:
        udp.flow.grows(20)
        last_packet = udp.started  # at the latest: the receiver sent "start" after this
        wait_until(lambda: time.monotonic() >= last_packet + IDLE - 1, IDLE + 5,
                   "the idle timeout's last second", interval=0.2)
        udp.flow.grows(5)  # control: still flowing just before the idle timeout
        t0 = last_packet + IDLE
        stop = stopped(t0, {"udp": udp.flow})
        report("idle timeout -> UDP stream stopped", stop["udp"])
        assert stop["udp"] <= DEADLINE
    finally:
        udp.close()
    rows = {c["mac"]: c for c in desanet_json(lab.control_socket, "clients")["clients"]}
    assert not rows.get(mac(4), {}).get("authorized"), rows.get(mac(4))
    assert internet(c4, retry=True).redirected_to_portal()
