"""One thread for every pyroute2 call the daemon makes.

pyroute2's synchronous IPRoute drives its own event loop, so it cannot be
called from inside the daemon's running loop. The adapters (neighbours,
shaping) stay plain synchronous classes, easy to use from tests and
benchmarks; the daemon runs their calls here, one at a time, which also
serialises access to their netlink sockets.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class NetlinkThread:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
