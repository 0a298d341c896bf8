"""The upstream connections of the cache: aiohttp's client, hardened against one malformed
answer that nginx tolerates, and passing interim (1xx) answers on to the villager.

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

import contextlib
import contextvars
import functools
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.connector import Connection

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
        if self._left is not None and len(data) < self._left:  # the common case: all body
            self._left -= len(data)
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
                        self._framed, self._head = False, b""
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


# -- interim (1xx) answers -------------------------------------------------------------------
#
# RFC 9110 §15.2: a proxy forwards 1xx answers (e.g. 103 Early Hints) unless it asked for
# them itself. aiohttp's client reads and discards them inside ClientResponse.start; the
# response class below looks at each message start() reads and hands the interim ones
# to the hook set for the current task (the villager's request being answered).

MAX_INTERIM = 8  # interim answers passed on per request; an origin may loop on them
InterimHook = Callable[[int, str, list[tuple[bytes, bytes]]], None]
_interim_hook: contextvars.ContextVar[InterimHook | None] = contextvars.ContextVar(
    "desanet_interim_hook", default=None)


class InterimResponse(aiohttp.ClientResponse):
    async def start(self, connection: Connection) -> aiohttp.ClientResponse:
        hook = _interim_hook.get()
        protocol = connection.protocol
        if hook is None or protocol is None:
            return await super().start(connection)
        read = protocol.read

        async def read_and_show() -> Any:
            message, payload = await read()
            if 100 <= message.code < 200 and message.code != 101:
                hook(message.code, message.reason, list(message.raw_headers))
            return message, payload

        setattr(protocol, "read", read_and_show)  # noqa: B010 (an instance attribute, for start())
        try:
            return await super().start(connection)
        finally:
            delattr(protocol, "read")


@contextlib.contextmanager
def interim_to(request: web.BaseRequest | None) -> Iterator[None]:
    """Within the block, 1xx answers from the upstream are written to ``request``'s
    connection at once, before its final answer (not to an HTTP/1.0 client, §15.2)."""
    if request is None or request.version < (1, 1):
        yield
        return

    sent = 0

    def send(code: int, reason: str, raw_headers: list[tuple[bytes, bytes]]) -> None:
        nonlocal sent
        transport = request.transport
        if (transport is None or transport.is_closing() or _prepared(request)
                or sent >= MAX_INTERIM):
            return  # (beyond MAX_INTERIM: written without back-pressure, they would pile up)
        sent += 1
        lines = [f"HTTP/1.1 {code} {reason}".encode("latin-1", "replace")]
        lines += [name + b": " + value for name, value in raw_headers
                  if name.decode("latin-1").lower() not in _INTERIM_DROPPED]
        transport.write(b"\r\n".join(lines) + b"\r\n\r\n")

    token = _interim_hook.set(send)
    try:
        yield
    finally:
        _interim_hook.reset(token)


# Connection-level fields are not passed on (RFC 9110 §7.6.1), in 1xx answers either.
_INTERIM_DROPPED = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authenticate", "proxy-authorization", "content-length",
})


def _prepared(request: web.BaseRequest) -> bool:
    """The final answer's head is out already: too late for an interim one."""
    writer = getattr(request, "writer", None)
    return bool(getattr(writer, "output_size", 0))
