"""Blocking probes in daemon threads.

A check's deadline ends the wait, not the thread: a raw-socket read or a subprocess can
stay stuck in the kernel. ``asyncio.to_thread`` threads belong to the loop's default
executor, which ``asyncio.run`` waits for at exit, so one wedged probe would hold
`desanet diag` (or the TUI) open long after every verdict was printed. These threads are
daemons: the process ends when the run is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a new daemon thread; its result or exception, awaited."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if done.done():  # the check gave up waiting (its deadline)
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(value)

    def work() -> None:
        try:
            value, error = fn(*args), None
        except BaseException as exc:  # handed to the awaiting check, which decides
            value, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=work, name=f"diag-{getattr(fn, '__name__', 'probe')}",
                     daemon=True).start()
    return await done
