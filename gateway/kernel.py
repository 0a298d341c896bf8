"""Worker threads: where the blocking calls of the adapters run.

The event loop never blocks (DESIGN.md section 2). The adapters under the
ports stay plain synchronous classes (``Firewall``, ``Shaper``,
``Neighbours``, ``Store``), easy to drive from tests and benchmarks; the
daemon wraps each in an async adapter that runs every call on a worker:

- ``KernelWorker``: ONE thread for every nft (libnftables) and netlink
  (pyroute2) call. One thread serialises access to the netlink sockets and
  the nft context, and pyroute2's synchronous IPRoute, which drives its own
  event loop, cannot be called from inside the daemon's running loop.
- ``DatabaseWorker``: ONE thread for SQLite transactions (each fsyncs with
  synchronous=FULL). A kernel call never waits behind an fsync, nor the
  other way round.

Calls run one at a time in the order they were submitted. Cancelling the
awaiting task does not stop a call that has started: it runs to the end on
its thread (a half-applied nft transaction cannot be interrupted anyway),
its result is dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Worker:
    """One named thread that runs blocking calls one at a time, in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name,
                                        initializer=self._mark)
        self._closed = False

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` on this worker's thread and return its result.

        Does not block the loop: it awaits the thread. Exceptions raised by
        ``fn`` are raised here unchanged. Raises RuntimeError after
        ``shutdown()``.
        """
        if self._closed:
            raise RuntimeError(f"{self.name} worker is shut down")
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()  # log context, like asyncio.to_thread
        job = functools.partial(ctx.run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._pool, job)

    def _mark(self) -> None:
        self._thread = threading.current_thread()

    def on_worker(self) -> bool:
        """True when the caller runs on this worker's thread (for assertions)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def shutdown(self, wait: bool = True) -> None:
        """Refuse new calls; with ``wait``, block until the queued ones are done.

        Blocks (with ``wait``): call it after the loop stopped submitting, e.g.
        from the daemon's exit stack through ``asyncio.to_thread``.
        """
        self._closed = True
        self._pool.shutdown(wait=wait)


class KernelWorker(Worker):
    """The one thread for nft and netlink calls."""

    def __init__(self, name: str = "kernel") -> None:
        super().__init__(name)


class DatabaseWorker(Worker):
    """The one thread for SQLite transactions."""

    def __init__(self, name: str = "database") -> None:
        super().__init__(name)


def netlink_errors() -> tuple[type[Exception], ...]:
    """What a pyroute2 call raises: the kernel's refusal, socket and argument errors.

    Imported on first use (pyroute2 takes ~140 ms to import; the CLI never
    needs it). Adapters catch exactly these, never ``Exception``.
    """
    from gateway.pyroute import lean

    lean()  # not all of pyroute2 (docs/benchmarks.md, footprint)
    from pyroute2.netlink.exceptions import NetlinkError

    return (NetlinkError, OSError, ValueError)
