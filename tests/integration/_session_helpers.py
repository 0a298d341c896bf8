"""Helpers for the session integration tests: clients speak through curl in
their namespaces, the daemon is driven through the real `desanet` CLI.

Nothing here is a fake: every helper runs a real process (curl, python,
nft, the CLI) and returns what it observed.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from desanet_lab import netns as nsa
from desanet_lab import plan as p
from desanet_lab import run_in

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
INTERNET_URL = f"http://{p.INTERNET_HOST}/"
INTERNET_BODY = "desanet-lab internet OK"
PORTAL = f"http://{p.PORTAL_HOSTNAME}"
# Used while the daemon (and with it dnsmasq) is down: no DNS needed.
RESOLVE_INTERNET = f"{p.INTERNET_HOST}:80:{p.INTERNET_V4}"


def missing_requirements() -> str | None:
    """Why these tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "session tests need root (network namespaces, nftables)"
    missing = [t for t in ("ip", "busybox", "curl", "nft", "ping", "ss") if shutil.which(t) is None]
    if not Path("/usr/sbin/dnsmasq").exists():
        missing.append("/usr/sbin/dnsmasq")
    if missing:
        return "session tests need " + ", ".join(missing)
    return None


# -- waiting ----------------------------------------------------------------


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        last = check()
    return last


# -- the CLI ------------------------------------------------------------------


def desanet_argv() -> list[str]:
    exe = Path(sys.executable).with_name("desanet")
    if exe.exists():
        return [str(exe)]
    venv = ROOT / ".venv" / "bin" / "desanet"
    if venv.exists():
        return [str(venv)]
    return [sys.executable, "-m", "gateway"]


