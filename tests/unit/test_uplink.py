"""The uplink state: the transition table, the monitor's thresholds, the service,
the prober's pure parts. FakeClock and the fake prober; nothing sleeps."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from gateway.clock import FakeClock
from gateway.config import Config
from gateway.core.events import EventBus, UplinkChanged
from gateway.core.lifecycle import IllegalTransition
from gateway.core.uplink import (
    UPLINK,
    ProbeResult,
    UplinkMonitor,
    UplinkService,
    UplinkStatus,
    probe_targets,
)
from gateway.errors import ConfigError
from gateway.netinfo.fake_uplink import FakeUplinkProber
from gateway.netinfo.uplink import (
    UplinkProber,
    dns_query,
    is_answer_to,
    probe_dns,
    resolvers_in,
    uplink_is_up,
)
from tests.unit.conftest import make_config

NOW = 1_700_000_000
OK = ProbeResult(True, 12.5)
FAIL = ProbeResult(False, None, "timeout")


def test_table_is_exactly_the_documented_moves() -> None:
    expected = {
        ("unknown", "recovered"): "up", ("unknown", "failed"): "down",
        ("unknown", "link_lost"): "down", ("up", "failed"): "down",
        ("up", "link_lost"): "down", ("down", "recovered"): "up",
    }
    got = {(s, e): UPLINK.next(s, e) for s, e in UPLINK.pairs() if UPLINK.is_legal(s, e)}
    assert got == expected
    assert len(list(UPLINK.pairs())) == 9  # 3 states x 3 events: the other 3 are illegal
    with pytest.raises(IllegalTransition, match="recovered is not allowed in state up"):
        UPLINK.next("up", "recovered")


def test_first_good_round_decides_up_and_stamps_the_time() -> None:
    clock = FakeClock(NOW)
    mon = UplinkMonitor(clock)
    assert mon.status.state == "unknown"
    clock.advance(3)
    changed = mon.round(OK)
    assert changed is not None and changed.state == "up"
    assert changed.since == NOW + 3 and changed.latency_ms == 12.5 and changed.reason == "probes"
    assert mon.round(OK) is None  # no change, no news


def test_down_only_after_fail_after_rounds_in_a_row() -> None:
    clock = FakeClock(NOW)
    mon = UplinkMonitor(clock, fail_after=3, recover_after=2)
    mon.round(OK)
    # two failures, then a success: the counter starts again (no flapping on lost packets)
    assert mon.round(FAIL) is None and mon.round(FAIL) is None
    assert mon.round(OK) is None and mon.status.state == "up"
    assert mon.round(FAIL) is None and mon.round(FAIL) is None
    assert mon.status.latency_ms is None  # the last round failed
    clock.advance(6)
    changed = mon.round(FAIL)
    assert changed is not None and changed.state == "down" and changed.since == NOW + 6
    assert mon.round(FAIL) is None  # still down: nothing fired


def test_up_again_only_after_recover_after_good_rounds() -> None:
    mon = UplinkMonitor(FakeClock(NOW), fail_after=1, recover_after=2)
    mon.round(FAIL)
    assert mon.status.state == "down"
    assert mon.round(OK) is None  # one lucky answer is not enough
    assert mon.round(FAIL) is None
    assert mon.round(OK) is None
    changed = mon.round(OK)
    assert changed is not None and changed.state == "up"


def test_loss_is_the_share_of_failed_observations_among_the_last_twenty() -> None:
    mon = UplinkMonitor(FakeClock(NOW), fail_after=100)
    assert mon.status.loss_pct is None and mon.status.as_json("UTC")["loss_pct"] is None
    for _ in range(3):
        mon.round(OK)
    mon.round(FAIL)
    assert mon.status.loss_pct == 25.0  # 1 of 4
    mon.link_lost()  # no link: nothing reached a target either
    assert mon.status.loss_pct == 40.0
    for _ in range(20):  # the window moves on: old failures fall out
        mon.round(OK)
    assert mon.status.loss_pct == 0.0 and mon.status.as_json("UTC")["loss_pct"] == 0.0


def test_link_loss_is_down_at_once_and_from_unknown_too() -> None:
    mon = UplinkMonitor(FakeClock(NOW), fail_after=3)
    changed = mon.link_lost()
    assert changed is not None and changed.state == "down" and changed.reason == "link"
    assert mon.link_lost() is None
    mon2 = UplinkMonitor(FakeClock(NOW))
    mon2.round(OK)
    changed = mon2.link_lost()
    assert changed is not None and changed.state == "down"


def test_unknown_goes_down_after_failures_without_a_first_success() -> None:
    mon = UplinkMonitor(FakeClock(NOW), fail_after=2)
    assert mon.round(FAIL) is None and mon.status.state == "unknown"
    changed = mon.round(FAIL)
    assert changed is not None and changed.state == "down"


def test_status_json_has_epoch_and_local_iso() -> None:
    st = UplinkStatus("down", NOW, "link", None, NOW + 4)
    data = st.as_json("Asia/Makassar")
    assert data == {"state": "down", "since": NOW, "since_iso": "2023-11-15T06:13:20+08:00",
                    "latency_ms": None, "reason": "link", "checked": NOW + 4, "loss_pct": None}


# -- probe targets (pure) --------------------------------------------------------------------


def test_targets_default_to_dns_upstreams_then_system_resolvers_never_loopback() -> None:
    cfg = make_config(dhcp={"upstream_dns": ["192.0.2.1", "192.0.2.1", "127.0.0.1"]})
    assert probe_targets(cfg, ["198.51.100.9"]) == (["192.0.2.1"], [])
    assert probe_targets(make_config(), ["127.0.0.53", "198.51.100.9"]) == (["198.51.100.9"], [])
    cfg = make_config(uplink={"probe_dns": ["203.0.113.1"], "probe_tcp": ["1.1.1.1:443",
                                                                          "[2001:db8::1]:80"]})
    assert probe_targets(cfg, ["198.51.100.9"]) == (
        ["203.0.113.1"], [("1.1.1.1", 443), ("2001:db8::1", 80)])


@pytest.mark.parametrize("bad", ["example.com:443", "1.1.1.1", "1.1.1.1:0", "1.1.1.1:x"])
def test_probe_tcp_must_be_an_ip_and_port(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"uplink\.probe_tcp"):
        make_config(uplink={"probe_tcp": [bad]})
    # positive control beside it
    assert make_config(uplink={"probe_tcp": ["192.0.2.7:80"]}).uplink.probe_tcp == ["192.0.2.7:80"]


# -- the service ---------------------------------------------------------------------------------


def service(cfg: Config | None = None, **prober: Any
            ) -> tuple[UplinkService, FakeUplinkProber, EventBus, FakeClock]:
    clock = FakeClock(NOW)
    bus = EventBus(clock)
    fake = FakeUplinkProber(**prober)
    current = cfg or make_config()
    return UplinkService(lambda: current, fake, bus, clock), fake, bus, clock


async def test_service_publishes_changes_and_tells_listeners() -> None:
    svc, fake, bus, clock = service()
    heard: list[str] = []

    async def listener(st: UplinkStatus) -> None:
        heard.append(st.state)

    svc.listeners.append(listener)
    await svc.check()
    await svc.check()
    assert svc.status.state == "up" and not svc.down
    fake.reachable = False
    for _ in range(3):
        clock.advance(2)
        await svc.check()
    assert svc.down
    fake.link = False
    await svc.check()  # already down: nothing new
    fake.link, fake.reachable = True, True
    await svc.check()
    await svc.check()
    assert [s.event for s in bus.since(0)] == [
        UplinkChanged(True, NOW, "probes", 20.0),
        UplinkChanged(False, NOW + 6, "probes", None),
        UplinkChanged(True, NOW + 6, "probes", 20.0),
    ]
    assert heard == ["up", "down", "up"]
    # a round ends before the next is due (the loop would skip a turn otherwise)
    assert fake.rounds[0] == (["192.0.2.53"], [], 1.5)


async def test_link_loss_skips_the_probes() -> None:
    svc, fake, bus, _ = service(link=False)
    await svc.check()
    assert svc.down and svc.status.reason == "link" and fake.rounds == []
    assert bus.since(0)[0].event == UplinkChanged(False, NOW, "link", None)


async def test_without_probe_targets_the_link_decides() -> None:
    svc, fake, _, _ = service(resolvers=())
    await svc.check()
    assert svc.status.state == "up" and fake.rounds == []


async def test_thresholds_follow_a_config_reload() -> None:
    holder = [make_config()]
    clock = FakeClock(NOW)
    fake = FakeUplinkProber()
    svc = UplinkService(lambda: holder[0], fake, EventBus(clock), clock)
    await svc.check()
    holder[0] = make_config(uplink={"fail_after": 1})
    fake.reachable = False
    await svc.check()
    assert svc.down


async def test_a_failing_listener_is_retried_and_does_not_stop_the_others() -> None:
    svc, _, _, _ = service(link=False)
    calls: list[str] = []

    async def broken(st: UplinkStatus) -> None:
        calls.append("broken")
        if calls.count("broken") == 1:
            raise RuntimeError("dnsmasq refused")

    async def fine(st: UplinkStatus) -> None:
        calls.append("fine")

    svc.listeners += [broken, fine]
    await svc.check()
    assert calls == ["broken", "fine"]
    await svc.check()  # no change, but the failed listener hears it again
    assert calls == ["broken", "fine", "broken"]
    await svc.check()
    assert calls == ["broken", "fine", "broken"]


# -- the prober's pure parts, and a real DNS exchange on loopback ----------------------------


def test_link_needs_carrier_and_a_default_route(tmp_path: Any) -> None:
    dev = tmp_path / "wan0"
    dev.mkdir()
    (dev / "operstate").write_text("up\n")
    route = tmp_path / "route"
    head = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
    route.write_text(head + "wan0\t00000000\t0100400A\t0003\t0\t0\t0\t00000000\n")
    assert uplink_is_up("wan0", str(tmp_path), str(route))
    (dev / "operstate").write_text("lowerlayerdown\n")
    assert not uplink_is_up("wan0", str(tmp_path), str(route))
    (dev / "operstate").write_text("up\n")
    route.write_text(head + "wan0\t0000400A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n")
    assert not uplink_is_up("wan0", str(tmp_path), str(route))
    assert not uplink_is_up("eth9", str(tmp_path), str(route))


def test_resolv_conf_and_dns_messages() -> None:
    text = "# x\nnameserver 192.0.2.53\nsearch lab\nnameserver fe80::1%eth0\n"
    assert resolvers_in(text) == ["192.0.2.53", "fe80::1"]
    q = dns_query(0x1234)
    assert q[:2] == b"\x12\x34" and len(q) == 17
    reply = b"\x12\x34\x81\x83" + q[4:]  # NXDOMAIN still proves the resolver answered
    assert is_answer_to(reply, 0x1234)
    assert not is_answer_to(q, 0x1234)  # our own query echoed back is no answer
    assert not is_answer_to(b"\x43\x21\x81\x80" + q[4:], 0x1234)


async def test_real_dns_probe_against_a_loopback_responder() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    loop = asyncio.get_running_loop()

    async def answer_once() -> None:
        data, addr = await loop.sock_recvfrom(sock, 512)
        await loop.sock_sendto(sock, data[:2] + b"\x81\x80" + data[4:], addr)

    responder = asyncio.create_task(answer_once())
    try:
        latency = await probe_dns("127.0.0.1", 2.0, port=port)
        assert latency >= 0
        await responder
        # positive control's counterpart: nobody answers -> the probe times out
        with pytest.raises((TimeoutError, OSError)):
            await probe_dns("127.0.0.1", 0.2, port=port)
    finally:
        sock.close()


async def test_prober_round_is_ok_when_any_target_answers() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = closed.getsockname()[1]
    closed.close()  # a port nobody listens on: refused
    try:
        prober = UplinkProber()
        good = await prober.probe([], [("127.0.0.1", dead), ("127.0.0.1", port)], 2.0)
        assert good.ok and good.latency_ms is not None
        bad = await prober.probe([], [("127.0.0.1", dead)], 2.0)
        assert not bad.ok and "ConnectionRefusedError" in bad.detail
    finally:
        server.close()
        await server.wait_closed()


# -- dnsmasq's offline answers -------------------------------------------------------------------


def test_offline_servers_only_while_down() -> None:
    from gateway.services.dnsmasq import render_dnsmasq_conf, servers_text

    cfg = make_config(walled_garden={"hostnames": ["layanan.lab", "dukcapil.go.id"]},
                      dhcp={"upstream_dns": ["192.0.2.53", "192.0.2.54"]})
    conf = render_dnsmasq_conf(cfg, "/s", "/r").splitlines()
    assert "servers-file=/r/dnsmasq.servers" in conf and "server=192.0.2.53" in conf
    up = servers_text(cfg, None)
    assert "server=" not in up  # positive control: the upstreams alone while up
    assert servers_text(cfg, "127.0.0.1#5999").splitlines()[1:] == [
        "server=127.0.0.1#5999",
        "server=/layanan.lab/dukcapil.go.id/192.0.2.53",
        "server=/layanan.lab/dukcapil.go.id/192.0.2.54"]


@pytest.mark.skipif(not __import__("os").path.exists("/usr/sbin/dnsmasq"), reason="needs dnsmasq")
async def test_dnsmasq_accepts_the_servers_file_and_switches_back(tmp_path: Any) -> None:
    from gateway.services.dnsmasq import Dnsmasq

    dm = Dnsmasq.in_dirs("/usr/sbin/dnsmasq", str(tmp_path), str(tmp_path))
    dm.offline_server = "127.0.0.1#5999"
    cfg = make_config(programs={"dnsmasq": "/usr/sbin/dnsmasq"},
                      walled_garden={"hostnames": ["layanan.lab"]})
    assert await dm.configure(cfg)  # `dnsmasq --test` reads the servers file too
    servers = tmp_path / "dnsmasq.servers"
    assert "server=" not in servers.read_text()
    assert await dm.set_uplink_down(True, cfg)  # not running: nothing to signal
    assert "server=127.0.0.1#5999" in servers.read_text()
    assert not await dm.set_uplink_down(True, cfg)
    assert not await dm.configure(cfg)  # a config apply while down keeps it
    assert "server=127.0.0.1#5999" in servers.read_text()
    assert await dm.set_uplink_down(False, cfg)
    assert "server=" not in servers.read_text()


def test_offline_answers_a_with_the_gateway_and_nodata_for_the_rest() -> None:
    from gateway.services.offline_dns import offline_answer

    def query(qtype: int, ident: int = 0xBEEF) -> bytes:
        name = b"".join(bytes([len(x)]) + x for x in (b"internet", b"lab")) + b"\0"
        return (ident.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01"
                + name + qtype.to_bytes(2, "big") + b"\x00\x01" + b"\x00" * 11)

    a = offline_answer(query(1), "10.42.0.1")
    assert a is not None and a[:2] == b"\xbe\xef"
    assert a[2:4] == b"\x81\x80" and a[6:8] == b"\x00\x01"  # response, RD, RA; one answer
    assert a.endswith(b"\x00\x01\x00\x01\x00\x00\x00\x00\x00\x04\x0a\x2a\x00\x01")  # TTL 0
    aaaa = offline_answer(query(28), "10.42.0.1")
    assert aaaa is not None and aaaa[2:4] == b"\x81\x80" and aaaa[6:8] == b"\x00\x00"  # NODATA
    assert offline_answer(a, "10.42.0.1") is None  # a response is never answered
    assert offline_answer(b"\x00" * 5, "10.42.0.1") is None
    assert offline_answer(query(1)[:20], "10.42.0.1") is None  # cut in the name


async def test_offline_responder_answers_over_udp() -> None:
    from gateway.services.offline_dns import OfflineDns

    dns = OfflineDns(lambda: "10.42.0.1")
    await dns.start()
    try:
        assert dns.server == f"127.0.0.1#{dns.port}"
        latency = await probe_dns("127.0.0.1", 2.0, port=dns.port)  # any answer counts
        assert latency >= 0
    finally:
        await dns.close()


# -- `desanet status` -------------------------------------------------------------------------------


def test_status_line_in_local_time() -> None:
    from gateway.cli_format import uplink_status_line

    down = {"state": "down", "since": NOW, "since_iso": "x", "latency_ms": None, "reason": "link"}
    assert uplink_status_line(down, "Asia/Jakarta") == (
        "  uplink:          DOWN since 15 Nov 2023 05:13 WIB (link or default route lost)")
    up = {"state": "up", "since": NOW, "latency_ms": 23.4, "reason": "probes"}
    assert uplink_status_line(up, "Asia/Jayapura") == (
        "  uplink:          up since 15 Nov 2023 07:13 WIT, last probe 23 ms")
    assert "unknown" in uplink_status_line({"state": "unknown"})
    assert "unknown" in uplink_status_line(None)  # an older daemon sends nothing


async def test_status_answer_carries_the_uplink(tmp_path: Any) -> None:
    from tests.unit.corekit import build_core

    core = build_core(tmp_path)
    await core.start()
    data = await core.ops.status()
    assert data["uplink"]["state"] == "unknown" and data["timezone"] == "Asia/Jakarta"
    svc = UplinkService(core.holder.get, FakeUplinkProber(link=False), core.bus, core.clock)
    core.ops.uplink = svc
    await svc.check()
    data = await core.ops.status()
    assert data["uplink"] == {"state": "down", "since": core.clock.now(),
                              "since_iso": data["uplink"]["since_iso"], "latency_ms": None,
                              "reason": "link", "checked": core.clock.now(),
                              "loss_pct": 100.0}
    assert data["uplink"]["since_iso"].endswith("+07:00")


async def test_ticks_run_a_round_per_interval_a_poke_at_once_and_follow_a_reload() -> None:
    holder = [make_config(uplink={"probe_interval": "3s"})]
    clock = FakeClock(NOW)
    fake = FakeUplinkProber()
    svc = UplinkService(lambda: holder[0], fake, EventBus(clock), clock)
    await svc.tick()  # the first tick observes at once
    assert len(fake.rounds) == 1
    for _ in range(2):
        clock.advance(1)
        await svc.tick()
    assert len(fake.rounds) == 1  # 2 s later: not due yet
    clock.advance(1)
    await svc.tick()
    assert len(fake.rounds) == 2  # 3 s: due
    svc.poke()  # a netlink event: look now
    await svc.tick()
    assert len(fake.rounds) == 3
    holder[0] = make_config(uplink={"probe_interval": "10s"})  # a config apply
    clock.advance(3)
    await svc.tick()
    assert len(fake.rounds) == 4  # due by the old interval; the next one by the new
    clock.advance(9)
    await svc.tick()
    assert len(fake.rounds) == 4
    clock.advance(1)
    await svc.tick()
    assert len(fake.rounds) == 5 and fake.rounds[-1][2] == 7.5


async def test_run_soon_runs_a_job_now_instead_of_at_its_interval(tmp_path: Any) -> None:
    from tests.unit.corekit import build_core

    core = build_core(tmp_path)
    ran = asyncio.Event()

    async def job() -> None:
        ran.set()

    core.reconciler.every("uplink", 3600.0, job)  # not due for an hour of (fake) time
    loop_task = asyncio.create_task(core.reconciler.run())
    try:
        core.reconciler.run_soon("nothing-by-that-name")  # ignored
        await asyncio.sleep(0)
        assert not ran.is_set()
        core.reconciler.run_soon("uplink")
        await asyncio.wait_for(ran.wait(), 5)
    finally:
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
