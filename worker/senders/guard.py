"""Per-provider protection: a token bucket for the provider's rate limit, and a circuit
breaker that stops calling a provider that keeps failing. Time is passed in (seconds on a
monotonic clock), so both are plain objects tested without waiting."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """``rate`` calls a second on average, bursts of up to ``burst``."""

    rate: float
    burst: float
    tokens: float | None = None  # full until first used
    updated: float = 0.0

    def wait(self, now: float) -> float:
        """Take a token: seconds to wait before the call (0: go now)."""
        if self.rate <= 0:
            return 0.0
        if self.tokens is None:
            self.tokens, self.updated = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass
class CircuitBreaker:
    """Closed: calls go. After ``threshold`` failures in a row: open for ``cool_down``
    seconds, calls wait. Then half-open: one trial call; success closes, failure re-opens."""

    threshold: int = 20
    cool_down: float = 30.0
    failures: int = 0
    opened_at: float | None = None
    trial: bool = field(default=False)

    def state(self, now: float) -> str:
        if self.opened_at is None:
            return "closed"
        return "open" if now - self.opened_at < self.cool_down or self.trial else "half_open"

    def wait(self, now: float) -> float:
        """Seconds until a call may go (0: now; a half-open breaker lets one trial through)."""
        state = self.state(now)
        if state == "closed":
            return 0.0
        if state == "half_open":
            self.trial = True
            return 0.0
        assert self.opened_at is not None
        return max(1.0, self.cool_down - (now - self.opened_at)) if not self.trial else 1.0

    def succeeded(self) -> None:
        self.failures, self.opened_at, self.trial = 0, None, False

    def failed(self, now: float) -> bool:
        """Count a failure; True when it opens the circuit (closed until now, or its trial
        call failed), not for the calls already in flight that fail after it."""
        self.failures += 1
        if self.trial or self.failures >= self.threshold:
            opens = self.opened_at is None or self.trial
            self.opened_at, self.trial = now, False
            return opens
        return False
