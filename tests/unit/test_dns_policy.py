"""DNS before login, the walled garden and the gateway's own names (issue 9, part dns)."""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from gateway.clock import FakeClock
from gateway.config.schema import Config
from gateway.core.garden import GardenService, exact_names
from gateway.errors import ConfigError
from gateway.firewall.fake import FakeFirewall
from gateway.firewall.planner import (
    GARDEN_TTL_CAP,
    GARDEN_TTL_FLOOR,
    PRELOGIN_DNS_PORT,
    garden_timeout,
    plan_garden,
    plan_ruleset,
)
from gateway.services.dnsmasq import Dnsmasq, render_dnsmasq_conf, servers_text
from gateway.services.garden_dns import build_query, parse_answer
from gateway.services.prelogin_dns import (
    CONNECTIVITY_CHECK_HOSTS,
    GATEWAY_NAME_TTL,
    DnsPair,
    hosts_text,
    prelogin_dnsmasq,
    render_prelogin_conf,
)
from tests.unit.conftest import make_config

NOW = 1_700_000_000


def chain(script: str, name: str) -> list[str]:
    match = re.search(rf"  chain {name} \{{\n(.*?)\n  \}}", script, re.S)
    assert match, f"chain {name} missing"
    return [line.strip() for line in match.group(1).splitlines() if line.strip()]


# -- firewall ----------------------------------------------------------------------------------


def test_dns_of_clients_not_logged_in_goes_to_the_prelogin_resolver() -> None:
    script = plan_ruleset(make_config(), [], NOW)
    assert chain(script, "lan_dns") == [
        "ether saddr @trusted_mac goto lan_dns_full",
        "ether saddr . ip saddr @auth4 goto lan_dns_full",
        f"meta l4proto {{ tcp, udp }} redirect to :{PRELOGIN_DNS_PORT}",
    ]
    nat = chain(script, "lan_nat")
    # before the trusted/authorized returns: every query is sorted by who asks
    assert nat.index("meta l4proto { tcp, udp } th dport 53 jump lan_dns") < nat.index(
        "ether saddr @trusted_mac return")


def test_input_guards_see_every_packet_not_only_new_flows() -> None:
    rules = chain(plan_ruleset(make_config(), [], NOW), "lan_input")
    established = rules.index("ct state established,related accept")
    meter = next(i for i, r in enumerate(rules) if "update @dns_meter4" in r)
    guard = next(i for i, r in enumerate(rules) if "th dport 53 ether saddr != @trusted_mac" in r)
    assert meter < established and guard < established
    assert "limit rate over 20/second burst 60 packets } drop" in rules[meter]
    assert rules[guard].endswith("ether saddr . ip saddr != @auth4 drop")
    # after login: a rate of its own on the full resolver (a DNS tunnel's bound), after the
    # guard (only trusted and authorized clients get there), trusted MACs not limited
    authed = next(i for i, r in enumerate(rules) if "update @dns_meter_auth4" in r)
    assert guard < authed < established
    assert rules[authed] == ("meta l4proto { tcp, udp } th dport 53 ether saddr != @trusted_mac "
                             "update @dns_meter_auth4 { ip saddr limit rate over 10/second "
                             "burst 100 packets } drop")
    assert f"meta l4proto {{ tcp, udp }} th dport {{ 53, {PRELOGIN_DNS_PORT} }} accept" in rules


def test_walled_garden_is_tcp_80_and_443_only() -> None:
    cfg = make_config(walled_garden={"addresses": ["203.0.113.0/24"]})
    fwd = chain(plan_ruleset(cfg, [], NOW), "lan_forward")
    garden = [r for r in fwd if "garden" in r]
    assert garden == ["ip daddr @garden4 tcp dport { 80, 443 } accept",
                      "ip daddr @garden_dns4 tcp dport { 80, 443 } accept"]


