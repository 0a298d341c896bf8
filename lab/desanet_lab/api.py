"""Python API of the virtual village: bring it up, look at it, tear it down.

Theory of operation: ``lab_up`` validates everything it can first (prefix,
client count, the gateway config) so bad input changes nothing; then it
removes any leftover lab of the same prefix, builds the topology, starts
the WAN services, the gateway daemon, and finally runs DHCP in the clients
(the gateway's own dnsmasq must answer). Any failure tears the half-built
lab down again and raises LabError. ``lab_down`` works from what exists
(``ip netns list``, ``ip netns pids``), not from what was recorded, so it
cleans up after a crash too, and it is idempotent.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from desanet_lab import broker, labconfig, netns, pki, services
from desanet_lab import plan as p
from desanet_lab.plan import LabSpec, client_ns
from gateway.errors import LabError


@dataclass
class ClientInfo:
    name: str
    mac: str
    ipv4: str | None
    addresses: list[str]


@dataclass
class LabInfo:
    prefix: str
    wan: str
    gw: str
    clients: list[ClientInfo]
    wan_addresses: list[str] = field(default_factory=list)
    gw_addresses: list[str] = field(default_factory=list)
    gateway_pid: int | None = None
    gateway_running: bool = False
    portal_url: str = f"http://{p.PORTAL_HOSTNAME}/"
    portal_ip_url: str = f"http://{p.LAN_IP}/"
    state_dir: str = ""
    present: bool = True
    broker: dict[str, Any] | None = None  # broker.describe() and "running"; None: no broker

    @property
    def control_socket(self) -> str:
        return f"{self.state_dir}/control.sock"

    @property
    def config_path(self) -> str:
        return f"{self.state_dir}/gateway.toml"

    def client(self, k: int) -> ClientInfo:
        return self.clients[k - 1]

    def try_commands(self) -> list[str]:
        opt = "" if self.prefix == p.DEFAULT_PREFIX else f" --prefix {self.prefix}"
        ex = f"desanet lab exec{opt}"
        return [
            f"{ex} c1 -- curl -i http://{p.INTERNET_HOST}/",
            f"{ex} c1 -- curl -i {self.portal_url}",
            f"{ex} c1 -- curl -i http://connectivitycheck.gstatic.com/generate_204",
            f"{ex} c1 -- curl -i http://{p.GOVERNMENT_HOST}/",
            f"{ex} c1 -- busybox nslookup {p.INTERNET_HOST} {p.OUTSIDE_RESOLVER}",
            # a tool without a browser's headers may log in without the form token
            f"{ex} c1 -- curl -i -d action=terms {self.portal_url}login",
            f"{ex} c1 -- curl -i http://{p.INTERNET_HOST}/",
            f"{ex} c1 -- curl -s http://layanan.desa/",
            f"{ex} c1 -- curl -si http://layanan.desa/dukcapil/",
            f"{ex} gw -- nft list ruleset",
            *([broker.watch_command(self.broker, opt), broker.send_command(self.broker, opt)]
              if self.broker else []),
            f"desanet status --socket {self.control_socket}",
            f"desanet clients --socket {self.control_socket}",
            f"desanet lab uplink down{opt}",
            f"desanet lab uplink up{opt}",
            f"desanet lab down{opt}",
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "present": self.present,
            "namespaces": {
                "wan": {"name": self.wan, "addresses": self.wan_addresses},
                "gw": {"name": self.gw, "addresses": self.gw_addresses},
                "clients": [
                    {"name": c.name, "mac": c.mac, "ipv4": c.ipv4, "addresses": c.addresses}
                    for c in self.clients
                ],
            },
            "gateway": {
                "pid": self.gateway_pid,
                "running": self.gateway_running,
                "log": f"{self.state_dir}/gateway.log",
                "config": self.config_path,
            },
            "gateway_lan_ip": p.LAN_IP,
            "portal_url": self.portal_url,
            "portal_ip_url": self.portal_ip_url,
            "control_socket": self.control_socket,
            "state_dir": self.state_dir,
            "hosts": {
                "internet": p.INTERNET_HOST,
                "government": p.GOVERNMENT_HOST,
                "outside": p.OUTSIDE_HOST,
                "portal": p.PORTAL_HOSTNAME,
                "connectivity_checks": list(p.CONNCHECK_HOSTS),
            },
            "addresses": {
                "isp_resolver": p.ISP_RESOLVER,
                "outside_resolver": p.OUTSIDE_RESOLVER,
                "internet": p.INTERNET_V4,
                "internet_v6": p.INTERNET_V6,
                "government": p.GOVERNMENT_V4,
                "connectivity_check": p.CONNCHECK_V4,
                "udp_echo": f"{p.INTERNET_V4}:{p.UDP_ECHO_PORT}",
                "tls": f"{p.INTERNET_V4}:{p.TLS_PORT}",
                "wan_gateway": p.WAN_GW_V4,
                "wan_isp": p.WAN_ISP_V4,
            },
            "broker": self.broker,
            "try": self.try_commands(),
        }


def run_in(
    ns: str, argv: Sequence[str], timeout: float = 30.0, check: bool = False,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in namespace ``ns`` with captured text output and a timeout."""
    return netns.run_in(ns, argv, timeout=timeout, check=check, input=input)


