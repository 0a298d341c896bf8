"""Thin adapter over `ip` (iproute2) and processes in network namespaces.

Every subprocess call has a timeout. Processes are found with
``ip netns pids NAME`` and stopped by pid, never by name. Long-running
children started here are remembered per lab prefix so that
:func:`reap_children` can collect them after they are killed (no zombies
in a test process that both starts and stops a lab).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.errors import LabError

IP = "ip"
DEFAULT_TIMEOUT = 30.0

_children: dict[str, list[subprocess.Popen[bytes]]] = {}


def run(
    argv: Sequence[str],
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; with ``check`` raise LabError naming the command and stderr."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, input=input,
            check=False,
        )
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} not found; install it (e.g. apt-get install iproute2)") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`{' '.join(argv)}` did not finish within {timeout:g} s") from exc
    if check and proc.returncode != 0:
        raise LabError(
            f"`{' '.join(argv)}` failed with exit code {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip() or 'no output'}"
        )
    return proc


def ip(*args: str, timeout: float = DEFAULT_TIMEOUT, check: bool = True) -> str:
    return run([IP, *args], timeout=timeout, check=check).stdout


def run_in(
    ns: str,
    argv: Sequence[str],
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = False,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside namespace ``ns`` (``ip netns exec``); capture text output."""
    return run([IP, "netns", "exec", ns, *argv], timeout=timeout, check=check, input=input)


def list_namespaces() -> list[str]:
    out = ip("netns", "list", timeout=10)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(ns: str) -> list[int]:
    proc = run([IP, "netns", "pids", ns], timeout=10, check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def addresses(ns: str, dev: str | None = None) -> list[dict[str, Any]]:
    """``ip -j addr`` of ``ns`` as a list of {ifname, family, address, prefixlen, scope}."""
    args = ["-n", ns, "-j", "addr", "show"]
    if dev:
        args += ["dev", dev]
    raw = ip(*args, timeout=10, check=False).strip()
    try:
        links = json.loads(raw) if raw else []
    except json.JSONDecodeError as exc:
        raise LabError(f"cannot parse `ip -j addr` output of {ns}: {exc}") from exc
    out: list[dict[str, Any]] = []
    for link in links:
        for info in link.get("addr_info", []):
            out.append({
                "ifname": link.get("ifname"),
                "family": "ipv6" if info.get("family") == "inet6" else "ipv4",
                "address": info.get("local"),
                "prefixlen": info.get("prefixlen"),
                "scope": info.get("scope"),
            })
    return out


def set_sysctl(ns: str, key: str, value: str) -> None:
    run_in(ns, ["sysctl", "-q", "-w", f"{key}={value}"], timeout=10, check=True)


def spawn(
    prefix: str,
    ns: str,
    argv: Sequence[str],
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` detached in ``ns`` (own session), output appended to ``log``.

    ``ip netns exec`` execs the command, so the returned pid is the
    service's own pid.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(
                [IP, "netns", "exec", ns, *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=dict(env) if env is not None else None, cwd=cwd,
            )
        except OSError as exc:
            raise LabError(f"cannot start {argv[0]} in {ns}: {exc}") from exc
    _children.setdefault(prefix, []).append(proc)
    return proc


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still "exists"; treat it as dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def stop_pids(pids: Sequence[int], grace: float = 3.0) -> None:
    """SIGTERM ``pids``, wait up to ``grace`` seconds, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        live = [pid for pid in pids if pid_alive(pid)]
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 2.0)
        while live and time.monotonic() < deadline:
            _reap_known()
            live = [pid for pid in live if pid_alive(pid)]
            if live:
                time.sleep(0.05)
        if not live:
            return


def _reap_known() -> None:
    for procs in _children.values():
        for proc in procs:
            proc.poll()


def reap_children(prefix: str, timeout: float = 2.0) -> None:
    """Collect exit statuses of children this process started for ``prefix``."""
    for proc in _children.pop(prefix, []):
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no {path})"
    return "\n".join(text.splitlines()[-lines:])
