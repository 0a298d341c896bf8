"""The fakes beside the adapters behave like the real ones where the core can tell.

(The store's fake has its own contract test against SQLite:
test_store_contract.py.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.errors import FirewallError, ServiceError, ShapingError
from gateway.firewall.fake import FakeFirewall
from gateway.kernel import KernelWorker
from gateway.model import Session
from gateway.netinfo.fake import FakeNeighbours
from gateway.netinfo.neighbours import KernelNeighbours, Neighbours
from gateway.services.dnsmasq import Dnsmasq
from gateway.services.fake import FakeDhcpServer
from gateway.shaping.fake import FakeShaper
from gateway.shaping.plan import DeviceTree, HtbClass

from .conftest import make_config

NOW = 1_700_000_000
A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def sess(mac: str, ip: str, expires: int = NOW + 3600, idle: int = 600) -> Session:
    return Session(mac, ip, NOW, expires, idle, "terms")


# -- firewall ----------------------------------------------------------------------


async def test_fake_firewall_sets_follow_the_planner_rules(cfg: Config) -> None:
    fw = FakeFirewall()
    s1, s2 = sess(A, "10.42.0.5"), sess(B, "10.42.0.6", expires=NOW + 60)
    await fw.apply(cfg, [s1, s2, sess("02:00:00:00:00:0c", "10.42.0.7", expires=NOW)], NOW)
    # first apply (no table yet): every unexpired session gets one fresh idle window
    assert await fw.authorized_clients() == {(A, "10.42.0.5"): 3600, (B, "10.42.0.6"): 60}
    assert await fw.active_clients() == {(A, "10.42.0.5"): 600, (B, "10.42.0.6"): 60}
    del fw.active[(B, "10.42.0.6")]  # B went idle
    await fw.apply(cfg, [s1, s2], NOW + 10, carry_garden=False)
    assert await fw.active_clients() == {(A, "10.42.0.5"): 600}  # a re-apply keeps B idle
    assert (fw.applied, fw.last_config, fw.last_carry_garden) == (2, cfg, False)
    await fw.authorize(s2, NOW + 10, "1:106")
    assert fw.active[(B, "10.42.0.6")] == 50 and fw.classes == {"10.42.0.6": "1:106"}
    await fw.revoke(B, "10.42.0.6", "1:106")
    assert fw.revoke_log == [(B, "10.42.0.6", "1:106")] and fw.classes == {}
    assert (B, "10.42.0.6") not in await fw.authorized_clients()


async def test_fake_firewall_failure_changes_nothing(cfg: Config) -> None:
    fw = FakeFirewall()
    fw.fail_next = FirewallError("nftables refused")
    with pytest.raises(FirewallError):
        await fw.authorize(sess(A, "10.42.0.5"), NOW, None)
    assert fw.authorized == {} and fw.authorize_log == []
    await fw.authorize(sess(A, "10.42.0.5"), NOW, None)  # fires once
    fw.fail_on["active_clients"] = FirewallError("read failed")
    await fw.revoke(A, "10.42.0.5", None)  # armed for another method: not this one
    with pytest.raises(FirewallError):
        await fw.active_clients()


# -- shaper ------------------------------------------------------------------------


def tree(*minors: int, rate: int = 1_000_000) -> DeviceTree:
    root = HtbClass(1, None, 10_000_000, 10_000_000, 0, "root")
    return DeviceTree("br-lan", "down", (root, *(HtbClass(m, 1, rate, rate, 1, "") for m in minors)))


async def test_fake_shaper_counts_the_real_diff() -> None:
    sh = FakeShaper(devices=["br-lan"])
    assert sh.leaf_kind is None
    assert await sh.reconcile(tree(100, 101)) == 3
    assert sh.leaf_kind == "fq_codel"
    assert await sh.reconcile(tree(100, 101)) == 0
    assert await sh.reconcile(tree(100, 102)) == 2  # delete 101, add 102
    assert await sh.reconcile(tree(100, 102, rate=2_000_000)) == 2  # two changes in place
    await sh.upsert("br-lan", HtbClass(103, 1, 5, 5, 1, ""))
    await sh.delete("br-lan", HtbClass(100, 1, 5, 5, 1, ""))
    assert sorted(sh.classes["br-lan"]) == [1, 102, 103]
    sh.set_stats("br-lan", 102, bytes=1500, packets=1)
    stats = await sh.stats("br-lan")
    assert stats[102].bytes == 1500 and stats[103].bytes == 0
    with pytest.raises(ShapingError, match="wan9"):
        await sh.reconcile(DeviceTree("wan9", "up", ()))
    await sh.remove("br-lan")
    assert "br-lan" not in sh.classes


# -- neighbours ------------------------------------------------------------------------


async def test_fake_neighbours_look_up_like_the_real_ones(tmp_path: Path) -> None:
    leases = tmp_path / "dnsmasq.leases"
    leases.write_text(f"1700000000 {A.upper()} 192.0.2.55 phone *\n")
    worker = KernelWorker()
    real = KernelNeighbours(Neighbours(str(leases)), worker)
    fake = FakeNeighbours(leases={"192.0.2.55": A.upper()})
    try:
        # 192.0.2.0/24 (TEST-NET-1) is in no neighbour table: both answer from the leases
        for port in (real, fake):
            assert await port.leases() == {"192.0.2.55": A}
            assert await port.mac_of("192.0.2.55") == A
            assert await port.ip_of(A.upper()) == "192.0.2.55"
            assert await port.mac_of("192.0.2.56") is None
            assert await port.ip_of(B) is None
    finally:
        await real.close()
        worker.shutdown()
    fake.add("192.0.2.60", B, lease=False)  # in the neighbour table only
    assert await fake.mac_of("192.0.2.60") == B and await fake.ip_of(B) == "192.0.2.60"


# -- DHCP server ------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="needs the dnsmasq binary (--test)")
async def test_fake_dhcp_server_changes_when_dnsmasq_would(tmp_path: Path) -> None:
    real = Dnsmasq.in_dirs("dnsmasq", str(tmp_path / "state"), str(tmp_path / "run"))
    fake = FakeDhcpServer(str(tmp_path / "state"), str(tmp_path / "run"))
    base = make_config()
    configs = [
        base,
        base,
        make_config(portal={"terms_en": "New terms"}),  # not dnsmasq's business
        make_config(dhcp={"range_start": "10.42.0.100", "range_end": "10.42.0.200"}),
        base,
        # dns: the walled garden is the pre-login instance's and the daemon's business
        make_config(walled_garden={"hostnames": ["layanan.go.id"]}),
        make_config(programs={"dnsmasq": shutil.which("dnsmasq")}),  # same text, new binary
    ]
    answers = [(await real.configure(c), await fake.configure(c)) for c in configs]
    assert [r for r, _ in answers] == [f for _, f in answers] == [True, False, False, True, True,
                                                                 False, True]
    assert fake.text == (tmp_path / "run" / "dnsmasq.conf").read_text()
    assert len(fake.configs) == 4


async def test_dnsmasq_refusing_a_config_keeps_the_running_one(tmp_path: Path) -> None:
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text("# running\n")
    fake_binary = tmp_path / "dnsmasq"
    fake_binary.write_text("#!/bin/sh\necho 'dnsmasq: bad option at line 3' >&2\nexit 1\n")
    fake_binary.chmod(0o755)
    dm = Dnsmasq("dnsmasq", str(conf), str(tmp_path / "dnsmasq.pid"),
                 state_dir=str(tmp_path), run_dir=str(tmp_path))
    with pytest.raises(ServiceError, match="bad option at line 3"):
        await dm.configure(make_config(programs={"dnsmasq": str(fake_binary)}))
    assert dm.binary == "dnsmasq"
    assert conf.read_text() == "# running\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dnsmasq", "dnsmasq.conf"]


async def test_fake_dhcp_server_refusals(cfg: Config) -> None:
    dhcp = FakeDhcpServer()
    dhcp.refuse_next_configure = True
    with pytest.raises(ServiceError):
        await dhcp.configure(cfg)
    assert dhcp.configs == [] and await dhcp.configure(cfg)
    dhcp.refuse_next_start = True
    with pytest.raises(ServiceError):
        await dhcp.start()
    assert not dhcp.running and dhcp.pid is None
    await dhcp.start()
    await dhcp.restart()
    assert dhcp.running and (dhcp.starts, dhcp.restart_count, dhcp.stops) == (2, 1, 1)
    dhcp.crash_and_recover()
    assert dhcp.restarts == 1
