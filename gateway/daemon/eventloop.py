"""Which event loop the daemon runs on: uvloop when it is installed, else asyncio's own.

uvloop (libuv) runs the same asyncio programs with a faster loop and transports: the
HTTP answers of the portal and of the government-services cache cost less CPU each
(docs/benchmarks.md, cache section). Everything the daemon asks of its loop works on
both (readers on netlink sockets and pidfds, subprocesses, signal handlers, threads).
``DESANET_EVENT_LOOP=asyncio`` runs the standard loop instead (to rule uvloop out
when chasing a problem); ``DESANET_EVENT_LOOP=uvloop`` insists on uvloop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from gateway.errors import ConfigError

ENV = "DESANET_EVENT_LOOP"
CHOICES = ("uvloop", "asyncio")
T = TypeVar("T")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def choose(value: str | None = None) -> tuple[LoopFactory | None, str]:
    """(loop factory, or None for asyncio's default; a description for the log).

    ``value``: the setting (default: the ``DESANET_EVENT_LOOP`` environment variable).
    An unknown value, or ``uvloop`` asked for but not installed, is a ConfigError."""
    wanted = (os.environ.get(ENV, "") if value is None else value).strip().lower()
    if wanted not in ("", *CHOICES):
        raise ConfigError([f"{ENV}: found {wanted!r}; expected one of {', '.join(CHOICES)} "
                           "(or unset: uvloop when installed)"], source="environment")
    if wanted == "asyncio":
        return None, f"asyncio (standard event loop, {ENV}=asyncio)"
    try:
        import uvloop
    except ImportError as exc:
        if wanted == "uvloop":
            raise ConfigError([f"{ENV}: found 'uvloop', but uvloop is not installed ({exc}); "
                               "install it (pip install uvloop) or unset the variable"],
                              source="environment") from exc
        return None, "asyncio (standard event loop; uvloop is not installed)"
    return uvloop.new_event_loop, f"uvloop {uvloop.__version__}"


def run(main: Coroutine[Any, Any, T], factory: LoopFactory | None) -> T:
    """``asyncio.run`` on the chosen loop."""
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
