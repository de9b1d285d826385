"""A stream through the pure decision code alone, without a broker.

The order stage and the lane stage as the worker runs them under the event clock (each
order's wake-ups at their due times, lessons into lane day buckets, figures back to the order
stage), in one process and in arrival order: what the worker should decide for a
stream, to score predictions and to compare runs against.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from worker.address_book import AddressBook
from worker.domain import lanes, order, risk
from worker.domain.envelope import Envelope
from worker.domain.notification import Alert, Intent
from worker.domain.rules import Rules
from worker.lane_book import LaneBook
from worker.wakeups import Wakeups


@dataclass
class Outcome:
    intents: list[Intent] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    lane_figures: dict[str, dict[str, Any]] = field(default_factory=dict)


class Replay:
    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.states: dict[str, order.OrderState] = {}
        self.wakeups = Wakeups()
        self.book = LaneBook({}, rules.prediction)
        self.addresses = AddressBook({}, rules.risk)
        self.outcome = Outcome()

    def run(self, records: Iterable[Any], read_ahead: int = 0) -> Outcome:
        """``records``: :class:`worker.simulate.Record` in arrival order. ``read_ahead``:
        each tick's decisions wait until that many more records are read, as in a worker
        whose reads run ahead of its decisions; they must come out the same."""
        ticks: deque[tuple[int, datetime]] = deque()
        for n, record in enumerate(records):
            envelope = Envelope(record.event_id, record.source, record.event_type, record.time,
                                record.key, record.data)
            if envelope.type == "clock.tick":
                ticks.append((n + read_ahead, datetime.fromisoformat(envelope.data["now"])))
            elif envelope.type.startswith(("order.", "tracking.")):
                order_id = envelope.data["order_id"]
                applied = order.apply(self.states.get(order_id), envelope, received_at=envelope.time)
                self.states[order_id] = applied.state
                if envelope.type in risk.TOLD_BY and not applied.duplicate:
                    for sighting in risk.sightings(order_id, applied.state.order, applied.state.shipments):
                        if alert := self.addresses.seen(0, sighting):
                            self.outcome.alerts.append(alert)
                self.wakeups.set(0, order_id, applied.state.wake_at)
            while ticks and ticks[0][0] <= n:
                self.until(ticks.popleft()[1])
        while ticks:
            self.until(ticks.popleft()[1])
        return self.outcome

    def until(self, now: datetime) -> None:
        queue = self.wakeups.due(0, now)  # oldest first: a heap already
        while queue:
            due, order_id = heapq.heappop(queue)
            upcoming = self._wake(order_id, due)
            if upcoming is not None and upcoming <= now:
                heapq.heappush(queue, (upcoming, order_id))
            else:
                self.wakeups.set(0, order_id, upcoming)

    def _wake(self, order_id: str, now: datetime) -> datetime | None:
        if order_id not in self.states:
            return None
        figures = self.outcome.lane_figures
        decisions = order.wake(self.states[order_id], now, self.rules,
                               lambda keys: [figures[k] for k in keys if k in figures])
        self.outcome.intents += decisions.intents
        self.outcome.alerts += decisions.alerts
        if decisions.forget:
            del self.states[order_id]
        for lesson in decisions.lessons:
            for lane in lesson.lanes:
                if lesson.stalled_at:
                    figures[lane], started = self.book.stalled(lane, lesson.stalled_at)
                    if started:
                        self.outcome.alerts.append(lanes.incident_alert(lane, figures[lane]["incident"]))
                else:
                    figures[lane] = self.book.learn(lane, lesson.day, lesson.journey)
        return datetime.fromisoformat(decisions.next_wake) if decisions.next_wake else None