def lab_namespaces(prefix: str) -> list[str]:
    return [ns for ns in netns.list_namespaces() if p.owns_namespace(prefix, ns)]


def lab_up(spec: LabSpec | None = None) -> LabInfo:
    """Build the lab described by ``spec`` and return what was built."""
    spec = spec or LabSpec()
    plan = p.plan_lab(spec)
    signing = broker.new_command_key() if spec.broker else None
    config_text, config = labconfig.lab_config_text(
        plan, spec, command_key=signing.public if signing else None)
    for tool in ("ip", "busybox"):
        if shutil.which(tool) is None:
            raise LabError(f"`{tool}` is not installed; apt-get install iproute2 busybox")
    if not Path(services.DNSMASQ).exists():
        raise LabError(f"{services.DNSMASQ} is missing; apt-get install dnsmasq-base")
    if spec.broker and not broker.have_mosquitto():
        raise LabError(f"{broker.MOSQUITTO} is missing; apt-get install mosquitto (or "
                       "`desanet lab up --no-broker` for a lab without the region's broker)")
    if lab_namespaces(plan.prefix) or plan.state_dir.exists():
        lab_down(plan.prefix)
    try:
        _prepare_files(plan, config_text)
        for cmd in p.topology_commands(plan):
            netns.ip(*cmd)
        for key, value in p.GATEWAY_SYSCTLS:
            netns.set_sysctl(plan.gw, key, value)
        services.start_wan_services(plan)
        if spec.broker:
            broker.start_broker(plan, signing)
        meta: dict[str, Any] = {
            "prefix": plan.prefix, "clients": len(plan.clients),
            "gateway": spec.start_gateway, "portal_url": config.portal_url,
            "portal_ip_url": _ip_url(config.lan_ip, config.portal.http_port),
            "broker": broker.describe(plan) if spec.broker else None,
        }
        plan.info_path.write_text(json.dumps(meta, indent=2) + "\n")
        if spec.start_gateway:
            services.start_gateway(plan)
            if spec.dhcp:
                services.run_dhcp(plan)
    except BaseException:
        lab_down(plan.prefix)
        raise
    return lab_status(plan.prefix)


def lab_device_cert(site: str, prefix: str = p.DEFAULT_PREFIX) -> pki.Pair:
    """A certificate (and key) for another gateway ``site`` from the CA of running lab
    ``prefix``: the lab's broker gives it ``desanet/v1/<site>/#`` and nothing else."""
    return broker.device_cert(prefix, site)


def lab_dhcp(prefix: str = p.DEFAULT_PREFIX) -> dict[str, str]:
    """Run one-shot DHCP in every client of a running lab; {namespace: ipv4}."""
    info = lab_status(prefix)
    if not info.present:
        raise LabError(f"no lab with prefix {prefix!r} is up; run `desanet lab up` first")
    plan = p.plan_lab(LabSpec(prefix=prefix, clients=max(1, len(info.clients))))
    return services.run_dhcp(plan)


def _ip_url(ip: str, port: int) -> str:
    return f"http://{ip}/" if port == 80 else f"http://{ip}:{port}/"


def _prepare_files(plan: p.LabPlan, config_text: str) -> None:
    for sub in ("state", "run", "logs"):
        (plan.state_dir / sub).mkdir(parents=True, exist_ok=True)
    plan.state_dir.chmod(0o755)
    plan.config_path.write_text(config_text)
    plan.dhcp_script.write_text(p.udhcpc_script())
    plan.dhcp_script.chmod(0o755)
    # `ip netns exec` shows /etc/netns/NAME/resolv.conf as /etc/resolv.conf:
    # the gateway and WAN use the ISP resolver; clients wait for DHCP (no
    # nameserver line, so nothing ever goes to the host's resolvers).
    for ns in (plan.gw, plan.wan):
        _write_resolv(ns, p.resolv_conf([p.ISP_RESOLVER], "desanet lab: the ISP resolver"))
    for c in plan.clients:
        _write_resolv(c.ns, p.resolv_conf([], "desanet lab: waiting for DHCP"))


