"""Hostile answers on the LAN: a flood of forged DHCP offers keeps the check bounded."""

from __future__ import annotations

from scapy.layers.dhcp import BOOTP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from gateway.diag.cli import MAX_LISTED, render_table
from gateway.diag.lan import MAX_OFFERS, Offer, classify_offers, offer_filter

XID = 0x1234


def offer(xid: int = XID) -> Ether:
    return (Ether(src="02:aa:00:00:00:01") / IP(src="10.0.0.9") / UDP(sport=67, dport=68)
            / BOOTP(op=2, xid=xid, yiaddr="10.0.0.50"))


def test_the_sniffer_keeps_at_most_max_offers_answers_to_our_discover() -> None:
    ours = offer_filter(XID)
    kept = sum(ours(offer()) for _ in range(MAX_OFFERS * 10))
    assert kept == MAX_OFFERS


def test_the_filter_takes_only_answers_to_our_discover() -> None:
    # positive control: our answers are taken, another xid and non-DHCP traffic are not
    ours = offer_filter(XID)
    assert ours(offer()) and not ours(offer(xid=XID + 1))
    assert not ours(Ether() / IP() / UDP(sport=53, dport=53))
    assert not ours(Ether() / IP() / UDP(sport=67, dport=68) / BOOTP(op=1, xid=XID))


def test_forged_offers_from_many_macs_keep_the_report_readable() -> None:
    offers = [Offer("", f"10.0.{i // 250}.{i % 250 + 1}", f"02:bb:00:00:{i // 256:02x}:{i % 256:02x}",
                    "10.0.0.50") for i in range(MAX_OFFERS)]
    r = classify_offers("rogue-dhcp", offers, {"10.42.0.1"}, {"02:00:00:00:00:01"}, "dnsmasq")
    assert r.status == "fail" and f"(+{MAX_OFFERS - 3})" in r.summary("en")
    assert len(r.summary("en")) < 400
    table = render_table([r], "en")
    assert f"(+{MAX_OFFERS - MAX_LISTED} more" in table
    assert len(table.splitlines()) < MAX_LISTED + 15


def test_one_rogue_server_is_named() -> None:
    # positive control: the ordinary case lists the server itself
    r = classify_offers("rogue-dhcp", [Offer("192.168.1.1", "192.168.1.1", "02:cc:00:00:00:01",
                                             "192.168.1.50")],
                        {"10.42.0.1"}, {"02:00:00:00:00:01"}, "dnsmasq")
    assert r.status == "fail" and "192.168.1.1 (02:cc:00:00:00:01)" in r.summary("en")
    assert "more" not in render_table([r], "en")
