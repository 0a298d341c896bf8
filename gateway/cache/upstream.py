"""The upstream connections of the cache: aiohttp's client, hardened against one malformed
answer that nginx tolerates.

An origin that sends more body than its ``Content-Length`` says (a miscounted length)
makes aiohttp's parser read the excess as the next response's status line; the error
is raised while the good answer is still in the same buffer, so that answer is lost
and the villager would see "service unreachable". nginx trusts the length, drops the
excess and never reuses the connection ("upstream sent more data than specified in
Content-Length"). :class:`TrustLengthProtocol` does the same: it follows the framing
of each answer with a ``Content-Length`` and passes only the announced bytes to the
parser; bytes after a complete final answer are dropped and the connection is marked
to close when it is released (aiohttp does not pipeline, so nothing may follow before
the next request).

This relies on two aiohttp internals, checked by tests/unit/test_cache_upstream.py:
the connector's protocol factory (``_factory``) and the HEAD flag ``_skip_payload``.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler

log = logging.getLogger("desanet.cache")

_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 64 * 1024  # longer heads are left to the parser (it refuses them itself)
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)[ \t]*(?=\r\n)", re.IGNORECASE)
_TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding:", re.IGNORECASE)


class TrustLengthProtocol(ResponseHandler):
    """aiohttp's response protocol, passing the parser no more than ``Content-Length``."""

    def __init__(self, loop: Any) -> None:
        super().__init__(loop)
        self._head = b""  # the current answer's head so far (none of it is held back)
        self._left: int | None = None  # body bytes still due; None: reading a head
        self._framed = True  # False once an answer's end is not known here (chunked, ...)
        self._awaiting = False  # a request was sent and its final answer is not complete
        self.excess = 0  # bytes dropped after complete answers: the connection is spoiled

    def set_response_params(self, **kwargs: Any) -> None:
        """Called by aiohttp for every request sent on this connection."""
        super().set_response_params(**kwargs)
        self._head, self._left, self._framed, self._awaiting = b"", None, True, True

    def is_connected(self) -> bool:
        # A spoiled connection is never handed out again from the pool.
        return not self.excess and super().is_connected()

    def data_received(self, data: bytes) -> None:
        if self.excess or (not self._awaiting and data):
            self._drop(len(data))  # after a complete answer, before any request: excess
            return
        if not self._framed or not data:
            super().data_received(data)
            return
        out, dropped = self._frame(data)
        super().data_received(out)
        if dropped:
            self._drop(dropped)

    def _frame(self, data: bytes) -> tuple[bytes, int]:
        """The part of ``data`` that belongs to the answer in flight, and how much is excess."""
        out = bytearray()
        pos = 0
        while True:
            if self._left is None:
                if pos >= len(data):
                    return bytes(out), 0
                before = len(self._head)
                self._head += data[pos:]
                end = self._head.find(_HEAD_END, max(0, before - 3))
                if end < 0:
                    if len(self._head) > _MAX_HEAD:
                        self._framed = False
                    return bytes(out + data[pos:]), 0
                taken = end + 4 - before
                out += data[pos:pos + taken]
                pos += taken
                self._left = self._body_length(self._head[:end + 2])
                self._head = b""
                if self._left is None:  # an end this class does not follow
                    self._framed = False
                    return bytes(out + data[pos:]), 0
                if self._left == -1:  # a 1xx: another head follows
                    self._left = None
                    continue
            take = min(self._left, len(data) - pos)
            out += data[pos:pos + take]
            pos += take
            self._left -= take
            if self._left > 0:
                return bytes(out), 0
            self._left = None
            self._awaiting = False
            return bytes(out), len(data) - pos

    def _drop(self, size: int) -> None:
        if not self.excess:
            log.warning("upstream sent more data than its Content-Length; dropped, and the "
                        "connection is not reused")
        self.excess += size
        self.force_close()

    def _body_length(self, head: bytes) -> int | None:
        """Body bytes of the answer with this head: -1 for an interim 1xx answer, None when
        its end is not known from the head (chunked, read to close, malformed)."""
        status = _STATUS.match(head)
        if status is None:
            return None
        code = int(status.group(1))
        if 100 <= code < 200:
            return -1 if code != 101 else None
        if code in (204, 304) or getattr(self, "_skip_payload", False):
            return 0
        if _TRANSFER_ENCODING.search(head):
            return None
        lengths = set(_LENGTH.findall(head))
        if len(lengths) != 1:
            return None  # none, or conflicting ones: the parser decides
        return int(lengths.pop())


def connector(**kwargs: Any) -> aiohttp.TCPConnector:
    """A TCPConnector whose connections use :class:`TrustLengthProtocol`."""
    conn = aiohttp.TCPConnector(**kwargs)
    factory = getattr(conn, "_factory", None)
    if isinstance(factory, functools.partial) and factory.func is ResponseHandler:
        ours: Any = functools.partial(TrustLengthProtocol, *factory.args, **factory.keywords)
        conn._factory = ours
    else:  # another aiohttp: keep its own protocol rather than break
        log.warning("aiohttp's connector changed: Content-Length excess is not trimmed")
    return conn
