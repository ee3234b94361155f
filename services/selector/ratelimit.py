"""A per-hotkey call budget for the miner gateway: one token bucket per authenticated hotkey.

Checked after the signature, the allow-list and the replay check (so nobody can spend another
miner's budget with forged or replayed calls) and before any other work of the call. The
buckets live in the gateway process: with several replicas each enforces its own budget.
Only allowed hotkeys ever get a bucket, so their number is bounded by the allow-list/metagraph.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class HotkeyRateLimiter:
    """`burst` calls at once per hotkey, refilled at `rate_per_s`; rate 0 turns the limit off."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if rate_per_s < 0:
            raise ValueError(f"HotkeyRateLimiter.rate_per_s must be >= 0, got {rate_per_s!r}")
        if burst < 1:
            raise ValueError(f"HotkeyRateLimiter.burst must be >= 1, got {burst!r}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0

    def take(self, hotkey: str) -> float:
        """Spend one call of `hotkey`'s budget: 0.0 when it may go ahead, else seconds until it may retry."""
        if not self.enabled:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(hotkey)
        if bucket is None:
            bucket = self._buckets[hotkey] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate_per_s)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s