@pytest.mark.parametrize(("ttl", "timeout"), [
    (0, GARDEN_TTL_FLOOR), (20, GARDEN_TTL_FLOOR), (300, 300), (86400, GARDEN_TTL_CAP),
])
def test_garden_timeout_follows_ttl_within_floor_and_cap(ttl: int, timeout: int) -> None:
    assert garden_timeout(ttl) == timeout


def test_plan_garden_replaces_the_timeout_atomically() -> None:
    lines = plan_garden({"198.51.100.20": 300}).splitlines()
    assert lines == [
        "add element inet desanet garden_dns4 { 198.51.100.20 timeout 300s }",
        "delete element inet desanet garden_dns4 { 198.51.100.20 }",
        "add element inet desanet garden_dns4 { 198.51.100.20 timeout 300s }",
    ]
    assert plan_garden({}) == ""


# -- the full dnsmasq: the gateway's names are its own -----------------------------------------


def test_full_instance_keeps_the_gateways_names_from_dhcp_clients() -> None:
    text = render_dnsmasq_conf(make_config(local_services={"enabled": True}), "/s", "/r")
    lines = text.splitlines()
    assert "host-record=portal.desa,10.42.0.1" in lines
    assert "host-record=layanan.desa,10.42.0.1" in lines
    for name in ("portal", "portal.desa", "layanan", "layanan.desa", "wpad*", "wpad.desa"):
        assert f"dhcp-name-match=set:desanet-reserved,{name}" in lines
    assert "dhcp-ignore-names=tag:desanet-reserved" in lines
    assert "address=/wpad.desa/" in lines and "address=/wpad/" in lines  # NXDOMAIN
    assert not [x for x in lines if x.startswith("address=/portal")]  # a lease could override it


def test_full_instance_fills_no_garden_set() -> None:
    cfg = make_config(walled_garden={"hostnames": ["layanan.go.id", "*.kemendagri.go.id"]})
    assert "nftset" not in render_dnsmasq_conf(cfg, "/s", "/r")
    cfg = make_config(walled_garden={"hostnames": ["layanan.go.id", "*.kemendagri.go.id"]},
                      dhcp={"upstream_dns": ["192.0.2.53"]})
    down = servers_text(cfg, "127.0.0.1#5300")
    assert "server=/layanan.go.id/kemendagri.go.id/192.0.2.53" in down.splitlines()


# -- the pre-login dnsmasq ---------------------------------------------------------------------


def test_prelogin_instance_forwards_only_what_a_client_needs() -> None:
    cfg = make_config(walled_garden={"hostnames": ["layanan.go.id", "*.kemendagri.go.id"]})
    lines = render_prelogin_conf(cfg, "/s", "/r").splitlines()
    assert f"port={PRELOGIN_DNS_PORT}" in lines
    assert "no-resolv" in lines
    assert not [x for x in lines if x.startswith("dhcp-")]  # no DHCP
    assert "address=/#/10.42.0.1" in lines and "local=/#/" in lines
    servers = [x for x in lines if x.startswith("server=")]
    # every forwarded name goes to the full instance, never to an upstream directly
    assert all(x.endswith("/10.42.0.1#53") for x in servers), servers
    forwarded = {name for x in servers for name in x.split("/")[1:-1]}
    assert forwarded == {"desa", "kemendagri.go.id", *CONNECTIVITY_CHECK_HOSTS}
    assert "layanan.go.id" not in forwarded  # exact names: from the daemon's hosts file
    assert "hostsdir=/r/garden-hosts" in lines
    nftset = [x for x in lines if x.startswith("nftset=")]
    assert nftset == ["nftset=/kemendagri.go.id/4#inet#desanet#garden_dns4,"
                      "6#inet#desanet#garden_dns6"]
    assert f"host-record=portal.desa,10.42.0.1,{GATEWAY_NAME_TTL}" in lines
    assert "local-ttl=0" in lines  # every other local answer: asked again after login


