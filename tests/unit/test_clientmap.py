"""The client map's pieces: the rtnetlink codec and the IP -> MAC map logic."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from gateway.netinfo import rtnl
from gateway.netinfo.clientmap import UNKNOWN, UNUSABLE, ClientMap

from .nlkit import FAILED, INCOMPLETE, PERMANENT, REACHABLE, STALE, done, error, link, neigh

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
LAN = 7


def msgs(data: bytes) -> list[rtnl.Message]:
    return [m for _seq, m in rtnl.parse(data)]


def one(data: bytes) -> rtnl.NeighbourMsg:
    (m,) = msgs(data)
    assert isinstance(m, rtnl.NeighbourMsg)
    return m


# -- codec -----------------------------------------------------------------------------


def test_parse_reads_neighbour_events_of_both_families() -> None:
    data = (neigh("10.42.0.5", A.upper(), STALE) + neigh("fd00::5", B, deleted=True, ifindex=9)
            + link(7, "br-lan") + link(9, "wan0", deleted=True) + done(4) + error(5, errno.ENOENT))
    got = list(rtnl.parse(data))
    assert got == [
        (0, rtnl.NeighbourMsg(False, socket.AF_INET, LAN, STALE, "10.42.0.5", A)),
        (0, rtnl.NeighbourMsg(True, socket.AF_INET6, 9, REACHABLE, "fd00::5", B)),
        (0, rtnl.LinkMsg(False, 7, "br-lan", 1)),
        (0, rtnl.LinkMsg(True, 9, "wan0", 1)),
        (4, rtnl.Done()),
        (5, rtnl.Error(errno.ENOENT)),
    ]


def test_parse_skips_what_it_cannot_read_and_never_reads_past_the_datagram() -> None:
    good = neigh("10.42.0.5", A)
    assert one(neigh("10.42.0.6", "02:00:00:00:00:0a:0b")).mac is None  # not Ethernet: no MAC
    assert msgs(good[:-3]) == []  # a cut message
    assert msgs(struct.pack("=IHHII", 8, 28, 0, 0, 0) + good) == []  # a length below the header
    bad_attr = bytearray(good)
    struct.pack_into("=H", bad_attr, 16 + 12, 200)  # the first attribute claims 200 bytes
    m = one(bytes(bad_attr))
    assert m.ip is None and m.mac is None
    assert msgs(rtnl._HDR.pack(20, 999, 0, 0, 0) + b"\0" * 4 + good) == [one(good)]  # unknown type


def test_requests_match_what_the_kernel_expects() -> None:
    get = rtnl.neighbour_get_request(11, LAN, "10.42.0.5")
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", get)
    assert (length, kind, flags, seq) == (len(get), rtnl.RTM_GETNEIGH, rtnl.NLM_F_REQUEST, 11)
    assert struct.unpack_from("=BBHiHBB", get, 16) == (socket.AF_INET, 0, 0, LAN, 0, 0, 0)
    assert get[28:] == struct.pack("=HH", 8, rtnl.NDA_DST) + socket.inet_aton("10.42.0.5")
    get6 = rtnl.neighbour_get_request(12, LAN, "fd00::5")
    assert get6[16] == socket.AF_INET6 and get6[32:] == socket.inet_pton(socket.AF_INET6, "fd00::5")
    with pytest.raises(ValueError, match="not an IP"):
        rtnl.neighbour_get_request(13, LAN, "portal.desa")

    dump = rtnl.neighbour_dump_request(14, LAN)
    _len, kind, flags, seq, _pid = struct.unpack_from("=IHHII", dump)
    assert (kind, flags & rtnl.NLM_F_DUMP, seq) == (rtnl.RTM_GETNEIGH, rtnl.NLM_F_DUMP, 14)
    # strict checking wants a zero header; the device goes in NDA_IFINDEX
    assert struct.unpack_from("=BBHiHBB", dump, 16) == (0, 0, 0, 0, 0, 0, 0)
    assert dump[28:] == struct.pack("=HHI", 8, rtnl.NDA_IFINDEX, LAN)


# -- the map ---------------------------------------------------------------------------


def synced(*entries: bytes) -> ClientMap:
    m = ClientMap()
    m.replace(LAN, [one(e) for e in entries])
    return m


def test_events_add_update_and_remove_clients() -> None:
    m = synced(neigh("10.42.0.5", A, PERMANENT))
    assert m.lookup("10.42.0.5") == A and m.lookup("10.42.0.6") is UNKNOWN
    m.apply(one(neigh("10.42.0.6", B)))
    assert m.lookup("10.42.0.6") == B
    m.apply(one(neigh("10.42.0.5", B, STALE)))  # the same IP now answers with another MAC
    assert m.lookup("10.42.0.5") == B
    m.apply(one(neigh("10.42.0.5", B, deleted=True)))
    assert m.lookup("10.42.0.5") is UNKNOWN and m.lookup("10.42.0.6") == B
    m.apply(one(neigh("10.42.0.9", None, deleted=True)))  # deleting what is not there: nothing
    assert len(m) == 1 and m.applied == 4


@pytest.mark.parametrize("state", [INCOMPLETE, FAILED, 0])
def test_an_entry_the_kernel_cannot_use_identifies_nobody(state: int) -> None:
    m = synced(neigh("10.42.0.5", A))
    m.apply(one(neigh("10.42.0.5", A, state)))  # FAILED keeps the old address in the message
    assert m.lookup("10.42.0.5") is UNUSABLE
    m.apply(one(neigh("10.42.0.5", A, REACHABLE)))  # positive control: usable again
    assert m.lookup("10.42.0.5") == A


def test_a_zero_or_missing_mac_identifies_nobody() -> None:
    m = synced(neigh("10.42.0.5", "00:00:00:00:00:00", PERMANENT), neigh("10.42.0.6", None, STALE))
    assert m.lookup("10.42.0.5") is UNUSABLE and m.lookup("10.42.0.6") is UNUSABLE


def test_only_the_lan_interface_counts() -> None:
    m = synced(neigh("10.42.0.5", A), neigh("100.64.0.1", B, ifindex=3))
    m.apply(one(neigh("10.42.0.6", B, ifindex=3)))
    assert m.lookup("100.64.0.1") is UNKNOWN and m.lookup("10.42.0.6") is UNKNOWN
    m.apply(one(neigh("10.42.0.5", B, deleted=True, ifindex=3)))  # not ours to delete
    assert m.lookup("10.42.0.5") == A


def test_ipv6_neighbours_are_kept_but_ip_of_answers_ipv4() -> None:
    m = synced(neigh("fd00::5", A), neigh("10.42.0.5", A))
    assert m.lookup("fd00::5") == A
    assert m.ip_of(A.upper()) == "10.42.0.5"
    m.apply(one(neigh("10.42.0.5", A, FAILED)))
    assert m.ip_of(A) is None and m.ip_of(B) is None


def test_not_synced_says_nothing_until_the_next_dump() -> None:
    m = ClientMap()
    m.apply(one(neigh("10.42.0.5", A)))  # before the first dump: the interface is not known
    assert m.lookup("10.42.0.5") is UNKNOWN and not m.synced
    m.replace(LAN, [one(neigh("10.42.0.5", A)), one(neigh("10.42.0.6", B))])
    assert m.lookup("10.42.0.5") == A
    m.invalidate()  # events were lost
    assert m.lookup("10.42.0.5") is UNKNOWN
    m.replace(LAN, [one(neigh("10.42.0.6", B))])  # the dump replaces, never merges
    assert m.lookup("10.42.0.5") is UNKNOWN and m.lookup("10.42.0.6") == B
    m.replace(None, [one(neigh("10.42.0.6", B))])  # the interface is gone
    assert m.synced and len(m) == 0 and m.resyncs == 3