def cli(socket: str, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run ``desanet --socket SOCKET ARGS`` and return what it did."""
    return subprocess.run(
        [*desanet_argv(), "--socket", socket, *args],
        capture_output=True, text=True, timeout=timeout, check=False, cwd=str(ROOT),
    )


def cli_json(socket: str, *args: str) -> Any:
    proc = cli(socket, *args, "--json")
    assert proc.returncode == 0, (
        f"`desanet {' '.join(args)} --json` exited {proc.returncode}: {proc.stderr.strip()}"
    )
    return json.loads(proc.stdout)


def clients(socket: str) -> dict[str, dict[str, Any]]:
    """`desanet clients --json` keyed by MAC."""
    return {c["mac"]: c for c in cli_json(socket, "clients")["clients"]}


def is_authorized(socket: str, mac: str) -> bool:
    row = clients(socket).get(mac)
    return bool(row and row.get("authorized"))


def vouchers(socket: str) -> dict[str, dict[str, Any]]:
    return {v["code"]: v for v in cli_json(socket, "vouchers", "list")["vouchers"]}


def status(socket: str) -> dict[str, Any]:
    data: dict[str, Any] = cli_json(socket, "status")
    return data


# -- clients ------------------------------------------------------------------


@dataclass
class Http:
    """One HTTP exchange as a client saw it; ``status`` 0 means no answer."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    error: str = ""

    @property
    def location(self) -> str:
        return self.headers.get("location", "")

    def redirected_to_portal(self) -> bool:
        return self.status == 302 and self.location.startswith(f"{PORTAL}/")


def curl(
    ns: str,
    url: str,
    *,
    form: dict[str, str] | None = None,
    headers: Sequence[str] = (),
    resolve: str | None = None,
    timeout: float = 4.0,
) -> Http:
    """GET (or POST ``form``) ``url`` from namespace ``ns``; never follows redirects."""
    argv = ["curl", "-sS", "-i", "--max-time", f"{timeout:g}", "--connect-timeout", f"{timeout:g}"]
    for h in headers:
        argv += ["-H", h]
    if resolve:
        argv += ["--resolve", resolve]
    for key, value in (form or {}).items():
        argv += ["--data-urlencode", f"{key}={value}"]
    argv.append(url)
    proc = run_in(ns, argv, timeout=timeout + 5)
    if proc.returncode != 0 or not proc.stdout.startswith("HTTP/"):
        return Http(status=0, error=(proc.stderr or proc.stdout).strip())
    head, _, body = proc.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    code = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        hdrs[name.strip().lower()] = value.strip()
    return Http(status=code, headers=hdrs, body=body)


def internet(ns: str, *, by_address: bool = False) -> Http:
    """Fetch http://internet.lab/ (by address when the gateway's DNS may be down)."""
    return curl(ns, INTERNET_URL, resolve=RESOLVE_INTERNET if by_address else None)


def has_internet(ns: str, *, by_address: bool = False) -> bool:
    r = internet(ns, by_address=by_address)
    return r.status == 200 and r.body.strip() == INTERNET_BODY


def login_terms(ns: str) -> Http:
    return curl(ns, f"{PORTAL}/login", form={"action": "terms"})


def login_voucher(ns: str, code: str) -> Http:
    return curl(ns, f"{PORTAL}/login", form={"action": "voucher", "voucher": code})


def logout(ns: str) -> Http:
    return curl(ns, f"{PORTAL}/logout", form={"x": "1"})


def captive_api(ns: str) -> dict[str, Any]:
    r = curl(ns, f"{PORTAL}/api/captive")
    assert r.status == 200, f"/api/captive answered {r.status} {r.error}"
    assert r.headers.get("content-type", "").startswith("application/captive+json")
    data: dict[str, Any] = json.loads(r.body)
    return data


_UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.send(b"ping")
    print(s.recv(100).decode())
except OSError as exc:
    print("no answer:", type(exc).__name__)
"""


def udp_echo(ns: str, timeout: float = 1.5) -> bool:
    """True when the lab internet's UDP echo answers ``ns``."""
    proc = run_in(ns, [sys.executable, "-c", _UDP_ECHO, p.INTERNET_V4, str(p.UDP_ECHO_PORT),
                       str(timeout)], timeout=timeout + 10)
    return proc.stdout.strip() == "echo:ping"


_TCP_HOLD = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print("connected", flush=True)
for line in sys.stdin:
    try:
        s.sendall(line.encode())
        data = s.recv(100)
        print("ok" if data == line.encode() else "closed", flush=True)
    except OSError as exc:
        print("fail", type(exc).__name__, flush=True)
"""


class HeldConnection:
    """A long-lived TCP connection from a client to the lab's TCP echo
    (a stand-in for a running download): ``roundtrip()`` says whether one
    more line still makes it there and back."""

    def __init__(self, ns: str) -> None:
        self.proc = subprocess.Popen(
            [nsa.IP, "netns", "exec", ns, sys.executable, "-c", _TCP_HOLD,
             p.INTERNET_V4, str(p.UDP_ECHO_PORT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        first = self._line(8.0)
        assert first == "connected", f"TCP echo connection from {ns} failed: {first!r}"

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return "(no answer)"
        return self.proc.stdout.readline().strip()

    def roundtrip(self, timeout: float = 6.0) -> bool:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("data\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return False
        return self._line(timeout) == "ok"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


# -- the gateway namespace ------------------------------------------------------


def nft_set(gw: str, name: str) -> str:
    """`nft list set inet desanet NAME` in the gateway namespace."""
    proc = run_in(gw, ["nft", "list", "set", "inet", "desanet", name], timeout=10)
    assert proc.returncode == 0, f"nft list set {name} failed: {proc.stderr.strip()}"
    return proc.stdout


def in_set(gw: str, name: str, mac: str) -> bool:
    return mac.lower() in nft_set(gw, name).lower()


def udp_listeners(gw: str, port: int) -> set[int]:
    """Pids holding UDP ``port`` in the gateway namespace."""
    proc = run_in(gw, ["ss", "-H", "-ulnp", "sport", "=", f":{port}"], timeout=10)
    return {int(pid) for pid in re.findall(r"pid=(\d+)", proc.stdout)}


def log_since(path: str | Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def log_size(path: str | Path) -> int:
    try:
        return Path(path).stat().st_size
    except FileNotFoundError:
        return 0


def log_lines(text: str, level: str, *needles: str) -> list[str]:
    """Lines of ``text`` at ``level`` that contain every needle."""
    pattern = re.compile(rf"\b{level}\b")
    return [ln for ln in text.splitlines() if pattern.search(ln) and all(n in ln for n in needles)]


# -- processes -----------------------------------------------------------------


def alive(pid: int) -> bool:
    return nsa.pid_alive(pid)


def wait_exit(pid: int, timeout: float) -> int | None:
    """Wait for ``pid`` to end; its exit code when it is our child, else None.

    Raises AssertionError when it is still running after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, wstatus = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            wait_until(lambda: not alive(pid), max(0.1, deadline - time.monotonic()),
                       f"process {pid} to exit")
            return None
        if done:
            return os.waitstatus_to_exitcode(wstatus)
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still running after {timeout:g} s")
        time.sleep(0.05)


def kill(pid: int, sig: signal.Signals) -> None:
    os.kill(pid, sig)