def test_prelogin_instance_without_wildcards_fills_no_set() -> None:
    cfg = make_config(walled_garden={"hostnames": ["layanan.go.id"]})
    assert "nftset" not in render_prelogin_conf(cfg, "/s", "/r")


def test_hosts_text() -> None:
    assert hosts_text({"b.go.id": ["192.0.2.2", "192.0.2.1"], "a.go.id": ["192.0.2.9"]}) \
        .splitlines()[1:] == ["192.0.2.9 a.go.id", "192.0.2.1 b.go.id", "192.0.2.2 b.go.id"]


@pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="needs the dnsmasq binary (--test)")
async def test_both_rendered_configs_pass_dnsmasq_test(tmp_path: Path) -> None:
    cfg = make_config(walled_garden={"hostnames": ["layanan.go.id", "*.kemendagri.go.id"]},
                      local_services={"enabled": True})
    full = Dnsmasq.in_dirs("dnsmasq", str(tmp_path / "s"), str(tmp_path / "r"))
    pair = DnsPair(full, prelogin_dnsmasq("dnsmasq", str(tmp_path / "r")))
    assert await pair.configure(cfg) is True  # dnsmasq --test ran on both
    assert await pair.configure(cfg) is False
    assert (tmp_path / "r" / "garden-hosts" / "garden").exists()
    await pair.publish_garden({"layanan.go.id": ["192.0.2.7"]}, cfg)
    assert "192.0.2.7 layanan.go.id" in (tmp_path / "r" / "garden-hosts" / "garden").read_text()


# -- config --------------------------------------------------------------------------------------


def test_garden_wildcards_are_explicit() -> None:
    cfg = make_config(walled_garden={"hostnames": ["*.Kemendagri.go.id.", "layanan.go.id"]})
    assert cfg.walled_garden.hostnames == ["*.kemendagri.go.id", "layanan.go.id"]
    assert exact_names(cfg) == ("layanan.go.id",)
    for bad in ("*.id", "*kemendagri.go.id", "evil.*.go.id", "*"):
        with pytest.raises(ConfigError, match=r"walled_garden\.hostnames\[0\]"):
            make_config(walled_garden={"hostnames": [bad]})


# -- resolving garden names ----------------------------------------------------------------------


def _name(text: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in text.split(".")) + b"\x00"


def _answer(ident: int, qname: str, records: Sequence[tuple[str, int, int, bytes]],
            rcode: int = 0) -> bytes:
    msg = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, len(records), 0, 0)
    msg += _name(qname) + struct.pack("!HH", 1, 1)
    for owner, rtype, ttl, rdata in records:
        msg += _name(owner) + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata
    return msg


def _a(ip: str) -> bytes:
    return bytes(int(x) for x in ip.split("."))


def test_parse_answer_follows_the_chain_from_the_name_only() -> None:
    msg = _answer(7, "layanan.go.id", [
        ("layanan.go.id", 5, 600, _name("edge.cdn.example")),
        ("edge.cdn.example", 1, 60, _a("192.0.2.10")),
        ("attacker.example", 1, 86400, _a("203.0.113.66")),  # not on the chain: ignored
    ])
    assert parse_answer(msg, "layanan.go.id", 7) == [("192.0.2.10", 60)]
    assert parse_answer(msg, "LAYANAN.go.id.", 7) == [("192.0.2.10", 60)]


def test_parse_answer_chain_ttl_is_the_smallest() -> None:
    msg = _answer(7, "a.go.id", [("a.go.id", 5, 30, _name("b.example")),
                                 ("b.example", 1, 3600, _a("192.0.2.1"))])
    assert parse_answer(msg, "a.go.id", 7) == [("192.0.2.1", 30)]


