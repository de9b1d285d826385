"""One notification an order's facts call for, and from when: what the order stage's
rules (:mod:`worker.domain.calls`) and the watch on moving parcels
(:mod:`worker.domain.watch`) both answer with."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from worker.domain.clock import stamp
from worker.domain.shipment import Shipment


@dataclass(frozen=True, slots=True)
class Due:
    """One notification the state calls for, and from when."""

    kind: str
    occasion: str
    at: str  # due time (UTC stamp)
    causes: tuple[str, ...]
    shipment: Shipment | None = None
    send: bool = True  # False: settle it without telling anyone (e.g. shipped after delivery)
    facts: dict[str, Any] = field(default_factory=dict)


@functools.lru_cache(maxsize=1 << 14)  # an order's few times, shifted alike on every decision
def plus(at: str, **delta: float) -> str:
    return stamp(datetime.fromisoformat(at) + timedelta(**delta))


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
