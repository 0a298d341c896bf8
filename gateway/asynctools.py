"""Small asyncio helpers the standard library gets subtly wrong on Python 3.11."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; True when it was set.

    Unlike ``asyncio.wait_for(event.wait(), timeout)`` on Python 3.11, a cancel of the
    caller that lands in the same loop turn as the event is never swallowed
    (CPython gh-86296): a loop that waits this way always stops when cancelled.
    ``asyncio.timeout`` counts cancellations, so it tells its own from the caller's.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
