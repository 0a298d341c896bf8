"""SessionLocks: different clients at once, the same client in turn, exclusive alone."""

from __future__ import annotations

import asyncio

import pytest

from gateway.core.locks import SessionLocks


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def hold(locks: SessionLocks, keys: tuple[str, ...], inside: list[str], name: str,
               release: asyncio.Event) -> None:
    async with locks.client(*keys):
        inside.append(name)
        await release.wait()
        inside.remove(name)


@pytest.mark.parametrize(("first", "second", "together"), [
    (("02:aa", "10.0.0.1"), ("02:bb", "10.0.0.2"), True),   # different clients: at once
    (("02:aa", "10.0.0.1"), ("02:aa", "10.0.0.9"), False),  # same MAC: in turn
    (("02:aa", "10.0.0.1"), ("02:bb", "10.0.0.1"), False),  # same address: in turn
])
async def test_client_changes(first: tuple[str, ...], second: tuple[str, ...],
                              together: bool) -> None:
    locks, inside, release = SessionLocks(), [], asyncio.Event()
    tasks = [asyncio.create_task(hold(locks, first, inside, "a", release)),
             asyncio.create_task(hold(locks, second, inside, "b", release))]
    await settle()
    assert sorted(inside) == (["a", "b"] if together else ["a"])
    release.set()
    await asyncio.gather(*tasks)
    assert inside == [] and not locks.busy


async def test_exclusive_waits_for_clients_and_new_clients_wait_for_it() -> None:
    locks, inside, release = SessionLocks(), [], asyncio.Event()
    first = asyncio.create_task(hold(locks, ("02:aa",), inside, "a", release))
    await settle()
    order: list[str] = []

    async def sweep() -> None:
        async with locks.exclusive():
            order.append("sweep")

    async def login() -> None:
        async with locks.client("02:cc"):
            order.append("login")

    swept = asyncio.create_task(sweep())
    await settle()
    late = asyncio.create_task(login())  # asks after the sweep: must not overtake it
    await settle()
    assert order == [] and inside == ["a"]
    release.set()
    await asyncio.gather(first, swept, late)
    assert order == ["sweep", "login"] and not locks.busy


async def test_opposite_key_orders_do_not_deadlock() -> None:
    locks = SessionLocks()
    done: list[int] = []

    async def change(i: int, keys: tuple[str, ...]) -> None:
        async with locks.client(*keys):
            await asyncio.sleep(0)
            done.append(i)

    await asyncio.wait_for(asyncio.gather(*(
        change(i, ("02:aa", "10.0.0.1") if i % 2 else ("10.0.0.1", "02:aa")) for i in range(20)
    )), timeout=5)
    assert sorted(done) == list(range(20)) and not locks.busy


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    locks, inside, release = SessionLocks(), [], asyncio.Event()
    first = asyncio.create_task(hold(locks, ("02:aa",), inside, "a", release))
    await settle()
    waiter = asyncio.create_task(hold(locks, ("02:aa",), inside, "b", asyncio.Event()))
    sweeper = asyncio.create_task(locks.exclusive().__aenter__())
    await settle()
    waiter.cancel()
    sweeper.cancel()
    await asyncio.gather(waiter, sweeper, return_exceptions=True)
    release.set()
    await first
    assert not locks.busy
    async with locks.exclusive():  # positive control: it can still be taken
        pass


async def test_at_most_a_few_client_changes_run_at_once() -> None:
    locks, inside, release = SessionLocks(max_clients_at_once=3), [], asyncio.Event()
    tasks = [asyncio.create_task(hold(locks, (f"02:{i:02x}",), inside, str(i), release))
             for i in range(10)]
    await settle()
    assert len(inside) == 3  # the others wait for a slot, not for a key
    release.set()
    await asyncio.gather(*tasks)
    assert inside == [] and not locks.busy
