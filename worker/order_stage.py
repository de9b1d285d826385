"""The order stage: ``orders.events`` + ``tracking.events`` (co-partitioned by order_id)
→ each order's state → :mod:`worker.domain.order` → intents, re-keyed by customer_id onto
``notifications.intents``, and alerts, lane lessons and address sightings.

Events change an order's state; decisions are made by passes over the orders due, at the
partition's ticks (``clock.tick`` on ``tracking.events``) and, once both input partitions
are read to their ends, at once. After each pass every customer partition is told how far
this order partition has got (a tick on ``notifications.intents``): the customer stage's
watermark.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import faust
import orjson
from faust.types import TP

from worker import codec, metrics, packing
from worker.codec import BadInput
from worker.domain import order, risk
from worker.domain.clock import Clock
from worker.domain.envelope import Envelope
from worker.domain.plain import plain
from worker.runtime import wall_now
from worker.wakeups import Wakeups

if TYPE_CHECKING:
    from worker.stream import Pipeline

log = logging.getLogger("worker.stream")

ORDER_TYPES = frozenset(
    {
        "order.created", "order.paid", "order.packed", "order.shipped", "order.cancelled",
        "order.return_requested", "order.return_received", "order.refunded",
    }
)
TRACKING_TYPES = frozenset({"tracking.updated", "clock.tick"})


class OrderStage:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.app, self.settings, self.rules = pipeline.app, pipeline.settings, pipeline.rules
        self.orders = pipeline.table("orders")
        self.wakeups = Wakeups(self._held, limit=pipeline.wakeups_limit)
        self.clock_marks = pipeline.table("clock")
        self.active_counts = pipeline.table("active_parcels")  # partition -> parcels on their way
        self.clock = Clock(event_mode=self.settings.event_clock)
        # In memory only: a restart loses nothing, the next tick sets them again.
        self.tick_target: dict[int, datetime] = {}
        self.orders_seen: dict[int, datetime] = {}  # partition -> last order event's time
        self.last_read: dict[tuple[str, int], int] = {}  # (topic, partition) -> offset
        self.decided_until: dict[int, datetime] = {}
        self.next_tick = 0  # the partition the wall clock ticks next
        # States applied by the event in hand, written once it is done: a pass right after
        # (the usual case once the inputs are read to their ends) wakes the same order and
        # writes it anyway, so it is packed and written once, not twice. As JSON: a pass
        # that fails half-way must not leave its changes in what is written.
        self.unsaved: dict[str, tuple[bytes, str | None]] = {}

    def _held(self) -> Iterator[tuple[int, str, str | datetime | None]]:
        """When each order is next due: the table, but for the states the event in hand
        applied and has not written yet (the index may be read again in between)."""
        p, orders = self.pipeline, self.settings.topics.orders
        for partition, key, due in p.held(self.orders, orders, lambda state: state.get("wake_at")):
            if key not in self.unsaved:
                yield partition, key, due
        for order_id, (_, due) in self.unsaved.items():
            yield p.partition_of(orders, order_id.encode()), order_id, due

    def forget(self) -> None:
        """A rebalance: what this worker remembers of its partitions' progress is stale."""
        for progress in (self.tick_target, self.orders_seen, self.last_read, self.decided_until,
                         self.clock.high_water, self.wakeups, self.unsaved):
            progress.clear()

    async def run(self, stream: faust.StreamT) -> None:
        """The agent: each input applied, and the partition's decisions taken further."""
        orders, guarded = self.settings.topics.orders, self.pipeline.guarded
        async for event in self.pipeline.in_turn(stream):
            await guarded(event, self._on_input, "order")
            m = event.message
            # Read, good or dead-lettered: the partition's decisions may go further.
            self.last_read[(m.topic, m.partition)] = m.offset
            if self.settings.event_clock:
                # Each order event read lets the partition's decisions go further in time.
                decide = m.topic == orders
            else:
                # With nothing more to read on either topic, what was read is all there is:
                # decided on now, not at the partition's next tick (up to a second away).
                # Behind a backlog the ticks' passes take many inputs at once.
                decide = self._read_to_end(m.partition)
                if decide:
                    self._aim(m.partition, order.known_from(wall_now()))
            if decide:
                await guarded(event, self._decide_for, "order")
            if self.unsaved:
                await guarded(event, self._write_unsaved, "order")
                self.unsaved.clear()

    async def _on_input(self, event: faust.EventT) -> None:
        m, orders = event.message, self.settings.topics.orders
        accepted = ORDER_TYPES if m.topic == orders else TRACKING_TYPES
        envelope = codec.decode(m.key, m.value, m.headers, accepted_types=accepted,
                                max_bytes=self.settings.max_event_bytes)
        metrics.events_consumed.labels(m.topic, envelope.type).inc()
        order_id = envelope.data.get("order_id")
        if envelope.type != "clock.tick" and order_id != m.key.decode("utf-8", "replace"):
            # Before the clock: a bad input changes nothing, not even the time.
            raise BadInput("wrong_key", "record key differs from data.order_id")
        now = self._advance_clock(m.partition, _event_time(envelope))
        if envelope.type == "clock.tick":
            # Under the event clock, as far as the tick says: order events read ahead of
            # the partition's tracking events must not carry decisions past scans not read yet.
            # Under the wall clock, to the next whole second: an event read in this one
            # counts as known from it (order.known_from), and is decided on now.
            if self.settings.event_clock:
                self._aim(m.partition, _event_time(envelope) or now)
            else:
                self._aim(m.partition, order.known_from(now))
            await self._decide_until_tick(m.partition)
            return
        if m.topic == orders:
            self.orders_seen[m.partition] = envelope.time or now
        known = self.state(order_id)
        if known is None and m.topic == orders and envelope.type != "order.created":
            # Its messages will lack the order's details: a gap in the stream worth knowing.
            log.warning("%s for an order never created here", envelope.type,
                        extra={"order_id": order_id})
        active_before = known.active_parcels if known else 0
        # At the event's own time (the partition's clock may already be far ahead of it),
        # from the whole second it counts as known.
        wake_at = order.known_from(min(now, envelope.time or now))
        applied = order.apply(known, envelope, received_at=wall_now(), known_at=wake_at)
        if applied.duplicate:
            metrics.duplicates.labels(m.topic).inc()
            return
        if applied.unknown_status:
            source = applied.unknown_status.split(":")[0]
            metrics.unknown_statuses.labels(metrics.carrier(source)).inc()
            log.info("unknown carrier status %s kept", applied.unknown_status,
                     extra={"order_id": order_id})
        self.unsaved[order_id] = (orjson.dumps(applied.state.to_dict()), applied.state.wake_at)
        if change := applied.state.active_parcels - active_before:
            self._count_active(m.partition, change)
        # Decided on at the partition's next tick.
        self.wakeups.set(m.partition, order_id, applied.state.wake_at)
        if envelope.type in risk.TOLD_BY:
            # Not waited for: the commit after this event waits for the producer (fix 2).
            for sighting in risk.sightings(order_id, applied.state.order, applied.state.shipments):
                await self.pipeline.publish(
                    self.pipeline.address_inputs, sighting.address, "address.seen",
                    f"seen-{sighting.order_id}-{sighting.address}", order_id, plain(sighting))

    def _aim(self, partition: int, reached: datetime) -> None:
        """The partition's decisions may go as far as ``reached`` (never back)."""
        self.tick_target[partition] = max(reached, self.tick_target.get(partition, reached))

    async def _decide_for(self, event: faust.EventT) -> None:
        await self._decide_until_tick(event.message.partition)

    async def _decide_until_tick(self, partition: int) -> None:
        """Make the decisions due by the last tick, as far as ``orders.events`` allows.

        Ticks come on ``tracking.events``; Faust reads the two topics independently, so a
        tick, or a scan, may be read before order events older than it (a payment, a
        cancellation). Until the orders partition is read to its end, decisions go no
        further than the second before the last order event read: events behind it are
        known from that second at the earliest. Decided on earlier, the scans of a parcel
        read ahead of its order's payment told in the same second would reach the
        customer first, and the confirmation would wait behind the gap between an
        order's messages. The rest waits for more order events or the next tick.
        """
        target = self.tick_target.get(partition)
        if target is None:
            return
        if self._caught_up(self.settings.topics.orders, partition):
            allowed = target
        elif (seen := self.orders_seen.get(partition)) is None:
            return
        else:
            allowed = min(target, order.known_from(seen) - timedelta(seconds=1))
        decided = self.decided_until.get(partition)
        again = decided is not None and allowed <= decided
        # Decided that far already, unless orders due by then were read since: a pass may
        # have judged the partition read to its end from a fetch that had not brought its
        # last records yet, and under the wall clock an input read within a second already
        # decided is known from that second.
        if again and not self.wakeups.any_due(partition, allowed):
            return
        woken: dict[str, order.OrderState | None] = {}
        acks: list[Awaitable[Any]] = []
        # What was decided is acknowledged by the broker before the states that remember it
        # (and when each is next due) are written: a crash in between repeats the decisions
        # (same ids, de-duplicated downstream) instead of losing them. One wait for the pass.
        await self.wakeups.drain(partition, allowed, lambda due, order_id: self._wake(
            order_id, self.pipeline.moment(due, target), woken, acks),
            settle=lambda: self.pipeline.settled(acks))
        for order_id, state in woken.items():
            self.unsaved.pop(order_id, None)  # what the pass decided supersedes it
            if state is not None:
                self._save(order_id, state)
            elif order_id.encode() in self.orders:
                del self.orders[order_id.encode()]
        if not again:  # the customer stage heard of this time already
            await self._forward_tick(partition, allowed)
            self.decided_until[partition] = allowed

    def _read_to_end(self, partition: int) -> bool:
        """Both input topics' partitions read to their ends, as far as the last fetch knows."""
        t = self.settings.topics
        return self._caught_up(t.orders, partition) and self._caught_up(t.tracking, partition)

    def _caught_up(self, topic: str, partition: int) -> bool:
        """Read to the end of the topic's partition, as far as the last fetch knows."""
        tp = TP(topic, partition)
        try:
            highwater = self.app.consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - not fetched yet, or not assigned here
            return False
        offset = self.last_read.get((topic, partition))
        if offset is None:
            # Nothing read since this worker started: it resumed from its committed offset
            # (the next to read), and everything before that was processed before.
            committed = self.app.consumer._committed_offset.get(tp)
            offset = committed - 1 if committed else None
        return highwater is not None and (highwater == 0 or (
            offset is not None and offset + 1 >= highwater))

    async def _wake(self, order_id: str, now: datetime, woken: dict[str, order.OrderState | None],
                    acks: list[Awaitable[Any]]) -> datetime | None:
        """Decide what is due for one order and publish it (acknowledgements into ``acks``,
        the new state into ``woken``, None to forget it); answers when it is next due."""
        state = woken[order_id] if order_id in woken else self.state(order_id)
        if state is None:
            return None
        p = self.pipeline
        decisions = order.wake(state, now, self.rules, p.lanes_of)
        for intent in decisions.intents:
            metrics.decided.labels(intent.kind).inc()
            acks.append(await p.publish(p.intents, intent.customer_id, "notification.intended",
                                        intent.notification_id, intent.order_id, plain(intent)))
        for alert in decisions.alerts:
            metrics.alerts_raised.labels(alert.type).inc()
            acks.append(await p.publish(p.alerts, alert.key, alert.type, alert.alert_id,
                                        alert.order_id or alert.key, alert.data()))
        for lesson in decisions.lessons:
            if lesson.stalled_at:
                metrics.stalled_shipments.labels(metrics.carrier(lesson.lanes[0].split("|")[0])).inc()
            for lane in lesson.lanes:
                acks.append(await p.publish(
                    p.lane_inputs, lane, "lane.observed", f"lane-{lesson.parcel}-{lane}",
                    order_id, {"lane": lane, "day": lesson.day, "parcel": lesson.parcel,
                               "journey": lesson.journey, "stalled_at": lesson.stalled_at}))
        woken[order_id] = None if decisions.forget else decisions.state
        if decisions.forget:
            metrics.orders_forgotten.inc()
            if parcels := decisions.state.active_parcels:
                # A parcel that went silent for good stops counting as on its way.
                self._count_active(p.partition_of(self.settings.topics.orders, order_id.encode()),
                                   -parcels)
        return datetime.fromisoformat(decisions.next_wake) if decisions.next_wake else None

    def _count_active(self, partition: int, change: int) -> None:
        key = str(partition).encode()
        self.active_counts[key] = str(int(self.active_counts.get(key, b"0")) + change).encode()

    def active_parcels(self, partitions: set[int]) -> int:
        """Parcels on their way in these partitions."""
        return sum(int(self.active_counts.get(str(p).encode(), b"0")) for p in partitions)

    def state(self, order_id: str) -> order.OrderState | None:
        if order_id in self.unsaved:
            return order.OrderState.from_dict(orjson.loads(self.unsaved[order_id][0]))
        saved = self.orders.get(order_id.encode())
        return order.OrderState.from_dict(packing.unpack(saved)) if saved else None

    def _save(self, order_id: str, state: order.OrderState) -> None:
        self.orders[order_id.encode()] = packing.pack(state.to_dict(), due=state.wake_at)

    async def _write_unsaved(self, event: faust.EventT) -> None:
        """The states the event in hand applied and no pass wrote since (``guarded``: none
        once the partition is another worker's, whose turn it is to read the event again)."""
        for order_id, (json, due) in self.unsaved.items():
            self.orders[order_id.encode()] = packing.pack_json(json, due)

    def _advance_clock(self, partition: int, when: datetime | None) -> datetime:
        """Now for this partition; in event mode its high-water mark, kept in a table."""
        clock, marks = self.clock, self.clock_marks
        mark_key = str(partition).encode()
        if partition not in clock.high_water and (saved := marks.get(mark_key)):
            clock.observe(partition, datetime.fromisoformat(saved.decode()))
        before = clock.high_water.get(partition)
        clock.observe(partition, when)
        after = clock.high_water.get(partition)
        if self.settings.event_clock and after is not None and after != before:
            marks[mark_key] = after.isoformat().encode()
        return clock.now(partition, wall_now())

    def now_for(self, order_id: str) -> datetime:
        """The order's partition's clock (under the event clock, how far its events got)."""
        partition = self.pipeline.partition_of(self.settings.topics.orders, order_id.encode())
        return self.clock.now(partition, wall_now())

    async def _forward_tick(self, partition: int, now: datetime) -> None:
        """Tell every customer partition how far this order partition has got.

        Sent after this partition's intents up to ``now``, so a customer partition that
        has heard ``now`` from every order partition has every intent decided by then:
        its watermark. Held notifications are released by the watermark, so an
        `order_cancelled` decided on another partition is never overtaken.
        """
        intents = self.pipeline.intents
        await asyncio.gather(*(self.pipeline.tick(intents, q, now, source_partition=partition)
                               for q in range(self.settings.partitions)))

    async def publish_wall_tick(self) -> None:
        """Wall-clock mode: tick every partition so decisions and timers run without input,
        each once every ``tick_seconds``, one after the other through the interval (called
        ``partitions`` times in it). A tick sets off records and table writes in both
        stages; all at once they took a core for some 20 ms a second, and whatever shared
        the machine (the tracking page's servers) waited that long once a second."""
        if self.settings.event_clock:
            return
        partition, self.next_tick = self.next_tick, (self.next_tick + 1) % self.settings.partitions
        await self.pipeline.tick(self.pipeline.tracking, partition, wall_now())


def _event_time(envelope: Envelope) -> datetime | None:
    if envelope.type == "clock.tick":
        return datetime.fromisoformat(envelope.data["now"])
    return envelope.time
