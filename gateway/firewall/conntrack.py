"""Ending a client's tracked connections through ctnetlink (pyroute2), never a child process.

Why: the nftables verdicts that depend on a client's authorization are bound
to its connection-tracking entries. The NAT redirect of port 80 to the
portal is decided on a connection's first packet, so a keep-alive connection
opened before login stays redirected after it; and the download direction of
an established flow is accepted by ``ct state established``, so a stream
started before a deauth keeps flowing while its entry lives. Deleting the
entries makes the next packet of each flow meet the current rules.

What ends when:

* at login, the connections the portal redirect caught (TCP to port 80 with
  status DST_NAT; a DNS query redirected to dnsmasq is left alone): the next
  packet of such a connection reaches the real site, which resets it, and the
  browser opens a new one that is not redirected;
* at a cut-off, the client's UDP flows (QUIC, media streams, and the VPNs a
  phone uses behind NAT: WireGuard, OpenVPN, IPsec NAT-T): they may flow
  towards the client only. TCP entries stay on purpose: the client
  acknowledges what it receives, the forward chain answers that
  acknowledgement with a reset, and the download ends at once; deleting them
  instead would drop the server's next segment at the WAN and leave the
  client waiting on a silent connection. ICMP is request and answer, and
  other protocols (GRE, bare ESP) do not pass the gateway's NAT from a phone.

Cost: one netlink request with a filter (CTA_FILTER: the client's IPv4
source, the protocol, for the login the port and the DST_NAT status): the
kernel walks its table in C and deletes what matches; nothing is copied to
user space (measured on a busy 2-core VM: 2-4 ms, 10-25 ms with 20,000
entries in the table). pyroute2 takes about a millisecond to parse an entry
and a round trip per delete (20 UDP flows: ~40-80 ms), so listing and
deleting from Python is only the fallback for kernels that cannot delete by
filter: they take the partial tuple for an exact one and answer EINVAL (a
partial tuple never matches a real entry), or answer EOPNOTSUPP; the first
try tells. Such kernels still filter the listing (5.8+), so the work follows
the client's matching entries; before 5.8 the kernel ignores the filter and
pyroute2 filters in Python, at O(table) per call.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from typing import Any

from gateway.errors import FirewallError
from gateway.firewall.planner import REDIRECTED_PORT
from gateway.kernel import netlink_errors
from gateway.pyroute import lean

log = logging.getLogger("desanet.firewall.conntrack")

IPS_DST_NAT = 1 << 5  # include/uapi/linux/netfilter/nf_conntrack_common.h
# How a kernel without filtered deletes answers the first try: it reads our partial tuple
# as an exact one (EINVAL; ENOENT to be safe) or refuses the filter (EOPNOTSUPP).
_FILTER_REFUSED = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOENT)


class Conntrack:
    """Synchronous; every method blocks on one netlink socket (opened on first use).

    Works in the network namespace of the calling process: the daemon's.
    """

    def __init__(self) -> None:
        self._sock: Any = None
        self._lock = threading.Lock()
        self._flush_filter: bool | None = None  # None: not tried yet on this kernel

    def end_client(self, ip: str, redirected_only: bool = False) -> int | None:
        """Delete conntrack entries whose original source is ``ip`` (IPv4).

        ``redirected_only`` (at login): its http connections the portal
        redirect caught. Otherwise (a cut-off): its UDP flows. See the module's
        docstring for why. Returns how many entries were deleted, or None when
        the kernel deleted them in one filtered flush (it does not say how
        many). Blocks: netlink round trips. Raises FirewallError when the
        kernel refuses or the address is not IPv4.
        """
        try:
            socket.inet_pton(socket.AF_INET, ip)
        except OSError:
            raise FirewallError(f"conntrack: {ip!r} is not an IPv4 address") from None
        with self._lock:
            try:
                if self._flush_filter is not False:
                    try:
                        self._flush(ip, redirected_only)
                        self._flush_filter = True
                        return None
                    except netlink_errors() as exc:
                        if self._flush_filter or getattr(exc, "code", None) not in _FILTER_REFUSED:
                            raise
                        self._flush_filter = False
                        log.info("kernel refuses a filtered conntrack flush (%s); deleting "
                                 "entries one by one", exc)
                return self._delete_each(ip, redirected_only)
            except netlink_errors() as exc:
                raise FirewallError(f"conntrack: could not end the connections of {ip}: "
                                    f"{exc}") from exc

    def close(self) -> None:
        """Close the netlink socket. Blocks briefly."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    # -- internals ----------------------------------------------------------------

    def _socket(self) -> Any:
        if self._sock is None:
            lean()
            from pyroute2.conntrack import Conntrack as PyConntrack

            self._sock = PyConntrack()
        return self._sock

    @staticmethod
    def _tuple(ip: str, redirected_only: bool) -> Any:
        lean()  # not all of pyroute2 (docs/benchmarks.md, footprint)
        from pyroute2.conntrack import NFCTAttrTuple

        if redirected_only:
            t = NFCTAttrTuple(saddr=ip, proto=socket.IPPROTO_TCP, dport=REDIRECTED_PORT)
        else:
            t = NFCTAttrTuple(saddr=ip, proto=socket.IPPROTO_UDP)
        t.attrs()  # computes t.flags, the CTA_FILTER mask of the fields set
        return t

    def _flush(self, ip: str, redirected_only: bool) -> None:
        """One IPCTNL_MSG_CT_DELETE with CTA_FILTER: the kernel deletes every match."""
        lean()
        from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
        from pyroute2.netlink.nfnetlink.nfctsocket import (
            IPCTNL_MSG_CT_DELETE,
            nfct_msg,
            terminate_error_msg,
        )

        t = self._tuple(ip, redirected_only)
        fields: dict[str, Any] = {
            "tuple_orig": t,
            "cta_filter": {"attrs": [["CTA_FILTER_ORIG_FLAGS", t.flags]]},
        }
        if redirected_only:
            fields.update(status=IPS_DST_NAT, status_mask=IPS_DST_NAT)
        self._socket().request(nfct_msg.create_from(**fields), IPCTNL_MSG_CT_DELETE,
                               msg_flags=NLM_F_REQUEST | NLM_F_ACK,
                               terminate=terminate_error_msg)

    def _delete_each(self, ip: str, redirected_only: bool) -> int:
        lean()
        from pyroute2.netlink.exceptions import NetlinkError

        sock = self._socket()
        entries = list(sock.dump_entries(tuple_orig=self._tuple(ip, redirected_only)))
        deleted = 0
        for entry in entries:
            if redirected_only and not entry.status & IPS_DST_NAT:
                continue
            try:
                sock.delete(entry)
            except NetlinkError as exc:
                if exc.code != errno.ENOENT:  # gone meanwhile (timed out, closed): fine
                    raise
                continue
            deleted += 1
        return deleted
