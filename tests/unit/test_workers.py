"""The kernel and database workers: one thread each, calls in order, errors unchanged."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.errors import FirewallError
from gateway.kernel import DatabaseWorker, KernelWorker


async def test_calls_run_in_order_on_one_named_thread() -> None:
    worker = KernelWorker()
    seen: list[tuple[int, str]] = []

    def job(i: int, *, tag: str = "") -> int:
        assert worker.on_worker()
        seen.append((i, threading.current_thread().name))
        return i * 2

    try:
        results = await asyncio.gather(*(worker.call(job, i, tag="x") for i in range(20)))
    finally:
        worker.shutdown()
    assert results == [i * 2 for i in range(20)]
    assert [i for i, _ in seen] == list(range(20))
    assert len({name for _, name in seen}) == 1 and seen[0][1].startswith("kernel")
    assert not worker.on_worker()


async def test_errors_come_back_unchanged_and_shutdown_refuses() -> None:
    worker = DatabaseWorker()

    def boom() -> None:
        raise FirewallError("nope")

    with pytest.raises(FirewallError, match="nope"):
        await worker.call(boom)
    assert await worker.call(threading.current_thread) is not threading.current_thread()
    worker.shutdown()
    with pytest.raises(RuntimeError, match="database worker is shut down"):
        await worker.call(int)
