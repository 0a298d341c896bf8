"""The conntrack adapter's choices without a kernel: filtered flush first, one-by-one
deletion when the kernel refuses it, errors mapped to FirewallError.

The real kernel is exercised in tests/integration/test_conntrack.py.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from gateway.errors import FirewallError
from gateway.firewall.conntrack import IPS_DST_NAT, Conntrack


@dataclass
class Entry:
    saddr: str
    status: int


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


ENTRIES = [Entry("10.42.0.101", IPS_DST_NAT), Entry("10.42.0.101", 0),
           Entry("10.42.0.102", IPS_DST_NAT)]


@pytest.mark.parametrize(("redirected_only", "status"), [(False, None), (True, IPS_DST_NAT)])
def test_a_kernel_that_flushes_by_filter_gets_one_request(
        redirected_only: bool, status: int | None) -> None:
    sock = FakeSocket(list(ENTRIES))
    assert adapter(sock).end_client("10.42.0.101", redirected_only) is None
    assert sock.flushes == [{"saddr": True, "status": status}]
    assert sock.dumps == 0


@pytest.mark.parametrize(("redirected_only", "left"), [
    (False, [Entry("10.42.0.102", IPS_DST_NAT)]),
    (True, [Entry("10.42.0.101", 0), Entry("10.42.0.102", IPS_DST_NAT)]),
])
def test_a_kernel_refusing_the_filtered_flush_gets_one_delete_per_entry(
        redirected_only: bool, left: list[Entry]) -> None:
    sock = FakeSocket(list(ENTRIES), flush_error=errno.EOPNOTSUPP)
    ct = adapter(sock)
    assert ct.end_client("10.42.0.101", redirected_only) == 2 - redirected_only
    assert sock.entries == left
    sock.flush_error = None
    ct.end_client("10.42.0.102")
    assert sock.flushes == []  # the refusal is remembered: no second try
    assert sock.entries == ([] if not redirected_only else [Entry("10.42.0.101", 0)])


def test_an_entry_gone_before_its_delete_is_no_error() -> None:
    sock = FakeSocket(list(ENTRIES), flush_error=errno.EOPNOTSUPP, gone={0})
    assert adapter(sock).end_client("10.42.0.101") == 1


def test_other_kernel_refusals_are_firewall_errors() -> None:
    sock = FakeSocket(list(ENTRIES), flush_error=errno.EPERM)
    with pytest.raises(FirewallError, match=r"10\.42\.0\.101"):
        adapter(sock).end_client("10.42.0.101")
    assert sock.dumps == 0 and len(sock.entries) == 3


@pytest.mark.parametrize("bad", ["", "10.42.0", "fe80::1", "10.42.0.1; flush"])
def test_an_address_that_is_not_ipv4_is_refused_before_the_kernel(bad: str) -> None:
    sock = FakeSocket(list(ENTRIES))
    with pytest.raises(FirewallError, match="not an IPv4 address"):
        adapter(sock).end_client(bad)
    assert sock.flushes == [] and sock.dumps == 0