def _write_resolv(ns: str, text: str) -> None:
    d = p.NETNS_ETC / ns
    d.mkdir(parents=True, exist_ok=True)
    (d / "resolv.conf").write_text(text)


def lab_down(prefix: str = p.DEFAULT_PREFIX) -> None:
    """Remove every trace of lab ``prefix``: processes, namespaces, files."""
    p.validate_prefix(prefix)
    names = lab_namespaces(prefix)
    pids = sorted({pid for ns in names for pid in netns.namespace_pids(ns)})
    netns.stop_pids(pids)
    netns.reap_children(prefix)
    problems: list[str] = []
    for ns in names:
        proc = netns.run([netns.IP, "netns", "del", ns], timeout=15, check=False)
        if proc.returncode != 0:
            problems.append(f"{ns}: {proc.stderr.strip()}")
    if p.NETNS_ETC.is_dir():
        for d in p.NETNS_ETC.iterdir():
            if p.owns_namespace(prefix, d.name):
                shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(p.state_dir(prefix), ignore_errors=True)
    if problems:
        raise LabError("could not delete namespaces: " + "; ".join(problems))


def _cidrs(entries: list[dict[str, Any]], skip_loopback: bool = True) -> list[str]:
    out = []
    for a in entries:
        if skip_loopback and a["address"] in ("127.0.0.1", "::1"):
            continue
        out.append(f"{a['address']}/{a['prefixlen']}")
    return out


def lab_status(prefix: str = p.DEFAULT_PREFIX) -> LabInfo:
    """Observe lab ``prefix`` as it is now (works after a crash, too)."""
    p.validate_prefix(prefix)
    names = set(lab_namespaces(prefix))
    sd = p.state_dir(prefix)
    meta: dict[str, Any] = {}
    with contextlib.suppress(OSError, json.JSONDecodeError):
        meta = json.loads((sd / "lab.json").read_text())
    ks = sorted(int(m.group(1)) for ns in names if (m := re.fullmatch(rf"{prefix}-c(\d+)", ns)))
    clients = []
    for k in ks:
        ns = client_ns(prefix, k)
        addrs = netns.addresses(ns, p.CLIENT_INTERFACE)
        ipv4 = next((a["address"] for a in addrs
                     if a["family"] == "ipv4" and a["scope"] == "global"), None)
        clients.append(ClientInfo(name=ns, mac=p.client_mac(k), ipv4=ipv4,
                                  addresses=_cidrs(addrs)))
    wan, gw = p.wan_ns(prefix), p.gw_ns(prefix)
    pid = _read_pid(sd / "gateway.pid")
    running = pid is not None and netns.pid_alive(pid) and gw in names and (
        pid in netns.namespace_pids(gw))
    mqtt = meta.get("broker")
    if isinstance(mqtt, dict):
        bpid = _read_pid(Path(mqtt["pidfile"]))
        mqtt = {**mqtt, "pid": bpid, "running": bpid is not None and netns.pid_alive(bpid)
                and wan in names and bpid in netns.namespace_pids(wan)}
    else:
        mqtt = None
    return LabInfo(
        prefix=prefix, wan=wan, gw=gw, clients=clients,
        wan_addresses=_cidrs(netns.addresses(wan)) if wan in names else [],
        gw_addresses=_cidrs(netns.addresses(gw)) if gw in names else [],
        gateway_pid=pid, gateway_running=running,
        portal_url=meta.get("portal_url", f"http://{p.PORTAL_HOSTNAME}/"),
        portal_ip_url=meta.get("portal_ip_url", f"http://{p.LAN_IP}/"),
        state_dir=str(sd), present=bool(names), broker=mqtt,
    )


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class Lab:
    """Context manager around one lab: ``with Lab(LabSpec(prefix="t1")) as lab:``."""

    def __init__(self, spec: LabSpec | None = None, **overrides: Any) -> None:
        self.spec = replace(spec or LabSpec(), **overrides)
        self.info: LabInfo | None = None

    @property
    def prefix(self) -> str:
        return self.spec.prefix

    def ns(self, role: str) -> str:
        """Namespace for "gw", "wan", "c1", ..."""
        return p.resolve_ns(self.prefix, role)

    def up(self) -> LabInfo:
        self.info = lab_up(self.spec)
        return self.info

    def down(self) -> None:
        lab_down(self.prefix)
        self.info = None

    def status(self) -> LabInfo:
        return lab_status(self.prefix)

    def exec(self, role: str, argv: Sequence[str], timeout: float = 30.0,
             check: bool = False) -> subprocess.CompletedProcess[str]:
        return run_in(self.ns(role), argv, timeout=timeout, check=check)

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()
