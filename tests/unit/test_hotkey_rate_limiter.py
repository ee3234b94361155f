"""The gateway's per-hotkey token bucket (services/selector/ratelimit.py)."""

from __future__ import annotations

import pytest

from services.selector.ratelimit import HotkeyRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_sustained_rate():
    clock = Clock()
    limiter = HotkeyRateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)  # one token comes back every 0.5 s
    clock.now += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    clock.now += 60  # refills up to the burst, never beyond
    assert [limiter.take("a") for _ in range(4)][:3] == [0.0, 0.0, 0.0]
    assert limiter.take("a") > 0


def test_each_hotkey_has_its_own_budget():
    limiter = HotkeyRateLimiter(rate_per_s=1.0, burst=2, clock=Clock())
    limiter.take("flooder"), limiter.take("flooder")
    assert limiter.take("flooder") > 0
    assert limiter.take("honest") == 0.0


def test_rate_zero_is_no_limit():
    limiter = HotkeyRateLimiter(rate_per_s=0.0, burst=1, clock=Clock())
    assert not limiter.enabled
    assert all(limiter.take("a") == 0.0 for _ in range(1000))


@pytest.mark.parametrize("rate, burst", [(-1.0, 1), (1.0, 0)])
def test_bad_settings_are_refused(rate, burst):
    with pytest.raises(ValueError):
        HotkeyRateLimiter(rate, burst)
