from __future__ import annotations

from typing import Any, cast

import pytest

from gateway.portal.ratelimit import RateLimiter


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_defaults_are_five_per_minute() -> None:
    limiter = RateLimiter()
    assert limiter.limit == 5
    assert limiter.window == 60.0


def test_sixth_attempt_refused_then_allowed_after_window() -> None:
    limiter = RateLimiter()
    results = [limiter.allow("aa", now=100.0 + i) for i in range(6)]
    assert results == [True] * 5 + [False]
    # The oldest attempt (t=100) leaves the window at t=160.
    assert limiter.retry_after("aa", now=105.0) == 55
    assert not limiter.allow("aa", now=159.0)
    assert limiter.retry_after("aa", now=159.5) == 1
    assert limiter.allow("aa", now=160.0)
    assert limiter.retry_after("aa", now=160.0) == 1  # full again until t=161
    assert limiter.allow("aa", now=161.0)


@pytest.mark.parametrize(
    ("limit", "window", "times", "expected"),
    [
        (1, 10, [0, 5, 10], [True, False, True]),
        (2, 10, [0, 1, 2, 10, 11], [True, True, False, True, True]),
        (3, 60, [0, 0, 0, 0, 59.9, 60], [True, True, True, False, False, True]),
        # Refused attempts are not recorded, so they do not extend the lock-out.
        (2, 10, [0, 1, 2, 3, 9, 10, 11], [True, True, False, False, False, True, True]),
    ],
)
def test_table(limit: int, window: float, times: list[float], expected: list[bool]) -> None:
    limiter = RateLimiter(limit, window)
    assert [limiter.allow("k", now=t) for t in times] == expected


def test_keys_are_isolated() -> None:
    limiter = RateLimiter(limit=2, window=60)
    assert limiter.allow("02:00:00:00:00:01", now=0)
    assert limiter.allow("02:00:00:00:00:01", now=0)
    assert not limiter.allow("02:00:00:00:00:01", now=1)
    assert limiter.allow("02:00:00:00:00:02", now=1)
    assert limiter.retry_after("02:00:00:00:00:02", now=1) == 0
    assert limiter.retry_after("02:00:00:00:00:01", now=1) == 59


def test_injected_clock() -> None:
    clock = Clock()
    limiter = RateLimiter(limit=1, window=30, clock=clock)
    assert limiter.allow("ip")
    assert not limiter.allow("ip")
    assert limiter.retry_after("ip") == 30
    clock.t += 30
    assert limiter.retry_after("ip") == 0
    assert limiter.allow("ip")


def test_idle_keys_are_forgotten() -> None:
    limiter = RateLimiter(limit=5, window=60)
    for i in range(100):
        limiter.allow(f"k{i}", now=0)
    assert len(limiter) == 100
    assert limiter.prune(now=61) == 100
    assert len(limiter) == 0
    assert limiter.retry_after("unknown", now=61) == 0
    assert len(limiter) == 0  # asking does not create state


def test_memory_is_bounded() -> None:
    limiter = RateLimiter(limit=3, window=60, max_keys=50)
    for i in range(10_000):
        limiter.allow(f"k{i}", now=i * 0.001)
        limiter.allow(f"k{i}", now=i * 0.001)
        assert len(limiter) <= 50
    # Each key holds at most `limit` timestamps.
    for _ in range(100):
        limiter.allow("hot", now=11.0)
    assert len(limiter._hits["hot"]) == 3


def test_bound_evicts_idle_keys_before_active_ones() -> None:
    limiter = RateLimiter(limit=1, window=60, max_keys=3)
    limiter.allow("idle1", now=0)
    limiter.allow("idle2", now=0)
    limiter.allow("busy", now=50)
    limiter.allow("new", now=70)  # idle1/idle2 left the window at t=60
    assert not limiter.allow("busy", now=70)
    assert len(limiter) == 2


def test_clock_stepping_backwards_does_not_lock_out() -> None:
    limiter = RateLimiter(limit=2, window=60)
    limiter.allow("k", now=1_700_000_000)
    limiter.allow("k", now=1_700_000_001)
    assert not limiter.allow("k", now=1_700_000_002)
    assert limiter.allow("k", now=100)  # clock reset to near boot time


def test_reset_and_validation() -> None:
    limiter = RateLimiter(limit=1)
    limiter.allow("k", now=0)
    limiter.reset("k")
    assert limiter.allow("k", now=0)
    for kwargs in ({"limit": 0}, {"window": 0}, {"max_keys": 0}):
        with pytest.raises(ValueError):
            RateLimiter(**cast(Any, kwargs))


def test_refund_gives_back_the_attempt_recorded_at_that_time() -> None:
    clock = Clock()
    limiter = RateLimiter(limit=2, window=60, clock=clock)
    t = limiter.now()
    assert limiter.allow("village", t) and limiter.allow("village", t)
    assert not limiter.allow("village", t)
    limiter.refund("village", t)  # a right code: its place comes back
    assert limiter.allow("village", t)
    limiter.refund("village", t - 999)  # a time never recorded changes nothing
    assert not limiter.allow("village", t)
    limiter.refund("nobody", t)
    clock.t += 60
    limiter.refund("village", t)  # left the window already: nothing to give back
    assert limiter.allow("village")
