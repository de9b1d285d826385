"""The Faust worker: two thin agents around the pure domain.

1. Order stage: ``orders.events`` + ``tracking.events`` (co-partitioned by order_id)
   → per-order state table → :func:`worker.domain.order.apply` → intents, re-keyed
   by customer_id onto ``notifications.intents``.
2. Customer stage: intents + ``customers.preferences`` (co-partitioned by
   customer_id) → channel choice and rendering → ``notifications.dispatch.<channel>``,
   or ``notification.suppressed`` on ``notifications.sent``.

Every event is handled inside a try block: a bad one goes to the dead-letter topic
with its reason and the stream goes on (Faust would otherwise ack and skip it).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from faust.types import TP
import orjson
from aiohttp import web

from worker import codec, faust_fixes, metrics, packing, runtime
from worker.address_book import AddressBook
from worker.lane_book import LaneBook
from worker.codec import BadInput
from worker.domain import customer, engagement, inbox, lanes, links, order, risk
from worker.domain.clock import Clock
from worker.domain.envelope import Envelope
from worker.domain.notification import Intent
from worker.domain.plain import plain
from worker.domain.milestones import carrier_table
from worker.domain.rules import CHANNELS, Rules, parse
from worker.render import catalog_locale, for_channel, render
from worker.settings import Settings
from worker.tracking_site import TrackingSite
from worker.wakeups import Wakeups

log = logging.getLogger("worker.stream")

SOURCE = "urn:order-notifier:worker"
ORDER_TYPES = frozenset(
    {
        "order.created", "order.paid", "order.packed", "order.shipped", "order.cancelled",
        "order.return_requested", "order.return_received", "order.refunded",
    }
)
TRACKING_TYPES = frozenset({"tracking.updated", "clock.tick"})
PREFERENCE_TYPES = frozenset({"customer.preferences_updated"})
ENGAGEMENT_SOURCE = "urn:order-notifier:tracking-page"
KNOWN_SOURCES = frozenset(carrier_table())
_PARTITIONER = DefaultPartitioner()  # Kafka's murmur2, as the producers use it


def load_rules(settings: Settings) -> Rules:
    with settings.rules.open("rb") as fp:
        return parse(tomllib.load(fp))


def raw_topic(app: faust.App, *names: str) -> faust.TopicT:
    return app.topic(*names, allow_empty=True)


def raw_table(app: faust.App, name: str, partitions: int) -> faust.Table:
    """Keys are the Kafka keys, values orjson bytes: no Faust codec in the hot path."""
    table = app.Table(name, partitions=partitions)
    # Faust derives a table's codec from its value type and falls back to json, which
    # mangles bytes on recovery; make the changelog raw both ways.
    table.key_serializer = table.value_serializer = "raw"
    table._changelog_topic = None
    return table


def build_app(settings: Settings) -> faust.App:
    faust_fixes.apply()
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{s}" for s in settings.kafka_servers],
        store=settings.store,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        table_standby_replicas=settings.standby_replicas,
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=settings.session_timeout_seconds / 10,
        web_port=settings.web_port,
        web_bind="0.0.0.0",
        canonical_url=settings.own_url,
        datadir=str(settings.data_dir / "worker"),
        autodiscover=False,
        producer_max_request_size=8 * 1024 * 1024,
        consumer_max_fetch_size=8 * 1024 * 1024,
        stream_wait_empty=False,
        key_serializer="raw",
        value_serializer="raw",
    )
    Pipeline(app, settings)
    return app


class Rebalanced(Exception):
    """The event's partitions moved while it was being handled."""


