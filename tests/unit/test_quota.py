"""Data quotas: the nft text of the meters (golden), the byte arithmetic, and the
QuotaService against the fakes (docs/quota.md)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from gateway.core.events import EndReason, SessionEnded
from gateway.core.quota import FLUSH_INTERVAL, QuotaService
from gateway.errors import VoucherError
from gateway.firewall.fake import FakeFirewall
from gateway.firewall.meters import meter_sets, plan_drop_objects, plan_meter, plan_unmeter
from gateway.firewall.planner import plan_authorize, plan_revoke, plan_ruleset
from gateway.meter import (
    Meter,
    MeterReading,
    QuotaUse,
    add_bytes,
    counter_names,
    meter_of,
    parse_objects,
    quota_name,
    voucher_of,
)
from gateway.model import ClientView, Session
from gateway.store.fake import MemoryStore
from tests.unit.conftest import make_config
from tests.unit.corekit import NOW, Core, build_core

A, B, C = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
IP = {A: "10.42.0.101", B: "10.42.0.102", C: "10.42.0.103"}
MB = 1024**2
PLANS = {
    "kuota": {"down": "2mbit", "up": "1mbit", "quota": "5MB"},
    "fair": {"down": "2mbit", "up": "1mbit", "quota_down": "5MB", "after_quota": "slow",
             "fair_use_down": "256kbit", "fair_use_up": "128kbit"},
    "bebas": {"down": "2mbit", "up": "1mbit"},
}


def quota_config(shaping: bool = True) -> Config:
    return make_config(shaping={"enabled": shaping, "plans": PLANS})


def voucher_session(ip: str, code: str, plan: str) -> Session:
    return Session(A, ip, NOW - 60, NOW + 600, 1800, "voucher", code, plan)


# -- the nft text --------------------------------------------------------------------------


def test_object_names_carry_the_code_reversibly_whatever_its_characters() -> None:
    for code in ("ABCDE-FGHJK", "rt05 pak/budi", "✓"):
        down, up = counter_names(code)
        assert re.fullmatch(r"c[du]_[0-9a-f]+", down) and voucher_of(down) == code
        assert voucher_of(up) == code and voucher_of(quota_name("total", code)) == code
    assert voucher_of("garden_dns4") is None and voucher_of("cd_zz") is None


GOLDEN = """\
  counter cd_41414141412d4141414141 { packets 0 bytes 0; }
  counter cd_42424242422d4242424242 { packets 0 bytes 0; }
  counter cu_41414141412d4141414141 { packets 0 bytes 0; }
  counter cu_42424242422d4242424242 { packets 0 bytes 0; }
  quota qd_42424242422d4242424242 { over 5242880 bytes used 700 bytes; }
  quota qt_41414141412d4141414141 { over 5242880 bytes used 300 bytes; }
  map acct_down4 { type ipv4_addr : counter; elements = { 10.42.0.101 : "cd_41414141412d4141414141", 10.42.0.102 : "cd_42424242422d4242424242" }; }
  map acct_up4 { type ipv4_addr : counter; elements = { 10.42.0.101 : "cu_41414141412d4141414141", 10.42.0.102 : "cu_42424242422d4242424242" }; }
  map quota_total4 { type ipv4_addr : quota; elements = { 10.42.0.101 : "qt_41414141412d4141414141" }; }
  map quota_down4 { type ipv4_addr : quota; elements = { 10.42.0.102 : "qd_42424242422d4242424242" }; }
  map quota_up4 { type ipv4_addr : quota; }
  map over4 { type ipv4_addr : verdict; elements = { 10.42.0.101 : drop, 10.42.0.102 : jump fair_use }; }
  map fair_class4 { type ipv4_addr : classid; elements = { 10.42.0.102 : 1:8166 }; }
