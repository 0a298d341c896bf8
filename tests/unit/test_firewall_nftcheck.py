"""The nfnetlink requests of gateway/firewall/nftcheck.py, byte by byte (no kernel).

The root tests (tests/integration/test_crash_heal.py) run them against nf_tables.
"""

from __future__ import annotations

import struct

from gateway.firewall import nftcheck as nc


def test_a_mac_ip_key_pads_the_mac_to_eight_bytes() -> None:
    key = nc.mac_ip_key("02:d5:00:00:00:0a", "10.42.0.144")
    assert key == bytes([2, 0xD5, 0, 0, 0, 0x0A, 0, 0, 10, 42, 0, 144])


def test_a_table_request_carries_family_name_and_flags() -> None:
    req = nc._request(nc.NFT_MSG_GETTABLE, "inet", nc.NLM_F_ACK,
                      nc._attr(nc.NFTA_TABLE_NAME, nc._name("desanet")))
    length, kind, flags, _seq, _pid = struct.unpack_from("=IHHII", req)
    assert length == len(req) and len(req) % 4 == 0
    assert kind == (10 << 8) | 1 and flags == nc.NLM_F_REQUEST | nc.NLM_F_ACK
    assert req[16] == 1  # NFPROTO_INET
    assert list(nc._attrs(req[20:])) == [(nc.NFTA_TABLE_NAME, b"desanet\0")]


def test_an_element_request_nests_the_key() -> None:
    key = nc.mac_ip_key("02:00:00:00:00:01", "10.0.0.1")
    elem = nc._attr(nc.NLA_F_NESTED | nc.NFTA_SET_ELEM_KEY, nc._attr(nc.NFTA_DATA_VALUE, key))
    outer = nc._attr(nc.NLA_F_NESTED | nc.NFTA_SET_ELEM_LIST_ELEMENTS,
                     nc._attr(nc.NLA_F_NESTED | nc.NFTA_LIST_ELEM, elem))
    [(kind, payload)] = list(nc._attrs(outer))
    assert kind == nc.NFTA_SET_ELEM_LIST_ELEMENTS
    [(kind, payload)] = list(nc._attrs(payload))
    [(kind, payload)] = list(nc._attrs(payload))
    assert kind == nc.NFTA_SET_ELEM_KEY
    assert list(nc._attrs(payload)) == [(nc.NFTA_DATA_VALUE, key)]
