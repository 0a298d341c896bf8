"""Concurrent session changes against the fakes, at every interleaving a few steps apart.

Each fake call first yields to the event loop once, as a real call queued on a
worker thread does, and the second change starts ``k`` loop turns after the
first, so the table of ``k`` walks one change across the other. After both,
the kernel must back every live session: its firewall entry, its address's
class map entry and its HTB classes (the store is the truth, the kernel a
cache of it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from gateway.core.events import EndReason
from gateway.firewall.fake import FakeFirewall
from gateway.shaping.fake import FakeShaper
from gateway.shaping.plan import client_minor
from gateway.store.fake import MemoryStore
from tests.unit.conftest import make_config
from tests.unit.corekit import Core, build_core

A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
IP1, IP2 = "10.42.0.101", "10.42.0.102"
T = TypeVar("T")


def yielding(fake: T) -> T:
    """Make every coroutine method of ``fake`` yield to the loop once before it runs."""
    for name in dir(type(fake)):
        method = getattr(fake, name)
        if name.startswith("_") or not asyncio.iscoroutinefunction(method):
            continue

        def wrap(call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def later(*args: Any, **kwargs: Any) -> Any:
                await asyncio.sleep(0)
                return await call(*args, **kwargs)
            return later

        setattr(fake, name, wrap(method))
    return fake


class Village:
    def __init__(self, tmp_path: Path) -> None:
        self.store, self.firewall, self.shaper = MemoryStore(), FakeFirewall(), FakeShaper()
        cfg = make_config(shaping={"enabled": True,
                                   "plans": {"school": {"down": "4mbit", "up": "1mbit"}}})
        self.core: Core = build_core(tmp_path, cfg, store=yielding(self.store),
                                     firewall=yielding(self.firewall),
                                     shaper=yielding(self.shaper))

    async def kernel_problems(self) -> list[str]:
        problems = []
        for s in await self.store.active_sessions(self.core.clock.now()):
            minor = client_minor(self.core.cfg, s.ip)
            if (s.mac, s.ip) not in self.firewall.authorized:
                problems.append(f"{s.mac} {s.ip}: live in the store, not in the firewall")
            if s.ip not in self.firewall.classes:
                problems.append(f"{s.mac} {s.ip}: no address -> class map entry")
            problems += [f"{s.mac} {s.ip}: no HTB class on {dev}"
                         for dev, classes in self.shaper.classes.items() if minor not in classes]
        return problems


async def after(turns: int, change: Coroutine[Any, Any, T]) -> T:
    for _ in range(turns):
        await asyncio.sleep(0)
    return await change


@pytest.fixture
async def village(tmp_path: Path) -> Village:
    v = Village(tmp_path)
    await v.core.start()
    return v


@pytest.mark.parametrize("k", range(12))
async def test_logout_of_a_phone_while_another_logs_in_on_its_old_address(
    village: Village, k: int
) -> None:
    sessions = village.core.sessions
    await sessions.authorize(A, IP1, "terms")
    await asyncio.gather(sessions.end(A, EndReason.DEAUTH),
                         after(k, sessions.authorize(B, IP1, "terms")))
    assert await village.kernel_problems() == []
    assert (A, IP1) not in village.firewall.authorized  # positive control: A is out


@pytest.mark.parametrize("k", range(12))
async def test_a_phone_moves_address_while_another_takes_its_old_one(
    village: Village, k: int
) -> None:
    sessions = village.core.sessions
    await sessions.authorize(A, IP1, "terms")
    await asyncio.gather(sessions.authorize(A, IP2, "terms"),
                         after(k, sessions.authorize(B, IP1, "terms")))
    assert await village.kernel_problems() == []
    assert (A, IP1) not in village.firewall.authorized


@pytest.mark.parametrize("k", range(6))
async def test_a_revoked_voucher_then_an_immediate_login_on_terms(
    village: Village, k: int
) -> None:
    core = village.core
    _, made = await core.vouchers.create_batch(1, 3600, 1, None, "t")
    await core.sessions.authorize(A, IP1, "voucher", voucher_code=made[0].code)
    await asyncio.gather(core.vouchers.revoke(made[0].code),
                         after(k, core.sessions.authorize(A, IP1, "terms")))
    assert await village.kernel_problems() == []


@pytest.mark.parametrize("k", range(6))
async def test_a_released_voucher_then_an_immediate_login_with_a_new_one(
    village: Village, k: int
) -> None:
    core = village.core
    _, made = await core.vouchers.create_batch(2, 3600, 1, None, "t")
    await core.sessions.authorize(A, IP1, "voucher", voucher_code=made[0].code)
    await asyncio.gather(core.vouchers.release(made[0].code, A),
                         after(k, core.sessions.authorize(A, IP1, "voucher",
                                                          voucher_code=made[1].code)))
    assert await village.kernel_problems() == []
