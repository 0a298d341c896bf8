"""The diagnostics' verdicts: what each check concludes from what its probes saw, and that
every conclusion is said in both languages (pure parts; no network, no root)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.diag import dnsquery, lan, logs, oui, probes, reach, system, wifi
from gateway.diag.context import DiagContext
from gateway.diag.result import CheckResult, verdict, worst
from tests.unit.conftest import make_config

CFG = {"site": {"name": "T", "village": "T"},
       "network": {"lan_interface": "br-lan", "wan_interface": "eth0",
                   "lan_address": "10.42.0.1/24"},
       "dhcp": {"range_start": "10.42.0.100", "range_end": "10.42.0.200"}}


def seen(r: CheckResult) -> CheckResult:
    """``r``, after checking that it says what is wrong and what to do in both languages."""
    for id_text, en_text in ((r.summary_id, r.summary_en), (r.advice_id, r.advice_en)):
        assert id_text.strip() and en_text.strip(), f"missing words: {r}"
        assert id_text != en_text, f"not translated: {r}"
    return r


# -- results ----------------------------------------------------------------------------


def test_result_json_is_the_fields_and_both_languages() -> None:
    r = verdict("x", "warn", ("ringkas", "short"), ("saran", "advice"), count=2)
    assert r.to_json() == {"name": "x", "status": "warn", "summary_id": "ringkas",
                           "summary_en": "short", "advice_id": "saran", "advice_en": "advice",
                           "details": {"count": 2}}
    assert (r.summary("id"), r.summary("en"), r.advice("en")) == ("ringkas", "short", "advice")
    with pytest.raises(ValueError, match="status"):
        verdict("x", "bad", ("a", "b"))  # type: ignore[arg-type]


def test_worst_orders_fail_warn_ok_skip() -> None:
    assert worst(["ok", "fail", "warn"]) == "fail"
    assert worst(["ok", "warn", "skip"]) == "warn"
    assert worst(["skip", "ok"]) == "ok"
    assert worst([]) == "skip"


# -- ARP scan ---------------------------------------------------------------------------


def test_scan_targets_whole_small_lan_else_the_dhcp_range() -> None:
    small = lan.scan_targets(ipaddress.IPv4Network("10.42.0.0/24"), ("10.42.0.100", "10.42.0.200"))
    assert len(small) == 254 and small[0] == "10.42.0.1"
    big = lan.scan_targets(ipaddress.IPv4Network("10.42.0.0/16"), ("10.42.1.0", "10.42.9.255"),
                           limit=300)
    assert big[0] == "10.42.1.0" and len(big) == 300


def test_devices_ok_conflict_gateway_clash_and_silence() -> None:
    a, b = "02:d5:00:00:00:01", "3c:22:fb:00:00:02"
    ok = seen(lan.classify_devices("arp-scan", [("10.42.0.101", a), ("10.42.0.102", b)],
                                   "10.42.0.1", {a: "random", b: "Apple, Inc."}, 254))
    assert ok.status == "ok" and "2" in ok.summary_en
    assert ok.details["devices"][1] == {"ip": "10.42.0.102", "mac": b, "vendor": "Apple, Inc."}
    clash = seen(lan.classify_devices("arp-scan", [("10.42.0.101", a), ("10.42.0.101", b)],
                                      "10.42.0.1", {}, 254))
    assert clash.status == "warn" and clash.details["conflicts"] == {"10.42.0.101": [a, b]}
    gw = seen(lan.classify_devices("arp-scan", [("10.42.0.1", b)], "10.42.0.1", {}, 254))
    assert gw.status == "fail" and b in gw.summary_en and b in gw.summary_id
    none = seen(lan.classify_devices("arp-scan", [], "10.42.0.1", {}, 254))
    assert none.status == "warn" and "254" in none.summary_en


def test_oui_registry_parsing_and_random_addresses(tmp_path: Path) -> None:
    text = ("OUI/MA-L  Organization\n\n3C-22-FB   (hex)\t\tApple, Inc.\n"
            "3C22FB     (base 16)\t\tApple, Inc.\n\t\t\t\tCupertino\n"
            "B827EB     (base 16)\t\tRaspberry Pi Foundation\n")
    assert oui.parse_oui(text.splitlines(), {"B827EB"}) == {"B827EB": "Raspberry Pi Foundation"}
    f = tmp_path / "oui.txt"
    f.write_text(text)
    found = oui.vendors(["3c:22:fb:01:02:03", "02:d5:00:00:00:01", "00:11:22:33:44:55"], [f])
    assert found == {"3c:22:fb:01:02:03": "Apple, Inc.", "02:d5:00:00:00:01": oui.RANDOM}
    assert oui.is_local("da:a1:19:00:00:01") and not oui.is_local("b8:27:eb:00:00:01")
    assert oui.vendors(["b8:27:eb:00:00:01"], [tmp_path / "missing.txt"]) == {}


# -- rogue DHCP -------------------------------------------------------------------------

OWN = lan.Offer("10.42.0.1", "10.42.0.1", "02:00:00:00:00:01", "10.42.0.150")
ROGUE = lan.Offer("192.168.1.1", "192.168.1.1", "c8:3a:35:00:00:09", "192.168.1.100",
                  router="192.168.1.1")


def test_any_other_dhcp_server_is_rogue() -> None:
    r = seen(lan.classify_offers("rogue-dhcp", [OWN, ROGUE, ROGUE], {"10.42.0.1"},
                                 {"02:00:00:00:00:01"}, "dnsmasq (pid 7)"))
    assert r.status == "fail"
    assert "c8:3a:35:00:00:09" in r.summary_en and "c8:3a:35:00:00:09" in r.summary_id
    assert [s["rogue"] for s in r.details["servers"]] == [False, True]  # the repeat counted once


def test_rogue_matched_by_mac_when_the_server_id_is_missing() -> None:
    odd = lan.Offer("", "10.42.0.1", "02:00:00:00:00:01", "10.42.0.151")
    r = lan.classify_offers("rogue-dhcp", [odd], {"10.42.0.1"}, {"02:00:00:00:00:01"}, "dnsmasq")
    assert r.status == "ok"


def test_no_rogue_ok_and_own_server_missing_warns() -> None:
    assert seen(lan.classify_offers("rogue-dhcp", [], {"10.42.0.1"}, set(), "dnsmasq (pid 7)")
                ).status == "ok"
    r = seen(lan.classify_offers("rogue-dhcp", [], {"10.42.0.1"}, set(), None))
    assert r.status == "warn" and "dnsmasq" in r.summary_en


# -- DNS --------------------------------------------------------------------------------


def answer_packet(qid: int, name: str, rcode: int, addresses: list[str]) -> bytes:
    query = dnsquery.build_query(name, qid)
    head = bytearray(query[:12])
    head[2:4] = (0x8180 | rcode).to_bytes(2, "big")
    head[6:8] = len(addresses).to_bytes(2, "big")
    records = b"".join(b"\xc0\x0c" + bytes.fromhex("0001000100000e100004")
                       + ipaddress.IPv4Address(a).packed for a in addresses)
    return bytes(head) + query[12:] + records


def test_dns_packets_built_and_read() -> None:
    q = dnsquery.build_query("dukcapil.lab", 0x1234)
    assert q[:2] == b"\x12\x34" and b"\x08dukcapil\x03lab\x00" in q
    a = dnsquery.parse_answer(answer_packet(0x1234, "dukcapil.lab", 0, ["198.51.100.20",
                                                                        "198.51.100.21"]), 0x1234)
    assert (a.rcode, a.addresses, a.answered) == ("NOERROR", ["198.51.100.20", "198.51.100.21"], True)
    nx = dnsquery.parse_answer(answer_packet(7, "x.lab", 3, []), 7)
    assert (nx.rcode, nx.answered) == ("NXDOMAIN", True)
    assert not dnsquery.parse_answer(answer_packet(7, "x.lab", 2, []), 7).answered
    with pytest.raises(ValueError):
        dnsquery.parse_answer(answer_packet(7, "x.lab", 0, []), 8)  # someone else's id
    with pytest.raises(ValueError):
        dnsquery.parse_answer(b"\x00\x07", 7)
    with pytest.raises(ValueError):
        dnsquery.build_query("", 1)


def test_dns_name_prefers_a_service_then_the_garden() -> None:
    cfg = parse_config({**CFG, "walled_garden": {"hostnames": ["*.go.id", "layanan.lab"]}})
    assert reach.dns_name(cfg, None) == "layanan.lab"
    with_svc = parse_config({**CFG, "local_services": {"enabled": True, "services": [
        {"slug": "a", "title_id": "A", "title_en": "A", "upstream": "http://198.51.100.9"},
        {"slug": "b", "title_id": "B", "title_en": "B", "upstream": "https://dukcapil.lab"}]}})
    assert reach.dns_name(with_svc, None) == "dukcapil.lab"
    assert reach.dns_name(with_svc, "x.go.id") == "x.go.id"
    assert reach.dns_name(parse_config(CFG), None) == reach.FALLBACK_DNS_NAME


def test_resolv_conf_servers_skip_loopback_and_the_gateway() -> None:
    text = "# c\nnameserver 127.0.0.53\nnameserver 10.42.0.1\nnameserver 1.1.1.1\nsearch lab\n"
    assert reach.resolv_conf_servers(text, exclude=["10.42.0.1"]) == ["1.1.1.1"]


def outcome(server: str, rcode: str | None, error: str = "") -> dnsquery.Outcome:
    answer = dnsquery.Answer(rcode, ["198.51.100.20"]) if rcode else None
    return dnsquery.Outcome(server, answer, error, 0.01)


@pytest.mark.parametrize("gw, ups, status, words", [
    (outcome("10.42.0.1", "NOERROR"), [outcome("1.1.1.1", "NOERROR")], "ok", "works"),
    (outcome("10.42.0.1", "NXDOMAIN"), [outcome("1.1.1.1", "NXDOMAIN")], "ok", "does not exist"),
    (outcome("10.42.0.1", None, "timeout"), [outcome("1.1.1.1", "NOERROR")], "fail",
     "gateway's DNS"),
    (outcome("10.42.0.1", None, "refused"), [outcome("1.1.1.1", None, "timeout")], "fail",
     "either"),
    (outcome("10.42.0.1", "NOERROR"), [outcome("1.1.1.1", None, "timeout")], "fail",
     "upstream resolvers do not answer"),
    (outcome("10.42.0.1", "NOERROR"), [outcome("1.1.1.1", "NOERROR"),
                                       outcome("8.8.8.8", "SERVFAIL")], "warn", "8.8.8.8"),
])
def test_dns_verdicts(gw: dnsquery.Outcome, ups: list[dnsquery.Outcome], status: str,
                      words: str) -> None:
    r = seen(reach.classify_dns("dns", "dukcapil.lab", gw, ups))
    assert r.status == status and words in r.summary_en, r
    both_down = gw.answer is None and all(o.answer is None for o in ups)
    assert ("either" in r.summary_en) == both_down, r
    assert ("juga tidak menjawab" in r.summary_id) == both_down, r


# -- HTTP, speed ------------------------------------------------------------------------


def hp(status: int, reason: str = "", size: int = 0, body: float = 0.0) -> probes.HttpProbe:
    return probes.HttpProbe("http://dukcapil.lab/", status, reason, "", 0.2, size, body)


def test_http_verdicts() -> None:
    assert seen(reach.classify_http("http", [("a", hp(200)), ("b", hp(404))])).status == "ok"
    five = seen(reach.classify_http("http", [("a", hp(200)), ("b", hp(503))]))
    assert five.status == "warn" and "503" in five.summary_en
    down = seen(reach.classify_http("http", [("a", hp(0, "timeout")), ("b", hp(503))]))
    assert down.status == "fail"
    assert "blocked" in down.summary_en and "diblokir" in down.summary_id
    refused = seen(reach.classify_http("http", [("a", hp(0, "refused"))]))
    assert "refused" in refused.summary_en and refused.details["services"][0]["reason"] == "refused"


def test_speed_against_the_target() -> None:
    mb = 1024 * 1024
    fast = seen(reach.classify_speed("speed", hp(200, size=mb, body=1.0), 1_000_000))
    assert fast.status == "ok" and fast.details["bits_per_second"] == 8 * mb
    slow = seen(reach.classify_speed("speed", hp(200, size=mb, body=10.0), 5_000_000))
    assert slow.status == "warn" and "below the target" in slow.summary_en
    tiny = seen(reach.classify_speed("speed", hp(200, size=1000, body=0.01), 1_000_000))
    assert tiny.status == "skip"
    assert seen(reach.classify_speed("speed", hp(0, "dns"), 1_000_000)).status == "fail"
    assert seen(reach.classify_speed("speed", hp(404, size=100), 1_000_000)).status == "fail"


# -- MQTT -------------------------------------------------------------------------------


def mp(stage: str, reason: str = "", error: str = "") -> probes.MqttProbe:
    return probes.MqttProbe(stage, reason, error, 0.3)


B = "mqtts://mqtt.example.go.id:8883"


def test_mqtt_verdicts() -> None:
    assert seen(reach.classify_mqtt("mqtt", B, mp("connected"), (200.0, 10.0))).status == "ok"
    soon = seen(reach.classify_mqtt("mqtt", B, mp("connected"), (3.0, 360.0)))
    assert soon.status == "warn" and "3 days" in soon.summary_en
    today = seen(reach.classify_mqtt("mqtt", B, mp("connected"), (0.4, 360.0)))
    assert "less than a day" in today.summary_en and "kurang dari 1 hari" in today.summary_id
    expired = seen(reach.classify_mqtt("mqtt", B, mp("mqtt", "tls-rejected"), (-5.0, 400.0)))
    assert expired.status == "fail" and "ended 5 days ago" in expired.summary_en
    early = seen(reach.classify_mqtt("mqtt", B, mp("tls", "tls-verify"), (300.0, -2.0)))
    assert early.status == "fail" and "clock" in early.summary_en
    for stage, reason, en in [("tcp", "refused", "refused"), ("tcp", "timeout", "no answer"),
                              ("dns", "dns", "does not resolve"),
                              ("tls", "tls-verify", "not trusted"),
                              ("mqtt", "tls-rejected", "refused the gateway's certificate")]:
        r = seen(reach.classify_mqtt("mqtt", B, mp(stage, reason), None))
        assert r.status == "fail" and en in r.summary_en and stage.upper() in r.summary_en
        assert r.details["reason"] == reason
    auth = seen(reach.classify_mqtt("mqtt", B, mp("mqtt", "connack-5", "not authorized"), None))
    assert "not authorized" in auth.summary_en


def test_reasons_of_connection_failures() -> None:
    import socket
    import ssl

    assert probes.reason_of(ConnectionRefusedError()) == "refused"
    assert probes.reason_of(TimeoutError()) == "timeout"
    assert probes.reason_of(socket.gaierror(-2, "Name or service not known")) == "dns"
    assert probes.reason_of(OSError(101, "Network is unreachable")) == "unreachable"
    assert probes.reason_of(ssl.SSLCertVerificationError(1, "certificate verify failed")) \
        == "tls-verify"
    assert probes.reason_of(ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 "
                                            "alert certificate required")) == "tls-rejected"
    assert probes.reason_of(ssl.SSLError(1, "[SSL: TLSV1_ALERT_DECRYPT_ERROR] tlsv1 alert "
                                            "decrypt error")) == "tls-rejected"
    assert probes.reason_of(ssl.SSLError(1, "wrong version number")) == "tls"
    for code in probes.REASON_WORDS:
        assert probes.reason_words(code, "id") != probes.reason_words(code, "en")


def test_mqtt_connect_packet_and_connack() -> None:
    pkt = probes.connect_packet("desanet-diag-1", 10, "u", "p")
    assert pkt[0] == 0x10 and pkt[1] == len(pkt) - 2
    assert b"\x00\x04MQTT\x04\xc2\x00\x0a" in pkt and pkt.endswith(b"\x00\x01u\x00\x01p")
    long_id = probes.connect_packet("x" * 200, 10, None, None)
    assert long_id[1] & 0x80 and long_id[2] == 1  # the remaining length takes two bytes
    assert probes.parse_connack(b"\x20\x02\x00\x00") == 0
    assert probes.parse_connack(b"\x20\x02\x00\x05") == 5
    with pytest.raises(ValueError):
        probes.parse_connack(b"\x30\x02\x00\x00")


# -- Wi-Fi, disk, clock, logs -------------------------------------------------------------


def test_wifi_verdicts() -> None:
    conf = wifi.parse_hostapd_conf("# c\ninterface=wlan0\nssid=Hotspot Desa\n"
                                     "country_code=ID\nchannel=6\n")
    assert conf["ssid"] == "Hotspot Desa"
    none = seen(wifi.classify_wifi("wifi", [], None, None))
    assert none.status == "skip" and "No Wi-Fi" in none.summary_en
    assert seen(wifi.classify_wifi("wifi", ["wlan0"], None, None)).status == "fail"
    wrong = seen(wifi.classify_wifi("wifi", ["wlan0"], "hostapd (pid 9)",
                                      {**conf, "country_code": "US"}))
    assert wrong.status == "fail" and "US" in wrong.summary_en
    assert seen(wifi.classify_wifi("wifi", ["wlan0"], "hostapd (pid 9)", {})).status == "fail"
    good = seen(wifi.classify_wifi("wifi", ["wlan0"], "hostapd (pid 9)", conf))
    assert good.status == "ok" and "channel 6" in good.summary_en


def test_wifi_compares_hostapd_with_the_configured_country() -> None:
    conf = {"country_code": "ID", "channel": "6", "ssid": "Hotspot Desa"}
    default = seen(wifi.classify_wifi("wifi", ["wlan0"], "hostapd (pid 9)", conf, None))
    assert default.status == "ok" and "site.wifi_country (default)" in default.summary_en
    assert default.details["configured_country"] == "ID"
    # A box in Malaysia: hostapd still on ID is the fault, named with both countries.
    other = seen(wifi.classify_wifi("wifi", ["wlan0"], "hostapd (pid 9)", conf, "MY"))
    assert other.status == "fail"
    assert "(ID) is not site.wifi_country = MY" in other.summary_en, other.summary_en
    assert "country_code=MY" in other.advice_en and "country_code=MY" in other.advice_id
    assert (other.details["country"], other.details["configured_country"]) == ("ID", "MY")
    same = seen(wifi.classify_wifi("wifi", ["wlan0"], "hostapd (pid 9)",
                                   {**conf, "country_code": "my"}, "MY"))
    assert same.status == "ok" and "country MY as site.wifi_country" in same.summary_en
    unset = seen(wifi.classify_wifi("wifi", ["wlan0"], "hostapd (pid 9)", {"channel": "1"},
                                    "ID"))
    assert unset.status == "fail" and "(none)" in unset.summary_en


async def test_the_wifi_check_reads_the_country_from_the_config(
        monkeypatch: pytest.MonkeyPatch) -> None:
    facts = (["wlan0"], "hostapd (pid 9)", {"country_code": "ID", "channel": "11"})
    monkeypatch.setattr(wifi, "_wifi_facts", lambda: facts)
    cfg = make_config(site={"wifi_country": "TL"})
    found = await wifi.check_wifi(DiagContext("/etc/desanet/gateway.toml", cfg, []))
    assert found.status == "fail" and "site.wifi_country = TL" in found.summary_en
    unreadable = await wifi.check_wifi(DiagContext("/nowhere.toml", None, ["file not found"]))
    assert unreadable.status == "ok" and unreadable.details["configured_country"] == "ID"


MOUNTS = """/dev/mmcblk0p2 / ext4 rw,noatime 0 0
proc /proc proc rw,nosuid 0 0
/dev/mmcblk0p3 /var/lib/desanet ext4 ro,noatime 0 0
/dev/sda1 /media/usb\\040stick vfat rw 0 0
"""


def test_mounts_and_the_mount_of_a_path() -> None:
    mounts = system.parse_mounts(MOUNTS)
    assert mounts[3][0] == "/media/usb stick"
    assert system.mount_of("/var/lib/desanet/state", mounts)[0] == "/var/lib/desanet"
    assert system.mount_of("/var/lib/desanetx", mounts)[0] == "/"
    assert "ro" in system.mount_of("/var/lib/desanet", mounts)[2]


def row(mount: str, free_mib: int, total_mib: int = 8000, ro: bool = False) -> dict[str, object]:
    mib = 1024 * 1024
    return {"path": mount, "mount": mount, "fstype": "ext4", "read_only": ro,
            "free": free_mib * mib, "total": total_mib * mib}


def test_disk_verdicts() -> None:
    min_free = 200 * 1024 * 1024
    assert seen(system.classify_disk("disk", [row("/", 4000)], min_free)).status == "ok"
    ro = seen(system.classify_disk("disk", [row("/", 4000), row("/data", 4000, ro=True)],
                                   min_free))
    assert ro.status == "fail" and "read-only" in ro.summary_en and "SD card" in ro.advice_en
    assert seen(system.classify_disk("disk", [row("/", 30)], min_free)).status == "fail"
    low = seen(system.classify_disk("disk", [row("/", 150, 1000)], min_free))
    assert low.status == "warn" and "150 MiB" in low.summary_en


def test_clock_verdicts() -> None:
    assert system.parse_timedatectl("NTPSynchronized=yes\nNTP=yes\n")["NTPSynchronized"] == "yes"
    now = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)
    assert seen(system.classify_clock("clock", now, True, "timedatectl")).status == "ok"
    assert seen(system.classify_clock("clock", now, False, "adjtimex")).status == "warn"
    assert seen(system.classify_clock("clock", now, None, "adjtimex")).status == "warn"
    past = seen(system.classify_clock("clock", now.replace(year=1970), True, "timedatectl"))
    assert past.status == "fail" and "1970" in past.summary_en
    fast = seen(system.classify_clock("clock", now, True, "timedatectl", 3600.0, "dukcapil.lab"))
    assert fast.status == "fail" and "60 minutes ahead of dukcapil.lab" in fast.summary_en
    slow = seen(system.classify_clock("clock", now, None, "adjtimex", -600.0, "dukcapil.lab"))
    assert slow.status == "fail" and "10 minutes behind" in slow.summary_en
    agrees = seen(system.classify_clock("clock", now, None, "adjtimex", 1.0, "dukcapil.lab"))
    assert agrees.status == "ok" and agrees.details["skew_seconds"] == 1
    drifting = seen(system.classify_clock("clock", now, False, "timedatectl", 1.0, "x.lab"))
    assert drifting.status == "warn"


def test_log_verdicts_and_tail(tmp_path: Path) -> None:
    lines = ["2026-12-02 10:00:00 INFO gateway: started",
             "2026-12-02 10:00:01 ERROR gateway.dnsmasq: exited 2"]
    bad = seen(logs.classify_logs("logs", lines, "/x/gateway.log"))
    assert bad.status == "warn" and "dnsmasq: exited 2" in bad.summary_en
    assert seen(logs.classify_logs("logs", lines[:1], "journalctl")).status == "ok"
    assert seen(logs.classify_logs("logs", ["<3>gateway: boom"], "journalctl")).status == "warn"
    assert seen(logs.classify_logs("logs", [], "")).status == "skip"
    f = tmp_path / "gateway.log"
    f.write_text("".join(f"line {i}\n" for i in range(10000)))
    assert logs.tail(f, 3) == ["line 9997", "line 9998", "line 9999"]


def test_journal_records_keep_their_level() -> None:
    text = "\n".join([
        '{"__REALTIME_TIMESTAMP": "1764676800000000", "PRIORITY": "6", "MESSAGE": "started"}',
        '{"__REALTIME_TIMESTAMP": "1764676801000000", "PRIORITY": "3", '
        '"MESSAGE": "gateway.dnsmasq: exited 2"}',
        '{"PRIORITY": "4", "MESSAGE": [98, 97, 100, 255]}', "not json"])
    lines = logs.journal_lines(text)
    assert lines[0] == "2025-12-02T12:00:00+00:00 INFO started"
    assert lines[1].endswith("ERROR gateway.dnsmasq: exited 2")
    assert lines[2].startswith("? WARNING bad")
    assert len(lines) == 3
    assert logs.classify_logs("logs", lines, "journalctl -u desanet").status == "warn"


def test_daemon_verdicts() -> None:
    down = seen(system.classify_daemon("daemon", None, "unreachable", True, "/run/x.sock"))
    assert down.status == "fail" and "systemctl start desanet" in down.advice_en
    assert "desanet run" in system.classify_daemon("daemon", None, "x", False).advice_en
    up = {"ready": True, "dnsmasq": {"running": True}, "uplink": {"state": "up"},
          "degraded": []}
    assert seen(system.classify_daemon("daemon", up, "", True)).status == "ok"
    sick = seen(system.classify_daemon("daemon", {**up, "dnsmasq": {"running": False},
                                                  "degraded": [{"part": "store"}]}, "", True))
    assert sick.status == "warn" and "dnsmasq" in sick.summary_en and "store" in sick.summary_en


# -- both languages, always ---------------------------------------------------------------


def test_an_untranslated_verdict_is_caught() -> None:
    """The check ``seen`` runs on every verdict above can fail."""
    with pytest.raises(AssertionError, match="not translated"):
        seen(verdict("x", "ok", ("Same words.", "Same words.")))
