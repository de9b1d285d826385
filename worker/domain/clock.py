"""The two clocks of contract section 6.

``wall``: now is the real time the caller passes in. ``event``: now is the largest
event time seen on the partition, so a replay gives the same result every time.
The high-water marks are plain data the caller persists (a table), so the event
clock survives restarts and rebalances.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime


@functools.lru_cache(maxsize=1 << 14)  # an order's few times come back on every decision
def stamp(value: str | datetime) -> str:
    """One comparable text form for every stored time: UTC, whole seconds."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def arrival(moment: datetime) -> str:
    """When an input arrived, in UTC to the millisecond: latencies are measured from it,
    and whole seconds would add up to one to each."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


@dataclass(slots=True)
class Clock:
    event_mode: bool
    high_water: dict[int, datetime] = field(default_factory=dict)

    def observe(self, partition: int, event_time: datetime | None) -> None:
        """Advance the partition's event clock; it never moves backwards."""
        if event_time is None:
            return
        current = self.high_water.get(partition)
        if current is None or event_time > current:
            self.high_water[partition] = event_time

    def now(self, partition: int, wall_now: datetime) -> datetime:
        if not self.event_mode:
            return wall_now
        return self.high_water.get(partition, wall_now)
