"""gateway.daemon.memory: the arena limit defers to an operator's MALLOC_ARENA_MAX."""

from __future__ import annotations

import pytest

from gateway.daemon import memory


def test_an_arena_limit_in_the_environment_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    class Mallopt:  # stands in for the C function (argtypes and restype settable)
        def __call__(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    class Libc:
        mallopt = Mallopt()

    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: Libc())
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert memory.limit_arenas() is False and calls == []
    # positive control: without it the daemon sets its own
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert memory.limit_arenas() is True and calls == [(memory.M_ARENA_MAX, memory.ARENAS)]
