"""The conntrack adapter's choices without a kernel: at login a filtered flush of the
redirected entries (one by one when the kernel refuses it); at a cut-off every entry but
TCP ones, one by one; errors mapped to FirewallError.

The real kernel is exercised in tests/integration/test_conntrack.py.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from gateway.errors import FirewallError
from gateway.firewall.conntrack import IPS_DST_NAT, Conntrack


@dataclass(frozen=True)
class Tuple:
    saddr: str
    proto: int


@dataclass
class Entry:
    saddr: str
    status: int
    proto: int = socket.IPPROTO_UDP

    @property
    def tuple_orig(self) -> Tuple:
        return Tuple(self.saddr, self.proto)


@dataclass
class FakeSocket:
    """What Conntrack uses of pyroute2's Conntrack socket."""

    entries: list[Entry]
    flush_error: int | None = None
    flushes: list[dict[str, Any]] = field(default_factory=list)
    dumps: int = 0
    gone: set[int] = field(default_factory=set)  # indexes that vanish before their delete

    def request(self, msg: Any, msg_type: int, **kwargs: Any) -> tuple[Any, ...]:
        if self.flush_error is not None:
            raise NetlinkError(self.flush_error)
        self.flushes.append({"saddr": msg.get_attr("CTA_TUPLE_ORIG") is not None,
                             "status": msg.get_attr("CTA_STATUS")})
        return ()

    def dump_entries(self, tuple_orig: Any) -> list[Entry]:
        self.dumps += 1
        return [e for e in self.entries if e.saddr == tuple_orig.saddr]

    def delete(self, entry: Entry) -> None:
        i = self.entries.index(entry)
        if i in self.gone:
            raise NetlinkError(errno.ENOENT)
        self.entries.remove(entry)

    def close(self) -> None:
        pass


def adapter(sock: FakeSocket) -> Conntrack:
    ct = Conntrack()
    ct._sock = sock
    return ct


TCP = socket.IPPROTO_TCP
REDIRECTED, UDP_FLOW, TCP_FLOW = (Entry("10.42.0.101", IPS_DST_NAT, TCP),
                                  Entry("10.42.0.101", 0), Entry("10.42.0.101", 0, TCP))
OTHER = Entry("10.42.0.102", IPS_DST_NAT)
ENTRIES = [REDIRECTED, UDP_FLOW, TCP_FLOW, OTHER]


def test_login_is_one_filtered_flush_of_the_redirected_entries() -> None:
    sock = FakeSocket(list(ENTRIES))
    assert adapter(sock).end_client("10.42.0.101", redirected_only=True) is None
    assert sock.flushes == [{"saddr": True, "status": IPS_DST_NAT}]
    assert sock.dumps == 0


def test_a_cut_off_deletes_every_entry_of_the_address_but_tcp_ones() -> None:
    sock = FakeSocket(list(ENTRIES))
    assert adapter(sock).end_client("10.42.0.101") == 1
    assert sock.entries == [REDIRECTED, TCP_FLOW, OTHER]
    assert sock.flushes == [] and sock.dumps == 1


def test_a_kernel_refusing_the_filtered_flush_gets_one_delete_per_redirected_entry() -> None:
    sock = FakeSocket(list(ENTRIES), flush_error=errno.EOPNOTSUPP)
    ct = adapter(sock)
    assert ct.end_client("10.42.0.101", redirected_only=True) == 1
    assert sock.entries == [UDP_FLOW, TCP_FLOW, OTHER]
    sock.flush_error = None
    assert ct.end_client("10.42.0.102", redirected_only=True) == 1
    assert sock.flushes == []  # the refusal is remembered: no second try
    assert sock.entries == [UDP_FLOW, TCP_FLOW]


def test_an_entry_gone_before_its_delete_is_no_error() -> None:
    sock = FakeSocket(list(ENTRIES), gone={1})
    assert adapter(sock).end_client("10.42.0.101") == 0


def test_other_kernel_refusals_are_firewall_errors() -> None:
    sock = FakeSocket(list(ENTRIES), flush_error=errno.EPERM)
    with pytest.raises(FirewallError, match=r"10\.42\.0\.101"):
        adapter(sock).end_client("10.42.0.101", redirected_only=True)
    assert sock.dumps == 0 and len(sock.entries) == 4


@pytest.mark.parametrize("bad", ["", "10.42.0", "fe80::1", "10.42.0.1; flush"])
def test_an_address_that_is_not_ipv4_is_refused_before_the_kernel(bad: str) -> None:
    sock = FakeSocket(list(ENTRIES))
    with pytest.raises(FirewallError, match="not an IPv4 address"):
        adapter(sock).end_client(bad)
    assert sock.flushes == [] and sock.dumps == 0
