"""Per-provider protection: a token bucket for the provider's rate limit, and a circuit
breaker that stops calling a provider that keeps failing. Time is passed in (seconds on a
monotonic clock), so both are plain objects tested without waiting."""

from __future__ import annotations

from collections import deque
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
    """Closed: calls go. Open for ``cool_down`` seconds, calls waiting, once at least
    ``threshold`` of the provider's recent calls have failed and nine in ten of them did,
    counting the calls still in flight as good. Then half-open: one trial call; success
    closes, failure re-opens.

    Why not failures in a row: calls go out in bursts, and a provider's refusals (a 451, a
    503) come back before its slow acceptances, so in the order they came back a burst to a
    provider that took half of it began with 20 failures in a row (seen: 30 of 60 emails
    answered 451 first, and every email then waited 30 s for the circuit)."""

    threshold: int = 20
    cool_down: float = 30.0
    opened_at: float | None = None
    trial: bool = False
    recent: deque[bool] = field(init=False, repr=False)  # True: the call succeeded

    SHARE = 0.9  # of the recent calls and those in flight, failed

    def __post_init__(self) -> None:
        self.recent = deque(maxlen=2 * self.threshold)

    @property
    def failures(self) -> int:
        """Of the recent calls, how many failed."""
        return self.recent.count(False)

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
        if self.opened_at is not None:  # back (its trial, or a call from before it opened)
            self.recent.clear()
        self.recent.append(True)
        self.opened_at, self.trial = None, False

    def failed(self, now: float, in_flight: int = 0) -> bool:
        """Count a failure, with ``in_flight`` other calls not back yet; True when it opens
        the circuit (closed until now, or its trial call failed), not for the calls already
        in flight that fail after it."""
        self.recent.append(False)
        failures = self.failures
        if self.trial or (failures >= self.threshold
                          and failures >= self.SHARE * (len(self.recent) + in_flight)):
            opens = self.opened_at is None or self.trial
            self.opened_at, self.trial = now, False
            return opens
        return False