def test_parse_answer_nxdomain_and_errors() -> None:
    assert parse_answer(_answer(1, "a.go.id", [], rcode=3), "a.go.id", 1) == []
    with pytest.raises(ValueError, match="rcode 2"):
        parse_answer(_answer(1, "a.go.id", [], rcode=2), "a.go.id", 1)
    with pytest.raises(ValueError, match="not the answer"):
        parse_answer(_answer(1, "a.go.id", []), "a.go.id", 2)
    loop = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\xc0\x0c"
    with pytest.raises(ValueError):
        parse_answer(loop, "a.go.id", 1)
    assert build_query("a.go.id", 1)[-4:] == struct.pack("!HH", 1, 1)


class FakeResolver:
    def __init__(self) -> None:
        self.answers: dict[str, list[tuple[str, int]] | Exception] = {}
        self.asked: list[str] = []

    async def resolve(self, name: str) -> list[tuple[str, int]]:
        self.asked.append(name)
        answer = self.answers.get(name, [])
        if isinstance(answer, Exception):
            raise answer
        return list(answer)


class Published:
    def __init__(self) -> None:
        self.entries: list[dict[str, list[str]]] = []

    async def __call__(self, entries: Mapping[str, Sequence[str]], cfg: Config) -> None:
        self.entries.append({k: list(v) for k, v in entries.items()})


def _garden(names: list[str]) -> tuple[GardenService, FakeFirewall, FakeResolver, Published,
                                         FakeClock, list[Config]]:
    holder = [make_config(walled_garden={"hostnames": names})]
    fw, res, pub, clock = FakeFirewall(), FakeResolver(), Published(), FakeClock(NOW)
    return GardenService(lambda: holder[0], fw, res, pub, clock), fw, res, pub, clock, holder


