"""The conntrack adapter's choices without a kernel: one filtered flush (login: the
redirected http connections; cut-off: the UDP flows), one-by-one deletion when the
kernel refuses a filtered flush, errors mapped to FirewallError.

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

TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP


@dataclass(frozen=True)
class Entry:
    saddr: str
    proto: int
    dport: int
    status: int = 0


@dataclass
class FakeSocket:
    """What Conntrack uses of pyroute2's Conntrack socket; filters like the kernel."""

    entries: list[Entry]
    flush_error: int | None = None
    flushes: list[tuple[str, int, int | None, int | None]] = field(default_factory=list)
    dumps: int = 0
    gone: set[Entry] = field(default_factory=set)  # vanish before their delete

    def request(self, msg: Any, msg_type: int, **kwargs: Any) -> tuple[Any, ...]:
        if self.flush_error is not None:
            raise NetlinkError(self.flush_error)
        def attrs(nla: Any) -> dict[str, Any]:  # the message is not encoded yet: plain dicts
            return dict(nla["attrs"])

        tup = attrs(attrs(msg)["CTA_TUPLE_ORIG"])
        proto = attrs(tup["CTA_TUPLE_PROTO"])
        self.flushes.append((attrs(tup["CTA_TUPLE_IP"])["CTA_IP_V4_SRC"], proto["CTA_PROTO_NUM"],
                             proto.get("CTA_PROTO_DST_PORT"), attrs(msg).get("CTA_STATUS")))
        assert "CTA_FILTER" in attrs(msg), "without a filter the kernel deletes one exact tuple"
        return ()

    def dump_entries(self, tuple_orig: Any) -> list[Entry]:
        self.dumps += 1
        return [e for e in self.entries if e.saddr == tuple_orig.saddr
                and e.proto == tuple_orig.proto
                and tuple_orig.dport in (None, e.dport)]

    def delete(self, entry: Entry) -> None:
        if entry in self.gone:
            raise NetlinkError(errno.ENOENT)
        self.entries.remove(entry)

    def close(self) -> None:
        pass


def adapter(sock: FakeSocket) -> Conntrack:
    ct = Conntrack()
    ct._sock = sock
    return ct


IP = "10.42.0.101"
REDIRECTED = Entry(IP, TCP, 80, IPS_DST_NAT)  # an http connection the portal caught
PORTAL = Entry(IP, TCP, 80)  # to portal.desa itself: not redirected
DOWNLOAD = Entry(IP, TCP, 443)
STREAM = Entry(IP, UDP, 443)  # QUIC
DNS = Entry(IP, UDP, 53, IPS_DST_NAT)  # redirected to dnsmasq
OTHER = Entry("10.42.0.102", UDP, 443)
ENTRIES = [REDIRECTED, PORTAL, DOWNLOAD, STREAM, DNS, OTHER]


@pytest.mark.parametrize(("redirected_only", "flush"), [
    (True, (IP, TCP, 80, IPS_DST_NAT)),
    (False, (IP, UDP, None, None)),
], ids=["login", "cut-off"])
def test_a_kernel_that_flushes_by_filter_gets_one_request(
        redirected_only: bool, flush: tuple[str, int, int | None, int | None]) -> None:
    sock = FakeSocket(list(ENTRIES))
    assert adapter(sock).end_client(IP, redirected_only) is None
    assert sock.flushes == [flush]
    assert sock.dumps == 0


@pytest.mark.parametrize(("redirected_only", "gone"), [
    (True, [REDIRECTED]),  # not the portal's own connection, not the DNS redirect
    (False, [STREAM, DNS]),  # TCP stays: the forward chain resets it
], ids=["login", "cut-off"])
def test_a_kernel_refusing_the_filtered_flush_gets_one_delete_per_entry(
        redirected_only: bool, gone: list[Entry]) -> None:
    sock = FakeSocket(list(ENTRIES), flush_error=errno.EOPNOTSUPP)
    ct = adapter(sock)
    assert ct.end_client(IP, redirected_only) == len(gone)
    assert sock.entries == [e for e in ENTRIES if e not in gone]
    sock.flush_error = None
    ct.end_client("10.42.0.102")
    assert sock.flushes == []  # the refusal is remembered: no second try
    assert OTHER not in sock.entries


def test_an_entry_gone_before_its_delete_is_no_error() -> None:
    sock = FakeSocket(list(ENTRIES), flush_error=errno.EOPNOTSUPP, gone={STREAM})
    assert adapter(sock).end_client(IP) == 1


def test_other_kernel_refusals_are_firewall_errors() -> None:
    sock = FakeSocket(list(ENTRIES), flush_error=errno.EPERM)
    with pytest.raises(FirewallError, match=r"10\.42\.0\.101"):
        adapter(sock).end_client(IP)
    assert sock.dumps == 0 and sock.entries == ENTRIES


@pytest.mark.parametrize("bad", ["", "10.42.0", "fe80::1", "10.42.0.1; flush"])
def test_an_address_that_is_not_ipv4_is_refused_before_the_kernel(bad: str) -> None:
    sock = FakeSocket(list(ENTRIES))
    with pytest.raises(FirewallError, match="not an IPv4 address"):
        adapter(sock).end_client(bad)
    assert sock.flushes == [] and sock.dumps == 0
