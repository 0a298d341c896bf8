"""Cheap looks at our nftables table through nfnetlink, for the checks that run often.

Why not libnftables here: before any command it fills a cache of the whole
ruleset, set elements included, so even ``nft list tables`` costs ~35 ms and
``nft get element`` ~65 ms with 5,000 clients online. The checks that run
every few seconds (is our table still ours?) and on portal visits (is this
client in ``auth4``?) must not grow with the village. nfnetlink answers each
of these with one small request: a table's handle, the rules of one chain, one
set element. Every call blocks (netlink on a socket of its own).

Layouts (linux/netlink.h, linux/netfilter/nfnetlink.h, nf_tables.h):
``nlmsghdr`` = len u32, type u16, flags u16, seq u32, pid u32; ``nfgenmsg`` =
family u8, version u8, res_id be16; attributes = len u16, type u16, payload,
padded to 4 bytes (nested ones flagged ``NLA_F_NESTED``). A concatenated key
(``ether_addr . ipv4_addr``) is each part padded to 4 bytes: 8 + 4 bytes.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Iterator

from gateway.errors import FirewallError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE = 0, 1
NFT_MSG_NEWRULE, NFT_MSG_GETRULE = 6, 7
NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM = 12, 13
NFTA_TABLE_NAME, NFTA_TABLE_HANDLE = 1, 4
NFTA_RULE_TABLE, NFTA_RULE_CHAIN = 1, 2
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM, NFTA_SET_ELEM_KEY, NFTA_DATA_VALUE = 1, 1, 1
NLA_F_NESTED = 0x8000
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
FAMILIES = {"inet": 1, "bridge": 7}

_HDR = struct.Struct("=IHHII")
_NFGEN = struct.Struct("=BBH")


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _name(text: str) -> bytes:
    return text.encode() + b"\0"


def _request(msg: int, family: str, flags: int, attrs: bytes) -> bytes:
    body = _NFGEN.pack(FAMILIES[family], 0, 0) + attrs
    kind = (NFNL_SUBSYS_NFTABLES << 8) | msg
    return _HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | flags, 1, 0) + body


def _exchange(request: bytes) -> Iterator[tuple[int, bytes]]:
    """Send one request; yield (nftables message type, attribute bytes) of each answer
    until the request is done. Raises OSError(errno) for an error answer."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(5.0)
        sock.send(request)
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, kind, _flags, _seq, _pid = _HDR.unpack_from(data, offset)
                if length < _HDR.size:
                    return
                start = offset + _HDR.size
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, start)[0]
                    if code:
                        raise OSError(code, errno.errorcode.get(code, str(code)))
                    return  # the acknowledgement closes a non-dump request
                yield kind & 0xFF, data[start + _NFGEN.size:offset + length]
                offset += (length + 3) & ~3


def _attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, pos)
        if length < 4:
            return
        yield kind & ~NLA_F_NESTED, data[pos + 4:pos + length]
        pos += (length + 3) & ~3


def table_handle(family: str, table: str) -> int | None:
    """The kernel's handle of ``family table`` (a new one whenever the table is made
    again); None when there is no such table. Blocks; raises FirewallError."""
    request = _request(NFT_MSG_GETTABLE, family, NLM_F_ACK, _attr(NFTA_TABLE_NAME, _name(table)))
    try:
        for kind, attrs in _exchange(request):
            if kind == NFT_MSG_NEWTABLE:
                for akind, value in _attrs(attrs):
                    if akind == NFTA_TABLE_HANDLE:
                        return int(struct.unpack(">Q", value[:8])[0])
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise FirewallError(f"nfnetlink: asking for table {family} {table} failed: {exc}") from exc
    return None


def rule_count(family: str, table: str, chain: str) -> int:
    """How many rules ``chain`` holds (0 when it or its table is gone). Blocks; raises
    FirewallError."""
    attrs = _attr(NFTA_RULE_TABLE, _name(table)) + _attr(NFTA_RULE_CHAIN, _name(chain))
    try:
        return sum(1 for kind, _ in _exchange(_request(NFT_MSG_GETRULE, family, NLM_F_DUMP, attrs))
                   if kind == NFT_MSG_NEWRULE)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return 0
        raise FirewallError(f"nfnetlink: listing {family} {table} {chain} failed: {exc}") from exc


def mac_ip_key(mac: str, ip: str) -> bytes:
    """The element key of ``ether_addr . ipv4_addr``: 6 bytes padded to 8, then 4."""
    return bytes.fromhex(mac.replace(":", "")) + b"\0\0" + ipaddress.IPv4Address(ip).packed


def has_element(family: str, table: str, set_name: str, key: bytes) -> bool:
    """Is ``key`` in the set (and not timed out)? Blocks; raises FirewallError when the
    table or the set is gone or the kernel refuses."""
    elem = _attr(NLA_F_NESTED | NFTA_SET_ELEM_KEY, _attr(NFTA_DATA_VALUE, key))
    attrs = (_attr(NFTA_SET_ELEM_LIST_TABLE, _name(table))
             + _attr(NFTA_SET_ELEM_LIST_SET, _name(set_name))
             + _attr(NLA_F_NESTED | NFTA_SET_ELEM_LIST_ELEMENTS,
                     _attr(NLA_F_NESTED | NFTA_LIST_ELEM, elem)))
    try:
        return any(kind == NFT_MSG_NEWSETELEM for kind, _ in
                   _exchange(_request(NFT_MSG_GETSETELEM, family, NLM_F_ACK, attrs)))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise FirewallError(f"nfnetlink: looking up an element of {set_name} failed: {exc}") \
            from exc