async def test_garden_opens_exact_names_for_their_clamped_ttl() -> None:
    svc, fw, res, pub, clock, _ = _garden(["layanan.go.id", "*.kemendagri.go.id"])
    res.answers["layanan.go.id"] = [("192.0.2.10", 20), ("192.0.2.11", 7200)]
    await svc.tick()
    assert res.asked == ["layanan.go.id"]  # the wildcard is the pre-login dnsmasq's
    assert fw.garden == {"192.0.2.10": GARDEN_TTL_FLOOR, "192.0.2.11": GARDEN_TTL_CAP}
    assert pub.entries == [{"layanan.go.id": ["192.0.2.10", "192.0.2.11"]}]
    await svc.tick()  # not due yet: nothing asked, nothing published again
    assert res.asked == ["layanan.go.id"] and len(pub.entries) == 1
    clock.advance(GARDEN_TTL_FLOOR // 2)  # half of the shortest timeout: asked again
    await svc.tick()
    assert res.asked == ["layanan.go.id"] * 2


async def test_garden_never_opens_the_gateway_or_the_lan() -> None:
    svc, fw, res, pub, _, _ = _garden(["layanan.go.id"])
    # while the uplink is down the LAN resolver answers every name with the gateway
    res.answers["layanan.go.id"] = [("10.42.0.1", 0), ("127.0.0.1", 0), ("0.0.0.0", 0)]
    await svc.tick()
    assert fw.garden == {} and pub.entries == [{}]


async def test_garden_keeps_addresses_while_resolving_fails_and_drops_them_later() -> None:
    svc, fw, res, pub, clock, _ = _garden(["layanan.go.id"])
    res.answers["layanan.go.id"] = [("192.0.2.10", 300)]
    await svc.tick()
    res.answers["layanan.go.id"] = TimeoutError()
    clock.advance(150)
    await svc.tick()
    assert svc.entries() == {"layanan.go.id": ["192.0.2.10"]}
    clock.advance(151)  # past its timeout: the kernel dropped it, the hosts file follows
    fw.garden.clear()
    await svc.tick()
    assert svc.entries() == {} and pub.entries[-1] == {} and fw.garden == {}


async def test_garden_puts_back_what_the_kernel_lost() -> None:
    svc, fw, res, _, clock, _ = _garden(["layanan.go.id"])
    res.answers["layanan.go.id"] = [("192.0.2.10", 600)]
    await svc.tick()
    await fw.apply(make_config(), [], NOW, carry_garden=False)  # a rebuild without the set
    assert fw.garden == {}
    clock.advance(10)
    await svc.tick()
    assert fw.garden == {"192.0.2.10": 590}
    assert res.asked == ["layanan.go.id"]  # from what it knew: no extra query


async def test_garden_forgets_names_removed_from_the_config() -> None:
    svc, _, res, pub, _, holder = _garden(["layanan.go.id"])
    res.answers["layanan.go.id"] = [("192.0.2.10", 600)]
    await svc.tick()
    holder[0] = make_config(walled_garden={"hostnames": ["lain.go.id"]})
    await svc.tick()
    assert pub.entries[-1] == {} and res.asked == ["layanan.go.id", "lain.go.id"]


async def test_garden_resolver_against_a_local_server() -> None:
    from gateway.services.garden_dns import GardenResolver

    class Server(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
            ident = struct.unpack("!H", data[:2])[0]
            reply = _answer(ident, "layanan.go.id", [("layanan.go.id", 1, 120, _a("192.0.2.5"))])
            self.transport.sendto(reply, addr)  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Server, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        resolver = GardenResolver(lambda: ("127.0.0.1", port))
        assert await resolver.resolve("layanan.go.id") == [("192.0.2.5", 120)]
    finally:
        transport.close()


class _Part:
    """Stands in for one Dnsmasq supervisor in DnsPair tests."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.running = False
        self.restarts = 0
        self.changes = True
        self.log: list[str] = []

    async def configure(self, cfg: Config) -> bool:
        return self.changes

    async def start(self) -> None:
        self.log.append("start")
        self.running = True

    async def stop(self) -> None:
        self.log.append("stop")
        self.running = False

    async def restart(self) -> None:
        self.log.append("restart")


async def test_dns_pair_restarts_only_what_changed(tmp_path: Path) -> None:
    full, pre = _Part(str(tmp_path)), _Part(str(tmp_path))
    pair = DnsPair(full, pre)  # type: ignore[arg-type]
    assert await pair.configure(make_config()) is True
    await pair.start()
    assert (full.log, pre.log) == (["start"], ["start"])
    full.changes = False  # e.g. a wildcard garden name: the pre-login instance only
    assert await pair.configure(make_config()) is True
    await pair.restart()
    assert (full.log, pre.log) == (["start"], ["start", "restart"])  # DHCP never paused
    pre.changes = False
    assert await pair.configure(make_config()) is False


async def test_dns_pair_start_failure_stops_what_it_started(tmp_path: Path) -> None:
    from gateway.errors import ServiceError

    full, pre = _Part(str(tmp_path)), _Part(str(tmp_path))

    async def refuse() -> None:
        raise ServiceError("dnsmasq-prelogin exited at once")

    pre.start = refuse  # type: ignore[method-assign]
    pair = DnsPair(full, pre)  # type: ignore[arg-type]
    with pytest.raises(ServiceError):
        await pair.start()
    assert full.log == ["start", "stop"] and not full.running


def test_reserved_names_follow_the_configured_hostnames() -> None:
    cfg = make_config(portal={"hostname": "hotspot.sukamaju.example.id"},
                      dhcp={"local_domain": "sukamaju"})
    lines = render_dnsmasq_conf(cfg, "/s", "/r").splitlines()
    assert "host-record=hotspot.sukamaju.example.id,10.42.0.1" in lines
    assert "dhcp-name-match=set:desanet-reserved,hotspot" in lines
    assert "dhcp-name-match=set:desanet-reserved,hotspot.sukamaju" in lines
    assert "address=/wpad.sukamaju/" in lines
    pre = render_prelogin_conf(cfg, "/s", "/r").splitlines()
    assert f"host-record=hotspot.sukamaju.example.id,10.42.0.1,{GATEWAY_NAME_TTL}" in pre
    assert "server=/sukamaju/10.42.0.1#53" in pre