"""  # noqa: E501


def golden_meters(cfg: Config) -> list[Meter]:
    a = voucher_session("10.42.0.101", "AAAAA-AAAAA", "kuota")
    b = voucher_session("10.42.0.102", "BBBBB-BBBBB", "fair")
    ma = meter_of(cfg, a, (100, 200))
    mb = meter_of(cfg, b, (700, 50), "1:8166")
    assert ma is not None and mb is not None
    return [ma, mb]


def test_meter_objects_and_maps_golden() -> None:
    assert meter_sets(golden_meters(quota_config()), {}) == GOLDEN


def test_a_rebuild_keeps_the_live_tables_counts_and_quota_use() -> None:
    carried = {"cd_41414141412d4141414141": (7, 9000), "qt_41414141412d4141414141": (0, 4242),
               "cu_4f4c44": (1, 77)}  # a voucher gone offline whose bytes were not read yet
    text = meter_sets(golden_meters(quota_config()), carried)
    assert "counter cd_41414141412d4141414141 { packets 7 bytes 9000; }" in text
    assert "quota qt_41414141412d4141414141 { over 5242880 bytes used 4242 bytes; }" in text
    assert "counter cu_4f4c44 { packets 1 bytes 77; }" in text
    # not carried (after a reboot): the quota starts at the store's bytes
    assert "quota qd_42424242422d4242424242 { over 5242880 bytes used 700 bytes; }" in text


def test_ruleset_runs_meters_for_authorized_uploads_and_every_download() -> None:
    cfg = quota_config()
    sessions = [voucher_session("10.42.0.101", "AAAAA-AAAAA", "kuota")]
    script = plan_ruleset(cfg, sessions, NOW, None, golden_meters(cfg))
    assert "@auth4 update @active4 { ether saddr . ip saddr } goto client_up" in script
    forward = script.index("jump lan_forward")
    assert forward < script.index("jump client_down") < script.index(
        'oifname "br-lan" ct state established,related accept')
    up = re.search(r"chain client_up \{\n(.*?)\n  \}", script, re.S)
    assert up is not None and up.group(1).split("\n")[-1].strip() == "accept"
    assert up.group(1).index("quota name") < up.group(1).index("counter name")
    # a meter of an expired session is left out with its session
    assert "10.42.0.102" not in script.split("map acct_down4")[1].split("\n")[0]
    # no per-client rule: the chains do not grow with clients
    assert script.count("quota name") == 4 and script.count("counter name") == 2


def test_without_shaping_slow_plans_have_nothing_to_slow_into() -> None:
    cfg = quota_config(shaping=False)
    m = meter_of(cfg, voucher_session("10.42.0.102", "BBBBB-BBBBB", "fair"))
    assert m is not None and m.over_verdict is None
    script = plan_ruleset(cfg, [voucher_session("10.42.0.102", "BBBBB-BBBBB", "fair")], NOW,
                          None, [m])
    assert "chain fair_use" not in script and "meta priority" not in script
    assert "map over4 { type ipv4_addr : verdict; }" in script


def test_authorize_and_revoke_carry_the_meter_in_the_same_transaction() -> None:
    cfg = quota_config()
    s = voucher_session("10.42.0.101", "AAAAA-AAAAA", "kuota")
    m = meter_of(cfg, s, (10, 20))
    assert m is not None
    auth = plan_authorize(s, NOW, "1:165", m)
    assert auth.endswith("\n".join(plan_meter(m)) + "\n")
    assert "add quota inet desanet qt_41414141412d4141414141 { over 5242880 bytes used 30 bytes; }" \
        in auth
    rev = plan_revoke(s.mac, s.ip, "1:165", m)
    assert rev.endswith("\n".join(plan_unmeter(m)) + "\n")
    # idempotent: each delete of an element is preceded by an add of the same value
    lines = plan_unmeter(m)
    assert all(a.startswith("add element") and d.startswith("delete element")
               for a, d in zip(lines[::2], lines[1::2], strict=True))
    assert "delete counter" not in rev  # the objects wait for their last read
    assert plan_drop_objects(["qt_41", "cd_41"]) == (
        "delete counter inet desanet cd_41\ndelete quota inet desanet qt_41\n")


def test_no_meter_for_sessions_without_a_voucher() -> None:
    s = Session(A, "10.42.0.101", NOW, NOW + 60, 60, "terms")
    assert meter_of(quota_config(), s) is None


# -- arithmetic ----------------------------------------------------------------------------


def test_parse_objects_reads_counters_and_quotas_of_vouchers_only() -> None:
    down, up = counter_names("X")
    items: list[dict[str, Any]] = [
        {"metainfo": {"version": "1.0.6"}},
        {"counter": {"name": down, "packets": 3, "bytes": 300}},
        {"counter": {"name": up, "packets": 1, "bytes": 40}},
        {"counter": {"name": "something_else", "bytes": 999}},
        {"quota": {"name": quota_name("total", "X"), "bytes": 1000, "used": 1000, "inv": True}},
        {"quota": {"name": quota_name("down", "Y"), "bytes": 1000, "used": 999, "inv": True}},
    ]
    r = parse_objects(items)
    assert r.bytes == {"X": (300, 40)}
    assert r.over("X") and not r.over("Y")  # nft's over quota matches once used >= limit
    assert r.vouchers() == {"X", "Y"} and "something_else" not in r.names


def test_byte_deltas_add_up_and_are_never_negative() -> None:
    totals = add_bytes({"X": (10, 5)}, {"X": (1, 2), "Y": (0, 7)})
    assert totals == {"X": (11, 7), "Y": (0, 7)}
    with pytest.raises(ValueError, match="negative"):
        add_bytes(totals, {"X": (-1, 0)})
    merged = MeterReading({"X": (1, 1)}, {"X": {"total": QuotaUse(1, 9)}}).merge(
        MeterReading({"X": (2, 0)}, {"X": {"total": QuotaUse(9, 9)}}))
    assert merged.bytes == {"X": (3, 1)} and merged.over("X")


# -- the service ---------------------------------------------------------------------------


@pytest.fixture
async def core(tmp_path: Path) -> Core:
    c = build_core(tmp_path, quota_config())
    for mac, ip in IP.items():
        c.neighbours.add(ip, mac)
    c.quota = new_quota(c)  # type: ignore[attr-defined]
    await c.start()
    return c


def new_quota(c: Core) -> QuotaService:
    """What the daemon composes (daemon/main.py); a new one is a daemon started again."""
    q = QuotaService(c.holder.get, c.store, c.firewall, c.clock, c.sessions.end,
                     c.sessions.note_quota_cut)
    c.reconciler.meters = q.meters
    return q


async def login(c: Core, mac: str, plan: str, devices: int = 1, code: str | None = None) -> str:
    if code is None:
        _, made = await c.vouchers.create_batch(1, 86400, devices, plan, "test")
        code = made[0].code
    await c.sessions.login_voucher(ClientView(IP[mac], mac, None), code)
    return code


async def stored(c: Core, code: str) -> tuple[int, int, str]:
    v = await c.store.voucher(code)
    assert v is not None
    return v.bytes_down, v.bytes_up, v.quota_state


async def flush(c: Core, q: QuotaService) -> None:
    c.clock.advance(FLUSH_INTERVAL)
    await q.tick()


async def test_bytes_reach_the_voucher_once_across_ticks_and_a_daemon_crash(core: Core) -> None:
    q: QuotaService = core.quota  # type: ignore[attr-defined]
    code = await login(core, A, "bebas", devices=2)
    await login(core, B, "bebas", code=code)
    core.firewall.traffic(IP[A], down=1000, up=100)
    core.firewall.traffic(IP[B], down=500)
    await flush(core, q)
    assert await stored(core, code) == (1500, 100, "")
    await flush(core, q)  # nothing new: nothing added again
    assert await stored(core, code) == (1500, 100, "")
    core.firewall.traffic(IP[A], down=7)
    q2 = new_quota(core)  # kill -9 and start again: the kernel kept what it counted
    await core.reconciler.converge(core.cfg, core.cfg)
    await q2.tick()
    assert await stored(core, code) == (1507, 100, "")


async def test_a_lost_table_starts_counting_from_zero_never_negative(core: Core) -> None:
    q: QuotaService = core.quota  # type: ignore[attr-defined]
    code = await login(core, A, "kuota")
    core.firewall.traffic(IP[A], down=MB)
    await flush(core, q)
    core.firewall.flush_by_hand()  # nft flush ruleset: the unread bytes are gone with it
    await core.reconciler.check_kernel()
    core.firewall.traffic(IP[A], down=10)
    await flush(core, q)
    assert await stored(core, code) == (MB + 10, 0, "")
    # the quota made again starts at the store's bytes
    assert core.firewall.quotas[quota_name("total", code)][0] == MB + 10


async def test_a_used_up_cut_quota_ends_its_sessions_and_refuses_the_code(core: Core) -> None:
    q: QuotaService = core.quota  # type: ignore[attr-defined]
    code = await login(core, A, "kuota", devices=2)
    await login(core, B, "kuota", code=code)
    core.firewall.traffic(IP[A], down=3 * MB)
    await q.tick()
    assert core.sessions and len(await core.sessions.active()) == 2
    seq = core.bus.last_seq
    core.firewall.traffic(IP[B], down=2 * MB - 1)  # the two devices share one quota
    core.firewall.traffic(IP[B], down=4096)  # reaches it: dropped by the kernel, not counted
    await q.tick()  # no flush due: the state change flushes at once
    down, _, state = await stored(core, code)
    assert state == "cut" and down == 5 * MB - 1
    assert await core.sessions.active() == []
    ended = [e.event for e in core.events(seq) if isinstance(e.event, SessionEnded)]
    assert {e.reason for e in ended} == {EndReason.QUOTA} and len(ended) == 2
    view = await core.sessions.identify(IP[A])  # the portal says why
    assert view.session is None and view.voucher is not None
    assert view.voucher.quota_state == "cut"
    with pytest.raises(VoucherError) as err:
        await login(core, C, "kuota", code=code)
    assert err.value.reason == "quota_used"
    # positive control: an unused voucher of the same plan still logs in
    await login(core, C, "kuota")


async def test_a_used_up_slow_quota_keeps_the_session_in_its_fair_use_class(core: Core) -> None:
    q: QuotaService = core.quota  # type: ignore[attr-defined]
    code = await login(core, A, "fair")
    meter = core.firewall.meters[IP[A]]
    assert meter.over_verdict == "jump fair_use" and meter.fair_class == "1:8165"
    assert 0x8165 in core.shaper.classes["br-lan"]  # its fair-use class, made at login
    assert core.shaper.classes["br-lan"][0x8165].ceil == 256_000
    core.firewall.traffic(IP[A], down=5 * MB)
    await q.tick()
    assert (await stored(core, code))[2] == "slow"
    assert [s.mac for s in await core.sessions.active()] == [A]
    core.firewall.traffic(IP[A], down=MB)  # still flowing, slowly, still counted
    await flush(core, q)
    assert (await stored(core, code))[0] == 6 * MB


async def test_offline_vouchers_objects_go_after_their_last_read(core: Core) -> None:
    q: QuotaService = core.quota  # type: ignore[attr-defined]
    code = await login(core, A, "kuota")
    core.firewall.traffic(IP[A], up=123)
    await core.sessions.end(A, EndReason.LOGOUT)
    assert IP[A] not in core.firewall.meters and code in core.firewall.counts
    await flush(core, q)
    assert await stored(core, code) == (0, 123, "")
    assert code not in core.firewall.counts
    assert quota_name("total", code) not in core.firewall.quotas


async def test_a_rebuild_gives_the_firewall_every_sessions_meter(core: Core) -> None:
    code = await login(core, A, "kuota")
    await core.store.add_voucher_bytes({code: (MB, 2)}, {})
    await core.reconciler.converge(core.cfg, core.cfg)
    meters = core.firewall.apply_meters[-1]
    assert [(m.ip, m.voucher, m.used_down, m.used_up) for m in meters] == [
        (IP[A], code, MB, 2)]


async def test_store_refuses_negative_deltas_and_writes_nothing() -> None:
    store = MemoryStore()
    with pytest.raises(ValueError):
        await store.add_voucher_bytes({"X": (1, 1), "Y": (-5, 0)}, {})
    assert store.writes == 0


def test_fake_firewall_holds_a_cut_quota_like_the_kernel() -> None:
    fw = FakeFirewall()
    m = Meter("10.42.0.9", "V", {"down": 100}, "cut")
    fw._meter(m)
    fw.traffic("10.42.0.9", down=99)
    fw.traffic("10.42.0.9", down=2)  # reaches the limit: dropped
    fw.traffic("10.42.0.9", up=50)  # no up quota: passes
    assert fw.counts["V"] == [99, 50]


def test_sqlite_store_adds_bytes_and_states_in_one_transaction(tmp_path: Path) -> None:
    from gateway.model import Voucher
    from gateway.store.sqlite import Store

    store = Store(tmp_path / "state.db")
    store.add_vouchers([Voucher("AAAAA-AAAAA", 3600, "kuota", NOW, "b")])
    store.add_voucher_bytes({"AAAAA-AAAAA": (10, 20), "GONE": (1, 1)}, {"AAAAA-AAAAA": "slow"})
    store.add_voucher_bytes({"AAAAA-AAAAA": (5, 0)}, {})
    with pytest.raises(ValueError):
        store.add_voucher_bytes({"AAAAA-AAAAA": (5, 0), "B": (0, -1)}, {})
    with pytest.raises(ValueError):
        store.add_voucher_bytes({}, {"AAAAA-AAAAA": "maybe"})
    v = store.voucher("AAAAA-AAAAA")
    assert v is not None and (v.bytes_down, v.bytes_up, v.quota_state) == (15, 20, "slow")
    assert store.voucher_usage(["AAAAA-AAAAA", "GONE"]) == {"AAAAA-AAAAA": (15, 20)}
    store.close()


def test_an_address_holding_another_vouchers_meter_is_replaced_not_refused() -> None:
    cfg = quota_config()
    s = voucher_session("10.42.0.101", "AAAAA-AAAAA", "bebas")  # no quota: counters only
    m = meter_of(cfg, s)
    assert m is not None
    fresh = plan_meter(m)
    assert not any(x.startswith("delete element inet desanet quota_total4") for x in fresh)
    # the adapter found the address in these maps (a session with a quota before)
    again = plan_meter(m, held=("acct_down4", "quota_total4", "over4"))
    assert "delete element inet desanet quota_total4 { 10.42.0.101 }" in again
    assert "delete element inet desanet over4 { 10.42.0.101 }" in again
    i = again.index("delete element inet desanet acct_down4 { 10.42.0.101 }")
    assert again[i + 1].startswith("add element inet desanet acct_down4 { 10.42.0.101 : ")
    assert not any(x.startswith("add element inet desanet quota_total4") for x in again)


async def test_moving_a_client_to_another_plan_gives_it_that_plans_quota_at_once(
        core: Core) -> None:
    code = await login(core, A, "bebas")
    assert core.firewall.meters[IP[A]].limits == {}
    await core.sessions.change_plan(A, "kuota")
    assert core.firewall.meters[IP[A]].limits == {"total": 5 * MB}
    assert core.firewall.meters[IP[A]].voucher == code


def test_the_object_dump_decodes_quotas_and_counters_as_the_kernel_sends_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import struct

    from gateway.firewall import nftcheck as nc
    from gateway.firewall import nftobjects as no

    def obj(name: str, kind: int, data: bytes) -> bytes:
        return (nc._attr(no.NFTA_OBJ_TABLE, b"desanet\0") + nc._attr(no.NFTA_OBJ_NAME, name.encode()
                + b"\0") + nc._attr(no.NFTA_OBJ_TYPE, struct.pack(">I", kind))
                + nc._attr(nc.NLA_F_NESTED | no.NFTA_OBJ_DATA, data))

    quota = (nc._attr(3, b"") + nc._attr(1, struct.pack(">Q", 5 * MB))  # a PAD, then BYTES
             + nc._attr(4, struct.pack(">Q", 1234)) + nc._attr(2, struct.pack(">I", 1)))
    counter = nc._attr(1, struct.pack(">Q", 999)) + nc._attr(2, struct.pack(">Q", 7))
    answers = {no.NFT_OBJECT_QUOTA: [(no.NFT_MSG_NEWOBJ, obj("qt_41", 2, quota))],
               no.NFT_OBJECT_COUNTER: [(no.NFT_MSG_NEWOBJ, obj("cd_41", 1, counter))]}
    sent: list[bytes] = []

    def exchange(request: bytes) -> Any:
        sent.append(request)
        kind = struct.unpack(">I", request[-4:])[0]  # the type filter is the last attribute
        return iter(answers[kind])

    monkeypatch.setattr(no, "_exchange", exchange)
    assert no.dump("inet", "desanet", "quota") == [
        {"quota": {"name": "qt_41", "bytes": 5 * MB, "used": 1234}}]
    assert no.dump("inet", "desanet", "counter", reset=True) == [
        {"counter": {"name": "cd_41", "bytes": 999, "packets": 7}}]
    assert struct.unpack_from("=IHH", sent[1])[1] == (10 << 8) | no.NFT_MSG_GETOBJ_RESET
    assert struct.unpack_from("=IHH", sent[0])[2] & nc.NLM_F_DUMP == nc.NLM_F_DUMP
