"""Prefetch downloads stay under their rate cap (asyncio.sleep is recorded, not waited)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from gateway.cache import proxy
from gateway.cache.proxy import Metrics
from gateway.cache.refresh import read_into as _read_into


class FakeContent:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def iter_chunked(self, size: int) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


class FakeUpstream:
    def __init__(self, chunks: list[bytes], content_length: int | None) -> None:
        self.content = FakeContent(chunks)
        self.content_length = content_length


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> None:
        self.data += chunk


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A virtual clock: sleeping advances it instead of waiting."""
    now = [1000.0]
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(proxy.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(proxy.asyncio, "sleep", fake_sleep)
    return slept


def run(coro: Any) -> Any:
    return asyncio.new_event_loop().run_until_complete(coro)


def test_rate_cap_paces_the_download(clock: list[float]) -> None:
    chunks = [b"x" * 65536] * 16  # 1 MiB
    sink, metrics = Sink(), Metrics()
    run(_read_into(cast(Any, FakeUpstream(chunks, 1 << 20)), sink, 1_000_000, metrics))
    assert bytes(sink.data) == b"".join(chunks)
    # 1 MiB at 1 Mbit/s takes 8.39 s; the virtual clock only moves by sleeping
    assert sum(clock) == pytest.approx(len(sink.data) * 8 / 1_000_000, rel=0.01)
    assert metrics.bytes_from_upstream == 1 << 20


def test_no_cap_means_no_sleeping(clock: list[float]) -> None:
    run(_read_into(cast(Any, FakeUpstream([b"y" * 1000] * 3, 3000)), Sink(), None, Metrics()))
    assert clock == []


def test_short_body_is_an_error(clock: list[float]) -> None:
    with pytest.raises(proxy.aiohttp.ClientPayloadError):
        run(_read_into(cast(Any, FakeUpstream([b"z" * 10], 20)), Sink(), None, Metrics()))
