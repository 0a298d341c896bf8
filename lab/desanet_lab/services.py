"""Processes of the lab: WAN resolvers and origin, the gateway daemon, DHCP.

Argument vectors are built by pure functions (``*_argv``); the ``start_*``
and ``wait_*`` functions run them through :mod:`desanet_lab.netns`.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gateway
from desanet_lab import netns
from desanet_lab import plan as p
from gateway.control.client import ControlClient
from gateway.errors import ControlError, LabError

DNSMASQ = "/usr/sbin/dnsmasq"
GATEWAY_READY_TIMEOUT = 30.0
DHCP_TIMEOUT = 30.0

# name -> addresses, for the ISP resolver (198.51.100.53)
ISP_RECORDS: dict[str, tuple[str, ...]] = {
    p.INTERNET_HOST: (p.INTERNET_V4, p.INTERNET_V6),
    p.GOVERNMENT_HOST: (p.GOVERNMENT_V4,),
    p.DUKCAPIL_HOST: (p.GOVERNMENT_V4,),
    **{host: (p.CONNCHECK_V4,) for host in p.CONNCHECK_HOSTS},
    # dns: an attacker's name under the walled garden's, at the internet host's address
    p.GARDEN_EVIL_HOST: (p.INTERNET_V4,),
    # stale: a public name that points at the ISP's link address (not global)
    p.PRIVATE_ANSWER_HOST: (p.WAN_ISP_V4,),
    # the region's MQTT broker (desanet_lab/broker.py)
    p.MQTT_HOST: (p.MQTT_V4,),
}
# alias -> target, for the ISP resolver: a garden subdomain that is a CNAME to the
# internet host (an attacker's address), for the walled-garden tests
ISP_CNAMES: dict[str, str] = {p.GARDEN_CNAME_HOST: p.INTERNET_HOST}
# ... and for the "outside" resolver (198.51.100.99): a distinct answer for
# internet.lab so a test can tell which resolver a client really asked.
OUTSIDE_RECORDS: dict[str, tuple[str, ...]] = {
    p.OUTSIDE_HOST: (p.INTERNET_V4,),
    p.INTERNET_HOST: (p.OUTSIDE_RESOLVER,),
}


def project_root() -> str:
    """Directory holding the ``gateway`` package (the children's working directory)."""
    return str(Path(gateway.__file__).resolve().parent.parent)


def lab_root() -> str:
    """Directory holding the ``desanet_lab`` package (``lab/`` in a source checkout)."""
    return str(Path(__file__).resolve().parent.parent)


def child_pythonpath(existing: str | None = None) -> str:
    """PYTHONPATH for children: the gateway's and the lab's roots, then ``existing``.

    Children run ``python -m gateway`` and ``python -m desanet_lab.origin``;
    both must import even when neither distribution is installed (a checkout
    used through PYTHONPATH).
    """
    parts: list[str] = []
    for part in (project_root(), lab_root(), *(existing or "").split(os.pathsep)):
        if part and part not in parts:
            parts.append(part)
    return os.pathsep.join(parts)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = child_pythonpath(env.get("PYTHONPATH"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def resolver_argv(listen: str, records: dict[str, tuple[str, ...]], pidfile: Path,
                  cnames: dict[str, str] | None = None) -> list[str]:
    """dnsmasq as an authoritative-looking resolver that knows only ``records``.

    ``--address=/#/`` with no address makes every other name NXDOMAIN
    (without it dnsmasq, having no upstream, answers REFUSED); host-records
    win over it, and a name with only an A record gets NODATA for AAAA.
    """
    argv = [
        DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        "--bind-interfaces", f"--listen-address={listen}", "--port=53",
        "--log-facility=-", "--log-queries", f"--pid-file={pidfile}", "--address=/#/",
    ]
    argv += [f"--host-record={name},{','.join(addrs)}" for name, addrs in records.items()]
    argv += [f"--cname={alias},{target}" for alias, target in (cnames or {}).items()]
    return argv


def origin_argv(ready_file: Path) -> list[str]:
    return [sys.executable, "-m", "desanet_lab.origin", "--listen", "0.0.0.0",
            "--listen", "::", "--ready-file", str(ready_file)]


def gateway_argv(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "gateway", "run", "--config", str(config_path)]


def udhcpc_argv(script: Path) -> list[str]:
    # -f foreground, -q quit once bound, -n give up (exit 1) after -t tries.
    return ["busybox", "udhcpc", "-f", "-q", "-n", "-t", "10", "-T", "1",
            "-i", p.CLIENT_INTERFACE, "-s", str(script)]


def _wait_for(what: str, check: Callable[[], bool], timeout: float,
              proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            raise LabError(f"{what} exited with code {proc.returncode} while starting; "
                           f"last lines of {log}:\n{netns.tail(log)}")
        time.sleep(0.05)
    raise LabError(f"{what} not ready after {timeout:g} s; last lines of {log}:\n"
                   f"{netns.tail(log)}")


def _pidfile_written(path: Path) -> bool:
    try:
        return path.read_text().strip().isdigit()
    except OSError:
        return False


def start_wan_services(lab: p.LabPlan) -> dict[str, int]:
    """Start both resolvers and the origin in the WAN namespace; wait until ready."""
    logs = lab.state_dir / "logs"
    pids: dict[str, int] = {}
    for name, listen, records, cnames in (
        ("isp-resolver", p.ISP_RESOLVER, ISP_RECORDS, ISP_CNAMES),
        ("outside-resolver", p.OUTSIDE_RESOLVER, OUTSIDE_RECORDS, {}),
    ):
        pidfile = lab.state_dir / f"{name}.pid"
        pidfile.unlink(missing_ok=True)
        log = logs / f"{name}.log"
        proc = netns.spawn(lab.prefix, lab.wan, resolver_argv(listen, records, pidfile, cnames),
                           log)
        _wait_for(f"dnsmasq ({name}) in {lab.wan}", functools.partial(_pidfile_written, pidfile),
                  10.0, proc, log)
        pids[name] = proc.pid
    ready = lab.state_dir / "origin.ready"
    ready.unlink(missing_ok=True)
    log = logs / "origin.log"
    proc = netns.spawn(lab.prefix, lab.wan, origin_argv(ready), log, env=child_env(),
                       cwd=project_root())
    _wait_for(f"origin server in {lab.wan}", ready.exists, 15.0, proc, log)
    pids["origin"] = proc.pid
    return pids


def start_gateway(lab: p.LabPlan, timeout: float = GATEWAY_READY_TIMEOUT) -> int:
    """Start `desanet run` in the gateway namespace and wait for readiness.

    Ready means ``GET /v1/status`` on the control socket returns a JSON
    object with ``"ready": true``.
    """
    lab.control_socket.unlink(missing_ok=True)
    env = child_env()
    # The `reboot` remote command restarts this daemon (desanet_lab/reboot.py), never the
    # machine; a caller's own command (a test's) wins.
    env.setdefault("DESANET_REBOOT_COMMAND",
                   f"{sys.executable} -m desanet_lab.reboot --prefix {lab.prefix}")
    proc = netns.spawn(lab.prefix, lab.gw, gateway_argv(lab.config_path), lab.gateway_log,
                       env=env, cwd=project_root())
    lab.gateway_pidfile.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(
                f"the gateway daemon exited with code {proc.returncode} during start-up; "
                f"last lines of {lab.gateway_log}:\n{netns.tail(lab.gateway_log)}"
            )
        if lab.control_socket.exists():
            client = ControlClient(str(lab.control_socket), timeout=2.0)
            try:
                status = client.request("GET", "/v1/status")
                if isinstance(status, dict) and status.get("ready") is True:
                    return proc.pid
                last = f"status said {status!r}"
            except ControlError as exc:
                last = str(exc)
            finally:
                client.close()
        time.sleep(0.1)
    raise LabError(
        f"the gateway daemon was not ready after {timeout:g} s ({last}); "
        f"last lines of {lab.gateway_log}:\n{netns.tail(lab.gateway_log)}"
    )


def dhcp_timeout(clients: int) -> float:
    """Overall DHCP budget: dnsmasq pings each new address (up to ~3 s) before
    offering it and handles no other DHCP packet meanwhile, so N clients that
    start together may need about 3 s each."""
    return DHCP_TIMEOUT + 4.0 * clients


def _start_udhcpc(lab: p.LabPlan, c: p.ClientPlan, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [netns.IP, "netns", "exec", c.ns, *udhcpc_argv(lab.dhcp_script)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "LAB_NS": c.ns},
        )


def run_dhcp(lab: p.LabPlan, timeout: float | None = None) -> dict[str, str]:
    """Run one-shot udhcpc in every client at once; return {namespace: ipv4}.

    A udhcpc that gives up (-n) is started again until the overall timeout:
    with several clients at once, dnsmasq's ping check can delay an ACK past
    udhcpc's three REQUEST retries.
    """
    budget = dhcp_timeout(len(lab.clients)) if timeout is None else timeout
    lab.dhcp_script.write_text(p.udhcpc_script())
    lab.dhcp_script.chmod(0o755)
    logs = lab.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_of = {c.ns: logs / f"dhcp-{c.ns}.log" for c in lab.clients}
    for log in log_of.values():
        log.write_bytes(b"")
    running = {c.ns: (c, _start_udhcpc(lab, c, log_of[c.ns])) for c in lab.clients}
    failed: dict[str, int] = {}
    deadline = time.monotonic() + budget
    while running:
        for ns, (c, proc) in list(running.items()):
            code = proc.poll()
            if code is None:
                if time.monotonic() > deadline:
                    proc.kill()
                    proc.wait(timeout=5)
                    failed[ns] = -9
                    del running[ns]
                continue
            if code == 0:
                del running[ns]
            elif time.monotonic() + 3 < deadline:
                running[ns] = (c, _start_udhcpc(lab, c, log_of[ns]))
            else:
                failed[ns] = code
                del running[ns]
        time.sleep(0.05)
    if failed:
        raise LabError(
            f"DHCP failed within {budget:g} s in "
            + "; ".join(f"{ns} (udhcpc exit {code}): {netns.tail(log_of[ns], 4)}"
                        for ns, code in failed.items())
            + "; is the gateway's dnsmasq serving DHCP on br-lan?"
        )
    return {c.ns: client_ipv4(c.ns) or "" for c in lab.clients}


def client_ipv4(ns: str) -> str | None:
    for a in netns.addresses(ns, p.CLIENT_INTERFACE):
        if a["family"] == "ipv4" and a["scope"] == "global":
            return str(a["address"])
    return None
