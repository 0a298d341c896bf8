"""glibc's malloc arenas for the daemon: at most two.

glibc gives each thread that contends for the heap an arena of its own (up to 8 per
core), each keeping freed memory for reuse. The daemon's threads (the netlink and
database workers, paho's network thread, libuv's pool) allocate little, so extra
arenas only hold memory: two save ~1.3 MB resident (docs/benchmarks.md, footprint).
``MALLOC_ARENA_MAX`` in the environment still wins. Call before threads start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("desanet.daemon")

M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """mallopt(M_ARENA_MAX, arenas); False where it does not apply (not glibc, or the
    environment sets it)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(M_ARENA_MAX, arenas) == 1
    if not done:
        log.debug("mallopt(M_ARENA_MAX, %d) refused", arenas)
    return done