class Pipeline:
    """Holds the topics and tables and turns each consumed event into its effects."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app, self.settings, self.rules = app, settings, load_rules(settings)
        t, n = settings.topics, settings.partitions
        self.order_inputs = raw_topic(app, t.orders, t.tracking)
        # Outcomes and engagement come back to the customer stage: a permanent failure falls
        # back, an unsubscribe or a bounce changes the customer's channels, and both count.
        self.customer_inputs = raw_topic(app, t.intents, t.preferences, t.sent, t.engagement, t.inbox)
        self.engagement = raw_topic(app, t.engagement)
        self.intents = raw_topic(app, t.intents)
        self.tracking = raw_topic(app, t.tracking)
        self.sent = raw_topic(app, t.sent)
        self.alerts = raw_topic(app, t.alerts)
        self.dlq = raw_topic(app, t.dlq)
        self.dispatch = {c: raw_topic(app, t.dispatch(c)) for c in CHANNELS}
        # Each stage has its own tables: the stages' partitions may live on different workers.
        self.orders = raw_table(app, "orders", n)
        self.order_wakeups = Wakeups(lambda: self._held(
            self.orders, t.orders, lambda state: state.get("wake_at")))
        self.clock_marks = raw_table(app, "clock", n)
        self.active_counts = raw_table(app, "active_parcels", n)  # partition -> parcels on their way
        self.clock = Clock(event_mode=settings.event_clock)
        # In memory only: a restart loses nothing, the next tick sets them again.
        self.tick_target: dict[int, datetime] = {}
        self.orders_seen: dict[int, datetime] = {}  # partition -> last order event's time
        self.last_read: dict[tuple[str, int], int] = {}  # (topic, partition) -> offset
        self.decided_until: dict[int, datetime] = {}
        self.customers = raw_table(app, "customers", n)
        self.customer_wakeups = Wakeups(lambda: self._held(  # held notifications' releases
            self.customers, t.intents, lambda state: customer.CustomerState.from_dict(state).next_release))
        self.watermarks = raw_table(app, "watermarks", n)  # customer partition -> its watermark
        self.heard: dict[int, dict[int, datetime]] = {}  # ... -> order partition -> time it told
        self.lane_inputs = raw_topic(app, t.lanes)
        self.lane_figures_topic = raw_topic(app, t.lane_figures)
        self.lane_book = LaneBook(raw_table(app, "lane_days", n), self.rules.prediction)
        # Every worker follows every lane's figures: the order stage of any partition asks.
        self.lane_figures: dict[str, dict[str, Any]] = {}
        self.address_inputs = raw_topic(app, t.addresses)
        self.address_book = AddressBook(raw_table(app, "addresses", n), self.rules.risk)
        # Each customer partition's engagement figures; every worker follows all of them.
        self.engagement_counts = raw_table(app, "engagement", n)
        self.engagement_figures_topic = raw_topic(app, t.engagement_figures)
        self.engagement_figures: dict[str, dict[str, int]] = {}
        # Each customer's latest in-app messages (from the inbox topic), for the tracking page.
        self.inbox = raw_table(app, "inbox", n)

        app.agent(self.order_inputs, name="order_stage")(self._order_stage)
        app.agent(self.customer_inputs, name="customer_stage")(self._customer_stage)
        app.agent(self.lane_inputs, name="lane_stage")(self._lane_stage)
        app.agent(self.address_inputs, name="address_stage")(self._address_stage)
        app.task(lambda: self._follow(t.lane_figures, self.lane_figures))
        app.task(lambda: self._follow(t.engagement_figures, self.engagement_figures))
        app.timer(settings.tick_seconds, on_leader=True)(self._publish_wall_tick)
        app.page("/metrics")(self._metrics)
        app.page("/healthz")(self._healthz)
        app.page("/readyz")(self._readyz)
        app.timer(1.0)(self._watch_readiness)
        watch = faust_fixes.FrontierWatch()
        app.timer(1.0, name="frontier_watch")(lambda: watch.look(app))
        app.on_partitions_revoked.connect(self._forget_progress)
        TrackingSite(self).register(app)
        self.recovering_since: float | None = None
        self.settled = False  # runtime.settle() done

    # -- agents ---------------------------------------------------------------------------

    async def _order_stage(self, stream: faust.StreamT) -> None:
        orders = self.settings.topics.orders
        async for event in self._in_turn(stream):
            await self._guarded(event, self._on_order_input, "order")
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
                    reached = order.known_from(_wall_now())
                    self.tick_target[m.partition] = max(reached, self.tick_target.get(m.partition, reached))
            if decide:
                await self._guarded(event, lambda e: self._decide_until_tick(e.message.partition), "order")

    async def _customer_stage(self, stream: faust.StreamT) -> None:
        async for event in self._in_turn(stream):
            await self._guarded(event, self._on_customer_input, "customer")

    async def _lane_stage(self, stream: faust.StreamT) -> None:
        async for event in self._in_turn(stream):
            await self._guarded(event, self._on_lesson, "lane")

    async def _address_stage(self, stream: faust.StreamT) -> None:
        async for event in self._in_turn(stream):
            await self._guarded(event, self._on_sighting, "address")

    async def _in_turn(self, stream: faust.StreamT) -> AsyncIterator[faust.EventT]:
        """The stream's events strictly in offset order: one that comes before an earlier
        record of its partition has been handled waits to be read again (faust_fixes 7)."""
        consumer = self.app.consumer
        async for event in stream.events():
            if faust_fixes.in_turn(consumer, event.message):
                yield event

    async def _forget_progress(self, sender: Any, revoked: Any, **_: Any) -> None:
        """A rebalance: what this worker remembers of its partitions' progress is stale, as
        another worker may take them further before they come back, and the stream reads
        on from their committed offsets. Ticks, order records and the clock marks say it anew."""
        for progress in (self.tick_target, self.orders_seen, self.last_read, self.decided_until,
                         self.clock.high_water, self.heard, self.order_wakeups, self.customer_wakeups):
            progress.clear()

    async def _guarded(self, event: faust.EventT, handle: Any, stage: str) -> None:
        message = event.message
        try:
            # Not even begun once a rebalance has: a pass left unfinished by it must not
            # see the events after it applied before it is done again.
            self._still_ours()
            await handle(event)
        except Rebalanced:
            # Its acknowledgement is refused too (faust_fixes 1): read again, by whoever
            # holds the partition now, from a state this worker left as it was.
            log.info("partitions moved while handling %s[%s]@%s: left to their next owner",
                     message.topic, message.partition, message.offset)
        except BadInput as error:
            await self._dead_letter(event, error)
        except Exception as exc:  # noqa: BLE001 - one bad event must not stop the stream
            metrics.agent_errors.labels(stage).inc()
            log.exception("unexpected error on %s[%s]@%s", message.topic, message.partition,
                          message.offset)
            await self._dead_letter(event, BadInput("processing_error", f"{type(exc).__name__}: {exc}"))

    def _still_ours(self) -> None:
        """Raise :class:`Rebalanced` if a rebalance began since the event in hand was
        fetched. Faust does not wait for an event in hand before it gives its partition to
        another worker (``stream_wait_empty`` waits for acknowledgements that fix 1
        refuses), so table writes made after an await could land in the changelog after
        the new owner's own: a later recovery would then bring back the older state."""
        event = faust.current_event()  # this agent's: every stage runs in a task of its own
        if event is None:
            return
        if (event.message.generation_id != self.app.consumer_generation_id
                or not self.app.flow_control.is_active()):
            raise Rebalanced

    async def _dead_letter(self, event: faust.EventT, error: BadInput) -> None:
        m = event.message
        metrics.invalid_inputs.labels(m.topic, error.error_type).inc()
        metrics.dlq_writes.labels(m.topic).inc()
        log.warning("dead-lettered %s[%s]@%s: %s: %s", m.topic, m.partition, m.offset,
                    error.error_type, error.message)
        headers = codec.dlq_headers(m.headers, error, topic=m.topic, partition=m.partition,
                                    offset=m.offset)
        await self.dlq.send(key=m.key, value=m.value, headers=headers, force=True)

    # -- order stage ----------------------------------------------------------------------

    async def _on_order_input(self, event: faust.EventT) -> None:
        m = event.message
        accepted = ORDER_TYPES if m.topic == self.settings.topics.orders else TRACKING_TYPES
        envelope = codec.decode(m.key, m.value, m.headers, accepted_types=accepted,
                                max_bytes=self.settings.max_event_bytes)
        metrics.events_consumed.labels(m.topic, envelope.type).inc()
        order_id = envelope.data.get("order_id")
        if envelope.type != "clock.tick" and order_id != m.key.decode("utf-8", "replace"):
            # Before the clock: a bad input changes nothing, not even the time.
            raise BadInput("wrong_key", "record key differs from data.order_id")
        now = self._advance_clock(self.clock, self.clock_marks, m.partition, _event_time(envelope))
        if envelope.type == "clock.tick":
            # Under the event clock, as far as the tick says: order events read ahead of
            # the partition's tracking events must not carry decisions past scans not read yet.
            # Under the wall clock, to the next whole second: an event read in this one
            # counts as known from it (order.known_from), and is decided on now.
            reached = (_event_time(envelope) or now) if self.settings.event_clock else order.known_from(now)
            self.tick_target[m.partition] = max(reached, self.tick_target.get(m.partition, reached))
            await self._decide_until_tick(m.partition)
            return
        if m.topic == self.settings.topics.orders:
            self.orders_seen[m.partition] = envelope.time or now
        known = self.order_state(order_id)
        if known is None and m.topic == self.settings.topics.orders and envelope.type != "order.created":
            # Its messages will lack the order's details: a gap in the stream worth knowing.
            log.warning("%s for an order never created here", envelope.type, extra={"order_id": order_id})
        active_before = known.active_parcels if known else 0
        # At the event's own time (the partition's clock may already be far ahead of it),
        # from the whole second it counts as known.
        wake_at = order.known_from(min(now, envelope.time or now))
        applied = order.apply(known, envelope, received_at=_wall_now(), known_at=wake_at)
        if applied.duplicate:
            metrics.duplicates.labels(m.topic).inc()
            return
        if applied.unknown_status:
            source = applied.unknown_status.split(":")[0]
            metrics.unknown_statuses.labels(source if source in KNOWN_SOURCES else "other").inc()
            log.info("unknown carrier status %s kept", applied.unknown_status,
                     extra={"order_id": order_id})
        self._save_order(order_id, applied.state)
        if change := applied.state.active_parcels - active_before:
            key = str(m.partition).encode()
            self.active_counts[key] = str(int(self.active_counts.get(key, b"0")) + change).encode()
        # Decided on at the partition's next tick.
        self.order_wakeups.set(m.partition, order_id, applied.state.wake_at)
        if envelope.type in risk.TOLD_BY:  # after the writes: nothing is written past an await
            # Not waited for: the commit after this event waits for the producer (fix 2).
            for sighting in risk.sightings(order_id, applied.state.order, applied.state.shipments):
                await self._publish(self.address_inputs, sighting.address, "address.seen",
                                    f"seen-{sighting.order_id}-{sighting.address}", order_id, plain(sighting))

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
        if again and not self.order_wakeups.any_due(partition, allowed):
            return
        woken: dict[str, order.OrderState | None] = {}
        acks: list[Awaitable[Any]] = []
        # What was decided is acknowledged by the broker before the states that remember it
        # (and when each is next due) are written: a crash in between repeats the decisions
        # (same ids, de-duplicated downstream) instead of losing them. One wait for the pass.
        await self.order_wakeups.drain(partition, allowed, lambda due, order_id: self._wake_order(
            order_id, self._moment(due, target), woken, acks), settle=lambda: self._settled(acks))
        for order_id, state in woken.items():
            if state is not None:
                self._save_order(order_id, state)
            elif order_id.encode() in self.orders:
                del self.orders[order_id.encode()]
        if not again:  # the customer stage heard of this time already
            await self._forward_tick(partition, allowed)
            self.decided_until[partition] = allowed

    async def _settled(self, acks: list[Awaitable[Any]]) -> None:
        """What a pass published is acknowledged, and the partition still this worker's."""
        await asyncio.gather(*acks)
        self._still_ours()

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

    def _moment(self, due: datetime, reached: datetime) -> datetime:
        """When a wake-up happens. Under the event clock, at its own due time: the same
        stream gives the same decisions however its topics' reads interleave. Under the
        wall clock, now: a decision made late is judged by the time it really goes."""
        return due if self.settings.event_clock else reached

    async def _wake_order(self, order_id: str, now: datetime, woken: dict[str, order.OrderState | None],
                          acks: list[Awaitable[Any]]) -> datetime | None:
        """Decide what is due for one order and publish it (acknowledgements into ``acks``,
        the new state into ``woken``, None to forget it); answers when it is next due."""
        state = woken[order_id] if order_id in woken else self.order_state(order_id)
        if state is None:
            return None
        decisions = order.wake(state, now, self.rules, self.lanes_of)
        for intent in decisions.intents:
            metrics.decided.labels(intent.kind).inc()
            acks.append(await self._publish(self.intents, intent.customer_id, "notification.intended",
                                            intent.notification_id, intent.order_id, plain(intent)))
        for alert in decisions.alerts:
            metrics.alerts_raised.labels(alert.type).inc()
            acks.append(await self._publish(self.alerts, alert.key, alert.type, alert.alert_id,
                                            alert.order_id or alert.key, alert.data()))
        for lesson in decisions.lessons:
            if lesson.stalled_at:
                carrier = lesson.lanes[0].split("|")[0]
                metrics.stalled_shipments.labels(carrier if carrier in KNOWN_SOURCES else "other").inc()
            for lane in lesson.lanes:
                acks.append(await self._publish(
                    self.lane_inputs, lane, "lane.observed", f"lane-{lesson.parcel}-{lane}",
                    order_id, {"lane": lane, "day": lesson.day, "parcel": lesson.parcel,
                               "journey": lesson.journey, "stalled_at": lesson.stalled_at}))
        woken[order_id] = None if decisions.forget else decisions.state
        if decisions.forget:
            metrics.orders_forgotten.inc()
            if parcels := decisions.state.active_parcels:
                # A parcel that went silent for good stops counting as on its way.
                key = str(self.partition_of(self.settings.topics.orders, order_id.encode())).encode()
                self.active_counts[key] = str(int(self.active_counts.get(key, b"0")) - parcels).encode()
        return datetime.fromisoformat(decisions.next_wake) if decisions.next_wake else None

    def _held(self, table: faust.Table, topic: str, due_of: Callable[[dict[str, Any]], str | None],
              ) -> Iterator[tuple[int, str, datetime | str | None]]:
        """(partition, key, when due) of every key of ``table`` in a partition of ``topic``
        that this worker holds active: what its index of wake-ups is built from."""
        active = {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}
        for key, saved in list(table.data.items()):
            if (partition := self.partition_of(topic, key)) in active:
                yield partition, key.decode(), packing.due(saved, due_of)

    def lanes_of(self, keys: Any) -> list[dict[str, Any]]:
        return [self.lane_figures[k] for k in keys if k in self.lane_figures]

    def order_state(self, order_id: str) -> order.OrderState | None:
        saved = self.orders.get(order_id.encode())
        return order.OrderState.from_dict(packing.unpack(saved)) if saved else None

    def _save_order(self, order_id: str, state: order.OrderState) -> None:
        self.orders[order_id.encode()] = packing.pack(state.to_dict(), due=state.wake_at)

    def _advance_clock(self, clock: Clock, marks: faust.Table, partition: int,
                       when: datetime | None) -> datetime:
        """Now for this partition; in event mode its high-water mark, kept in a table."""
        mark_key = str(partition).encode()
        if partition not in clock.high_water and (saved := marks.get(mark_key)):
            clock.observe(partition, datetime.fromisoformat(saved.decode()))
        before = clock.high_water.get(partition)
        clock.observe(partition, when)
        after = clock.high_water.get(partition)
        if self.settings.event_clock and after is not None and after != before:
            marks[mark_key] = after.isoformat().encode()
        return clock.now(partition, _wall_now())

    async def _tick(self, topic: faust.TopicT, partition: int, now: datetime,
                    source_partition: int | None = None) -> None:
        data: dict[str, Any] = {"now": now.isoformat()}
        if source_partition is not None:
            data["source_partition"] = source_partition
        value, headers = codec.encode(
            event_type="clock.tick", event_id=f"tick-{now.isoformat()}-p{partition}",
            source=SOURCE, time=now, data=data,
        )
        await topic.send(key=f"tick-{partition}".encode(), value=value, headers=headers,
                         partition=partition, force=True)

    async def _forward_tick(self, partition: int, now: datetime) -> None:
        """Tell every customer partition how far this order partition has got.

        Sent after this partition's intents up to ``now``, so a customer partition that
        has heard ``now`` from every order partition has every intent decided by then:
        its watermark. Held notifications are released by the watermark, so an
        `order_cancelled` decided on another partition is never overtaken.
        """
        await asyncio.gather(*(self._tick(self.intents, q, now, source_partition=partition)
                               for q in range(self.settings.partitions)))

    async def _publish_wall_tick(self) -> None:
        """Wall-clock mode: tick every partition so decisions and timers run without input."""
        if self.settings.event_clock:
            return
        now = _wall_now()
        for partition in range(self.settings.partitions):
            await self._tick(self.tracking, partition, now)

    # -- lanes ----------------------------------------------------------------------------

    async def _on_lesson(self, event: faust.EventT) -> None:
        """A delivered parcel's journey: into its lane's day bucket, and the lane's new
        figures onto the compacted figures topic."""
        m = event.message
        observed = orjson.loads(m.value)
        lane = observed["lane"]
        metrics.events_consumed.labels(m.topic, "lane.observed").inc()
        if observed.get("stalled_at"):
            figures, started = self.lane_book.stalled(lane, observed["stalled_at"])
            if started:
                alert = lanes.incident_alert(lane, figures["incident"])
                metrics.alerts_raised.labels(alert.type).inc()
                await self._send(self.alerts, lane, alert.type, alert.alert_id, lane, alert.data())
        else:
            figures = self.lane_book.learn(lane, observed["day"], observed["journey"])
        await self._send(self.lane_figures_topic, lane, "lane.figures",
                         f"figures-{observed['parcel']}-{lane}", lane, figures)

    async def _follow(self, topic: str, latest: dict[str, Any]) -> None:
        """Keep the latest value of every key of a compacted topic (every lane's figures,
        every partition's engagement figures), read from its start."""
        n = self.settings.partitions
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_servers,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(n)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            async for record in consumer:
                if record.key and record.value:
                    latest[record.key.decode()] = orjson.loads(record.value)
        finally:
            await consumer.stop()

    # -- addresses ------------------------------------------------------------------------

    async def _on_sighting(self, event: faust.EventT) -> None:
        """A parcel to a doorstep: too many customers there of late raise one alert."""
        m = event.message
        metrics.events_consumed.labels(m.topic, "address.seen").inc()
        sighting = risk.Sighting(**orjson.loads(m.value))
        if alert := self.address_book.seen(m.partition, sighting):
            metrics.alerts_raised.labels(alert.type).inc()
            await self._send(self.alerts, alert.key, alert.type, alert.alert_id, alert.key, alert.data())

    # -- customer stage -------------------------------------------------------------------

    async def _on_customer_input(self, event: faust.EventT) -> None:
        m = event.message
        if m.topic == self.settings.topics.preferences:
            await self._on_preferences(m)
            return
        if m.topic == self.settings.topics.engagement:
            await self._on_engagement(m)
            return
        if m.topic == self.settings.topics.inbox:
            self._on_inbox_message(m)
            return
        event_type = _header(m.headers, "ce_type")
        if m.topic == self.settings.topics.sent:
            if event_type in engagement.COUNTED:
                outcome = orjson.loads(m.value)
                await self._count(m.partition, event_type, outcome)
                if event_type == "notification.failed":
                    await self._on_failed(m.partition, outcome)
            return
        metrics.events_consumed.labels(m.topic, event_type).inc()
        data = orjson.loads(m.value)
        if event_type == "clock.tick":
            now = self._watermark(m.partition, data)
            if now is None:
                return
            await self.customer_wakeups.drain(m.partition, now, lambda due, customer_id: (
                self._release(customer_id, self._moment(due, now))), settle=lambda: self._settled([]))
            return
        intent = Intent.from_dict(data)
        # Judged at the moment the order stage decided it: the same input gives the same
        # answer however the two stages' partitions interleave.
        now = datetime.fromisoformat(intent.created_at)
        state = self._customer(intent.customer_id) or customer.CustomerState(intent.customer_id)
        customer.prune(state, now, self.rules)
        actions = customer.decide(state, intent, now, self.rules, self.settings.webhook_url)
        await self._settle_customer(state, actions)
        self._plan_release(m.partition, state)

    async def _release(self, customer_id: str, now: datetime) -> datetime | None:
        """Release what a customer has waiting; answers when the next is due."""
        state = self._customer(customer_id)
        if state is None:
            return None
        actions = customer.release(state, now, self.rules, self.settings.webhook_url)
        await self._settle_customer(state, actions)
        return datetime.fromisoformat(state.next_release) if state.next_release else None

    async def _on_failed(self, partition: int, outcome: dict[str, Any]) -> None:
        """A channel failed for good: try the customer's next one."""
        state = self._customer(outcome["customer_id"])
        if state is None:
            return
        now = datetime.fromisoformat(outcome["occurred_at"])
        actions = customer.fallback(state, outcome["notification_id"], now, self.rules,
                                    self.settings.webhook_url, outcome.get("reason", ""))
        if actions:
            metrics.fallbacks.labels(outcome["kind"], outcome["channel"]).inc()
        await self._settle_customer(state, actions)  # also keeps a dead push token's end
        self._plan_release(partition, state)

    async def _on_engagement(self, m: Any) -> None:
        """A customer opened, clicked, unsubscribed, or a provider told of a delivery or a
        bounce: counted, and what it changes in the customer's preferences applied."""
        envelope = codec.decode(m.key, m.value, m.headers, accepted_types=engagement.ENGAGEMENT_TYPES,
                                max_bytes=self.settings.max_event_bytes)
        metrics.events_consumed.labels(m.topic, envelope.type).inc()
        data = envelope.data
        if data["customer_id"] != m.key.decode("utf-8", "replace"):
            raise BadInput("wrong_key", "record key differs from data.customer_id")
        state = self._customer(data["customer_id"]) or customer.CustomerState(data["customer_id"])
        customer.engaged(state, envelope.type, data, envelope.time or _wall_now(), self.rules)
        self._save_customer(m.key, state)
        await self._count(m.partition, envelope.type, data)

    def _on_inbox_message(self, m: Any) -> None:
        """An in-app message the senders wrote: kept with the customer's latest ones."""
        metrics.events_consumed.labels(m.topic, "inbox.message").inc()
        message = orjson.loads(m.value)
        saved = self.inbox.get(m.key)
        self.inbox[m.key] = orjson.dumps(inbox.keep(orjson.loads(saved) if saved else [], message))

    def inbox_of(self, customer_id: str, order_id: str) -> list[dict[str, Any]]:
        """The customer's in-app messages about one order, newest first."""
        saved = self.saved(self.inbox, customer_id)
        return inbox.of_order(orjson.loads(saved) if saved else [], order_id)

    def saved_order(self, order_id: str) -> bytes | None:
        return self.saved(self.orders, order_id)

    @staticmethod
    def saved(table: faust.Table, key: str) -> bytes | None:
        """A table's value, read from outside the stream (the web pages): straight from its
        store, without the table's per-read sensors and default handling."""
        return table.data.get(key.encode())

    async def _count(self, partition: int, event_type: str, data: dict[str, Any]) -> None:
        """One more event in the partition's figures for the notification's kind, channel and
        variant; the partition's new figures go onto the compacted figures topic."""
        figures_key = engagement.key(data)
        metrics.engagement.labels(*figures_key.split("|"), engagement.COUNTED[event_type]).inc()
        stored_key = f"{partition}|{figures_key}"
        saved = self.engagement_counts.get(stored_key.encode())
        figures = engagement.count(orjson.loads(saved) if saved else None, event_type)
        self.engagement_counts[stored_key.encode()] = orjson.dumps(figures)
        await self.engagement_figures_topic.send(key=stored_key.encode(), value=orjson.dumps(figures),
                                                 force=True)

    def _watermark(self, partition: int, tick: dict[str, Any]) -> datetime | None:
        """The time every order partition has reached, as far as this partition has heard.

        What each order partition told is kept in memory; only the watermark itself is
        saved, when it moves: a fourth of the records, and after a restart or a
        rebalance it stands in for every order partition until each tells more."""
        heard = self.heard.setdefault(partition, {})
        source = tick.get("source_partition", partition)
        told = datetime.fromisoformat(tick["now"])
        heard[source] = max(told, heard.get(source, told))
        key = str(partition).encode()
        saved = self.watermarks.get(key)
        floor = datetime.fromisoformat(saved.decode()) if saved else None
        times = [heard.get(q, floor) for q in range(self.settings.partitions)]
        if None in times:
            return None
        mark = min(t for t in times if t is not None)
        if floor is not None and mark <= floor:
            return floor
        self.watermarks[key] = mark.isoformat().encode()
        return mark

    async def _settle_customer(self, state: customer.CustomerState,
                               actions: list[customer.Action]) -> None:
        """Carry out the actions, then write the state that remembers them."""
        await asyncio.gather(*(self._carry_out(a) for a in actions))
        self._still_ours()
        self._save_customer(state.customer_id.encode(), state)

    def _plan_release(self, partition: int, state: customer.CustomerState) -> None:
        self.customer_wakeups.set(partition, state.customer_id, state.next_release)

    async def _carry_out(self, action: customer.Action) -> None:
        intent = action.intent
        if isinstance(action, customer.Suppress):
            await self._suppress(intent, action.reason)
        elif isinstance(action, customer.Hold):
            metrics.held.labels(intent.kind).inc()
        else:
            await asyncio.gather(*(self._dispatch(intent, r) for r in action.routes))

    async def _dispatch(self, intent: Intent, route: customer.Route) -> None:
        rule = self.rules.kinds.get(intent.kind)
        variant = rule.variant(intent.customer_id) if rule else None
        token = self._link_token(intent, route, variant)
        public = self.settings.public_url.rstrip("/")
        facts = {**intent.facts, "order_id": intent.order_id, "variant": variant,
                 "tracking_url": f"{public}/c/{token}"}
        if route.channel == "email":
            facts["open_pixel"] = f"{public}/o/{token}.gif"
            if intent.priority == "marketing":
                facts["unsubscribe_url"] = f"{public}/u/{token}"
        locale = catalog_locale(route.locale, self.rules.fallback_locale)
        content = render(intent.kind, locale, route.timezone, facts, whole=route.channel == "email")
        command = {
            "notification_id": route.notification_id,
            "kind": intent.kind,
            "priority": intent.priority,
            "order_id": intent.order_id,
            "customer_id": intent.customer_id,
            "channel": route.channel,
            "locale": route.locale or locale.replace("_", "-"),
            "recipient": route.recipient,
            "content": for_channel(route.channel, content, intent.order_id, facts["tracking_url"],
                                   self.settings.wechat_template_id),
            "tracking_url": facts["tracking_url"],
            # Signs the senders' links back to us: unsubscribe, delivery receipts, bounces.
            "link_token": token,
            "created_at": intent.created_at,
            "caused_by": intent.caused_by,
            "received_at": intent.received_at,
        }
        for optional in ("shipment_id", "not_before", "expires_at"):
            if getattr(intent, optional):
                command[optional] = getattr(intent, optional)
        if variant:
            command["variant"] = variant
        metrics.dispatched.labels(intent.kind, route.channel).inc()
        await self._send(self._dispatch_topic(route.channel), intent.customer_id,
                         "notification.requested", route.notification_id, intent.order_id,
                         command)

    def _dispatch_topic(self, channel: str) -> faust.TopicT:
        if channel not in self.dispatch:
            self.dispatch[channel] = raw_topic(self.app, self.settings.topics.dispatch(channel))
        return self.dispatch[channel]

    def _customer(self, customer_id: str) -> customer.CustomerState | None:
        saved = self.customers.get(customer_id.encode())
        return customer.CustomerState.from_dict(packing.unpack(saved)) if saved else None

    def _save_customer(self, key: bytes, state: customer.CustomerState) -> None:
        self.customers[key] = packing.pack(state.to_dict(), due=state.next_release)

    async def _on_preferences(self, m: Any) -> None:
        customer_id = m.key.decode("utf-8", "replace") if m.key else ""
        if m.value is None:  # tombstone: the customer asked to be forgotten
            metrics.events_consumed.labels(m.topic, "tombstone").inc()
            if not customer_id:
                raise BadInput("missing_key", "a tombstone needs the customer id as its key")
            state = self._customer(customer_id) or customer.CustomerState(customer_id)
            erased_at = datetime.fromtimestamp(m.timestamp, UTC) if m.timestamp else _wall_now()
            await asyncio.gather(*(self._carry_out(a) for a in customer.erase(state, erased_at)))
            self._save_customer(m.key, state)
            return
        envelope = codec.decode(m.key, m.value, m.headers, accepted_types=PREFERENCE_TYPES,
                                max_bytes=self.settings.max_event_bytes)
        metrics.events_consumed.labels(m.topic, envelope.type).inc()
        state = self._customer(customer_id) or customer.CustomerState(customer_id)
        customer.update_preferences(state, envelope.data, envelope.time or _wall_now())
        self._save_customer(m.key, state)

    async def _suppress(self, intent: Intent, reason: str) -> None:
        metrics.suppressed.labels(intent.kind, reason).inc()
        outcome = {
            "notification_id": intent.notification_id, "kind": intent.kind,
            "order_id": intent.order_id, "customer_id": intent.customer_id, "channel": "none",
            "provider": "policy", "attempts": 0, "reason": reason,
            "occurred_at": intent.not_before or intent.created_at,
        }
        if intent.shipment_id:
            outcome["shipment_id"] = intent.shipment_id
        await self._send(self.sent, intent.customer_id, "notification.suppressed",
                         "sup-" + intent.notification_id.removeprefix("ntf-"), intent.order_id,
                         outcome)

    def _link_token(self, intent: Intent, route: customer.Route, variant: str | None) -> str:
        """The notification's signed link. It expires ``link_ttl_days`` after the decision,
        so the same decision always renders the same message."""
        expires = datetime.fromisoformat(intent.created_at) + timedelta(days=self.settings.link_ttl_days)
        return links.sign(links.Link(intent.order_id, intent.customer_id, route.notification_id,
                                     intent.kind, route.channel, variant or "",
                                     int(expires.timestamp())), self.settings.link_secret)

    # -- tracking page --------------------------------------------------------------------

    def now_for(self, order_id: str) -> datetime:
        """The order's partition's clock (under the event clock, how far its events got)."""
        return self.clock.now(self.partition_of(self.settings.topics.orders, order_id.encode()),
                              _wall_now())

    @functools.lru_cache(maxsize=1 << 16)  # noqa: B019 (one pipeline a process)
    def partition_of(self, topic: str, key: bytes) -> int:
        """The key's partition of ``topic``, as the producer hashes it (murmur2 in pure Python:
        the tracking page asks it several times a lookup). Every topic has the settings'
        partition count for the life of a deployment (co-partitioning depends on it), so the
        producer's metadata is not needed: it has none for a topic it never wrote to until
        it asks, and the wake-ups' index is built from this before any write."""
        every = list(range(self.settings.partitions))
        return _PARTITIONER(key, every, every)

    async def send_engagement(self, customer_id: str, event_type: str, event_id: str,
                              order_id: str, data: dict[str, Any]) -> None:
        value, headers = codec.encode(event_type=event_type, event_id=event_id,
                                      source=ENGAGEMENT_SOURCE, time=_wall_now(), data=data,
                                      subject=order_id)
        await (await self.engagement.send(key=customer_id.encode(), value=value, headers=headers,
                                          force=True))

    # -- output ---------------------------------------------------------------------------

    async def _send(self, topic: faust.TopicT, key: str, event_type: str, event_id: str,
                    subject: str, data: Any) -> None:
        """Send one binary-mode CloudEvent and wait for the broker's acknowledgement."""
        await (await self._publish(topic, key, event_type, event_id, subject, data))

    async def _publish(self, topic: faust.TopicT, key: str, event_type: str, event_id: str,
                       subject: str, data: Any) -> Awaitable[Any]:
        """Hand one binary-mode CloudEvent to the producer; answers its acknowledgement."""
        value, headers = codec.encode(event_type=event_type, event_id=event_id, source=SOURCE,
                                      time=_wall_now(), data=data, subject=subject)
        return await topic.send(key=key.encode(), value=value, headers=headers, force=True)

    # -- web ------------------------------------------------------------------------------

    async def _metrics(self, request: Any) -> web.Response:
        return web.Response(body=metrics.exposition(),
                            content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type": "version=0.0.4"})

    async def _healthz(self, request: Any) -> web.Response:
        return web.json_response({"status": "alive"})

    def _readiness(self) -> dict[str, Any]:
        app = self.app
        assigned = app.consumer.assignment() if app.consumer else set()
        partitions: dict[str, list[int]] = {}
        for tp in assigned:
            partitions.setdefault(tp.topic, []).append(tp.partition)
        ready = bool(assigned) and not app.rebalancing and not app.in_recovery
        return {"ready": ready, "partitions": {t: sorted(ps) for t, ps in sorted(partitions.items())},
                "rebalancing": bool(app.rebalancing), "recovering": bool(app.in_recovery)}

    async def _readyz(self, request: Any) -> web.Response:
        body = self._readiness()
        return web.json_response(body, status=200 if body["ready"] else 503)

    async def _watch_readiness(self) -> None:
        """Readiness, table recovery time, parcels on their way and the carriers' delay
        ratios as metrics, for the alerts and the dashboard."""
        owned = {tp.partition for tp in self.app.assignor.assigned_actives()
                 if tp.topic == self.settings.topics.orders}
        metrics.active_shipments.set(sum(int(self.active_counts.get(str(p).encode(), b"0")) for p in owned))
        for carrier, ratio in lanes.delay_ratios(self.lane_figures).items():
            metrics.lane_delay_ratio.labels(carrier if carrier in KNOWN_SOURCES else "other").set(ratio)
        state = self._readiness()
        metrics.ready.set(1 if state["ready"] else 0)
        if state["ready"] and not self.settled:
            runtime.settle()  # the tracking page's p99 under load
            self.settled = True
        if state["recovering"] and self.recovering_since is None:
            self.recovering_since = time.monotonic()
        elif not state["recovering"] and self.recovering_since is not None:
            metrics.table_recovery_seconds.observe(time.monotonic() - self.recovering_since)
            self.recovering_since = None


def _event_time(envelope: Envelope) -> datetime | None:
    if envelope.type == "clock.tick":
        return datetime.fromisoformat(envelope.data["now"])
    return envelope.time


def _header(headers: Any, name: str) -> str:
    for key, value in headers or ():
        if key == name:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return ""


def _wall_now() -> datetime:
    return datetime.now(UTC)
