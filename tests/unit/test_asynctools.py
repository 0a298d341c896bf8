"""A loop that waits with a timeout must stop when cancelled, also when the cancel and
the wake-up land in the same loop turn (asyncio.wait_for on 3.11 could lose the cancel;
a delivery test hung on it once under load)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.asynctools import wait_event


async def _waiter(event: asyncio.Event, rounds: list[int]) -> None:
    while True:
        event.clear()
        await wait_event(event, 30.0)
        rounds.append(1)


@pytest.mark.parametrize("order", ["set-then-cancel", "cancel-then-set"])
async def test_a_cancel_in_the_same_turn_as_the_wake_up_stops_the_loop(order: str) -> None:
    event, rounds = asyncio.Event(), []
    task = asyncio.create_task(_waiter(event, rounds))
    await asyncio.sleep(0)  # the task is now waiting on the event
    if order == "set-then-cancel":
        event.set()
        task.cancel()
    else:
        task.cancel()
        event.set()
    async with asyncio.timeout(10):  # a deadline for a hang, not a timing assertion
        with pytest.raises(asyncio.CancelledError):
            await task
    assert task.cancelled()


async def test_set_and_timeout_are_told_apart() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 30.0) is True
