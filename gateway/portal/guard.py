"""A request body that barely moves cannot hold a portal connection.

Headers are bounded by aiohttp itself: the portal's server is started with a
short ``keepalive_timeout``, which (aiohttp >= 3.10) also runs from the
moment a connection opens and closes it when no whole request has arrived
by then, however slowly bytes trickle in. Nothing bounds the body: a client
may announce a large ``Content-Length`` and send a byte a second. So this
middleware (outermost, for the portal and the local services alike) looks at
every request whose body is still coming: each ``BODY_CHECK`` seconds at
least ``MIN_BODY_BYTES`` more must have arrived, or the read fails, a 408 is
sent and the connection is closed. A form over slow Wi-Fi (kilobytes a
second) passes; a slowloris body does not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

log = logging.getLogger("desanet.portal")

BODY_CHECK = 10.0  # seconds between two looks at a body's progress
MIN_BODY_BYTES = 1024  # ... and how much more of it must have come in meanwhile

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BodyTooSlow(ConnectionError):
    """The body stalled: the handler's read fails with this; the answer is a 408."""


class _Watch:
    def __init__(self, request: web.Request, every: float, least: int) -> None:
        self.request = request
        self.every = every
        self.least = least
        self.seen = request.content.total_bytes
        self.cut = False
        self._handle = asyncio.get_running_loop().call_later(every, self._look)

    def _look(self) -> None:
        content = self.request.content
        if content.at_eof() or content.exception() is not None:
            return
        now = content.total_bytes
        if now - self.seen < self.least:
            self.cut = True
            log.warning("cut a request body that stalled: %s %s from %s (%d bytes in %.0f s)",
                        self.request.method, self.request.path, self.request.remote,
                        now - self.seen, self.every)
            content.set_exception(BodyTooSlow())
            return
        self.seen = now
        self._handle = asyncio.get_running_loop().call_later(self.every, self._look)

    def cancel(self) -> None:
        self._handle.cancel()


def make_body_deadline(every: float = BODY_CHECK, least: int = MIN_BODY_BYTES) -> Middleware:
    @web.middleware
    async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.body_exists or request.content.at_eof():
            return await handler(request)
        watch = _Watch(request, every, least)
        try:
            answer = await handler(request)
        except Exception:
            if not watch.cut:
                raise
        else:
            if not watch.cut:
                return answer
        finally:
            watch.cancel()
        # Whatever the handler made of the failed read, the answer is a 408, sent now,
        # and the connection closes at once: aiohttp would otherwise linger to read the
        # rest of the body.
        response = web.Response(status=408, text="408: the request body came too slowly\n")
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()
        return response
    return body_deadline


body_deadline = make_body_deadline()
