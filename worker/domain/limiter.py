"""Token buckets per client: how the tracking page keeps guessing slow.

Time is passed in (monotonic seconds), so the buckets are tested without a clock.
"""

from __future__ import annotations

from collections import OrderedDict


class Buckets:
    """``per_minute`` tries a minute for each key, ``burst`` of them at once. At most
    ``keys`` clients are remembered; the least recently seen are forgotten first (they
    had the longest to refill anyway)."""

    def __init__(self, per_minute: float, burst: int, keys: int = 100_000) -> None:
        self.rate, self.burst, self.keys = per_minute / 60.0, float(burst), keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> tokens, at

    def take(self, key: str, now: float) -> bool:
        """One try for ``key`` at ``now``: True when it may go ahead."""
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.keys:
            self._buckets.popitem(last=False)
        return allowed

    def refund(self, key: str) -> None:
        """Give back the try ``key`` took (it found what it looked for)."""
        if key in self._buckets:
            tokens, at = self._buckets[key]
            self._buckets[key] = (min(self.burst, tokens + 1.0), at)

    def retry_after(self, key: str) -> int:
        """Seconds until ``key`` has a try again."""
        tokens, _ = self._buckets.get(key, (self.burst, 0.0))
        return max(1, int((1.0 - tokens) / self.rate) + 1) if self.rate else 60
