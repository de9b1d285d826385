"""The Faust worker: thin agents around the pure domain, wired to their topics and tables.

1. Order stage (:mod:`worker.order_stage`): ``orders.events`` + ``tracking.events``
   (co-partitioned by order_id) → per-order state → intents, re-keyed by customer_id onto
   ``notifications.intents``.
2. Customer stage (:mod:`worker.customer_stage`): intents + ``customers.preferences``
   (co-partitioned by customer_id) → channel choice and rendering →
   ``notifications.dispatch.<channel>``, or ``notification.suppressed`` on ``notifications.sent``.
3. Lane stage: delivered parcels' journeys → each lane's figures, which every worker follows.
4. Address stage: parcels to one doorstep for many buyers → one alert.

Every event is handled inside a guard: a bad one goes to the dead-letter topic with its
reason and the stream goes on (Faust would otherwise ack and skip it).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any

import faust
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from worker import codec, faust_fixes, metrics, packing, rocks, runtime, schemas
from worker.address_book import AddressBook
from worker.codec import BadInput
from worker.customer_stage import CustomerStage
from worker.domain import lanes, links, risk
from worker.domain.rules import Rules, parse
from worker.lane_book import LaneBook
from worker.order_stage import OrderStage
from worker.runtime import wall_now
from worker.settings import Settings
from worker.tracking_site import TrackingSite

log = logging.getLogger("worker.stream")

SOURCE = "urn:order-notifier:worker"
ENGAGEMENT_SOURCE = "urn:order-notifier:tracking-page"
_PARTITIONER = DefaultPartitioner()  # Kafka's murmur2, as the producers use it


def load_rules(settings: Settings) -> Rules:
    with settings.rules.open("rb") as fp:
        return parse(tomllib.load(fp))


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
    """Holds the topics, the stages and what they share: the guard around each event, the
    outputs, and the web endpoints of the worker itself."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app, self.settings, self.rules = app, settings, load_rules(settings)
        schemas.prepare()  # before the worker is ready, not by its first inputs
        t = settings.topics
        self.intents = self.topic(t.intents)
        self.tracking = self.topic(t.tracking)
        self.sent = self.topic(t.sent)
        self.engagement = self.topic(t.engagement)
        self.alerts = self.topic(t.alerts)
        self.dlq = self.topic(t.dlq)
        self.lane_inputs = self.topic(t.lanes)
        self.lane_figures_topic = self.topic(t.lane_figures)
        self.address_inputs = self.topic(t.addresses)
        # Each stage has its own tables: the stages' partitions may live on different workers.
        self.order_stage = OrderStage(self)
        self.customer_stage = CustomerStage(self)
        self.lane_book = LaneBook(self.table("lane_days"), self.rules.prediction)
        self.address_book = AddressBook(self.table("addresses"), self.rules.risk)
        # Every worker follows every lane's figures (the order stage of any partition asks)
        # and every customer partition's engagement figures (``/stats``).
        self.lane_figures: dict[str, dict[str, Any]] = {}
        self.engagement_figures: dict[str, dict[str, int]] = {}
        self.short_links = links.ShortLinks()  # and every SMS link's code (``/s/CODE``)

        # Outcomes and engagement come back to the customer stage: a permanent failure falls
        # back, an unsubscribe or a bounce changes the customer's channels, and both count.
        customer_inputs = self.topic(t.intents, t.preferences, t.sent, t.engagement, t.inbox)
        app.agent(self.topic(t.orders, t.tracking), name="order_stage")(self.order_stage.run)
        app.agent(customer_inputs, name="customer_stage")(self.customer_stage.run)
        app.agent(self.lane_inputs, name="lane_stage")(self._lane_stage)
        app.agent(self.address_inputs, name="address_stage")(self._address_stage)
        app.task(lambda: self._follow(t.lane_figures, self.lane_figures.__setitem__))
        app.task(lambda: self._follow(t.engagement_figures, self.engagement_figures.__setitem__))
        app.task(lambda: self._follow(t.short_links, lambda code, link: self.short_links.keep(
            code, link["token"], link["expires"], int(time.time()))))
        app.timer(settings.tick_seconds / settings.partitions, on_leader=True)(self.order_stage.publish_wall_tick)
        app.page("/metrics")(self._metrics)
        app.page("/healthz")(self._healthz)
        app.page("/readyz")(self._readyz)
        app.timer(1.0)(self._watch_readiness)
        watch = faust_fixes.FrontierWatch()
        app.timer(1.0, name="frontier_watch")(lambda: watch.look(app))
        app.on_partitions_revoked.connect(self._forget_progress)
        TrackingSite(self).register(app)
        self.recovering_since: float | None = None
        self.collector_settled = False  # runtime.settle() done

    def topic(self, *names: str) -> faust.TopicT:
        """Values as raw bytes: no Faust codec in the hot path."""
        return self.app.topic(*names, allow_empty=True)

    def table(self, name: str) -> faust.Table:
        """Keys are the Kafka keys, values bytes (orjson or packed states)."""
        table = self.app.Table(name, partitions=self.settings.partitions)
        # Faust derives a table's codec from its value type and falls back to json, which
        # mangles bytes on recovery; make the changelog raw both ways. Before the store is
        # made (below): it takes the table's codecs then.
        table.key_serializer = table.value_serializer = "raw"
        table._changelog_topic = None
        rocks.bound(table, self.settings.rocksdb_memory_mb)
        return table

    # -- what every stage's events go through ---------------------------------------------

    async def in_turn(self, stream: faust.StreamT) -> AsyncIterator[faust.EventT]:
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
        self.order_stage.forget()
        self.customer_stage.forget()

    async def guarded(self, event: faust.EventT, handle: Any, stage: str) -> None:
        message = event.message
        try:
            # Not even begun once a rebalance has: a pass left unfinished by it must not
            # see the events after it applied before it is done again.
            self.still_ours()
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
            error = BadInput("processing_error", f"{type(exc).__name__}: {exc}")
            await self._dead_letter(event, error)

    def still_ours(self) -> None:
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

    async def settled(self, acks: list[Awaitable[Any]]) -> None:
        """What a pass published is acknowledged, and the partition still this worker's."""
        await asyncio.gather(*acks)
        self.still_ours()

    async def _dead_letter(self, event: faust.EventT, error: BadInput) -> None:
        m = event.message
        metrics.invalid_inputs.labels(m.topic, error.error_type).inc()
        metrics.dlq_writes.labels(m.topic).inc()
        log.warning("dead-lettered %s[%s]@%s: %s: %s", m.topic, m.partition, m.offset,
                    error.error_type, error.message)
        headers = codec.dlq_headers(m.headers, error, topic=m.topic, partition=m.partition,
                                    offset=m.offset)
        await self.dlq.send(key=m.key, value=m.value, headers=headers, force=True)

    # -- what the stages share ------------------------------------------------------------

    def held(self, table: faust.Table, topic: str, due_of: Callable[[dict[str, Any]], str | None],
             ) -> Iterator[tuple[int, str, datetime | str | None]]:
        """(partition, key, when due) of every key of ``table`` in a partition of ``topic``
        that this worker holds active: what an index of wake-ups is built from."""
        active = {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}
        for key, saved in table.data.items():  # read straight through: no copy of them all
            if (partition := self.partition_of(topic, key)) in active:
                yield partition, key.decode(), packing.due(saved, due_of)
        runtime.release_freed_memory()  # a RocksDB store's reads

    @property
    def wakeups_limit(self) -> int | None:
        """How many wake-ups an index holds: all of them when every state is in memory."""
        return self.settings.wakeups_held if self.settings.store.startswith("rocksdb:") else None

    def moment(self, due: datetime, reached: datetime) -> datetime:
        """When a wake-up happens. Under the event clock, at its own due time: the same
        stream gives the same decisions however its topics' reads interleave. Under the
        wall clock, now: a decision made late is judged by the time it really goes."""
        return due if self.settings.event_clock else reached

    def lanes_of(self, keys: Any) -> list[dict[str, Any]]:
        return [self.lane_figures[k] for k in keys if k in self.lane_figures]

    @functools.lru_cache(maxsize=1 << 16)  # noqa: B019 (one pipeline a process)
    def partition_of(self, topic: str, key: bytes) -> int:
        """The key's partition of ``topic``, as the producer hashes it (murmur2 in pure Python:
        the tracking page asks it several times a lookup). Every topic has the settings'
        partition count for the life of a deployment (co-partitioning depends on it), so the
        producer's metadata is not needed: it has none for a topic it never wrote to until
        it asks, and the wake-ups' index is built from this before any write."""
        every = list(range(self.settings.partitions))
        return _PARTITIONER(key, every, every)

    # -- what the tracking page reads (lookup_page.Orders) ------------------------------

    def saved_order(self, order_id: str) -> bytes | None:
        """From outside the stream: straight from the table's store, without its sensors."""
        return self.order_stage.orders.data.get(order_id.encode())

    def now_for(self, order_id: str) -> datetime:
        return self.order_stage.now_for(order_id)

    def inbox_of(self, customer_id: str, order_id: str) -> list[dict[str, Any]]:
        return self.customer_stage.inbox_of(customer_id, order_id)

    async def send_engagement(self, customer_id: str, event_type: str, event_id: str,
                              order_id: str, data: dict[str, Any]) -> None:
        value, headers = codec.encode(event_type=event_type, event_id=event_id,
                                      source=ENGAGEMENT_SOURCE, time=wall_now(), data=data,
                                      subject=order_id)
        await (await self.engagement.send(key=customer_id.encode(), value=value, headers=headers,
                                          force=True))

    # -- lanes and addresses --------------------------------------------------------------

    async def _lane_stage(self, stream: faust.StreamT) -> None:
        async for event in self.in_turn(stream):
            await self.guarded(event, self._on_lesson, "lane")

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
                await self.send(self.alerts, lane, alert.type, alert.alert_id, lane, alert.data())
        else:
            figures = self.lane_book.learn(lane, observed["day"], observed["journey"])
        await self.send(self.lane_figures_topic, lane, "lane.figures",
                        f"figures-{observed['parcel']}-{lane}", lane, figures)

    async def _follow(self, topic: str, keep: Callable[[str, Any], None]) -> None:
        """Keep the latest value of every key of a compacted topic (every lane's figures,
        every partition's engagement figures, every SMS link's code), read from its start."""
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
                    keep(record.key.decode(), orjson.loads(record.value))
        finally:
            await consumer.stop()

    async def _address_stage(self, stream: faust.StreamT) -> None:
        async for event in self.in_turn(stream):
            await self.guarded(event, self._on_sighting, "address")

    async def _on_sighting(self, event: faust.EventT) -> None:
        """A parcel to a doorstep: too many customers there of late raise one alert."""
        m = event.message
        metrics.events_consumed.labels(m.topic, "address.seen").inc()
        sighting = risk.Sighting(**orjson.loads(m.value))
        if alert := self.address_book.seen(m.partition, sighting):
            metrics.alerts_raised.labels(alert.type).inc()
            await self.send(self.alerts, alert.key, alert.type, alert.alert_id, alert.key,
                            alert.data())

    # -- output ---------------------------------------------------------------------------

    async def tick(self, topic: faust.TopicT, partition: int, now: datetime,
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

    async def send(self, topic: faust.TopicT, key: str, event_type: str, event_id: str,
                   subject: str, data: Any) -> None:
        """Send one binary-mode CloudEvent and wait for the broker's acknowledgement."""
        await (await self.publish(topic, key, event_type, event_id, subject, data))

    async def publish(self, topic: faust.TopicT, key: str, event_type: str, event_id: str,
                      subject: str, data: Any) -> Awaitable[Any]:
        """Hand one binary-mode CloudEvent to the producer; answers its acknowledgement."""
        value, headers = codec.encode(event_type=event_type, event_id=event_id, source=SOURCE,
                                      time=wall_now(), data=data, subject=subject)
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
        return {"ready": ready,
                "partitions": {t: sorted(ps) for t, ps in sorted(partitions.items())},
                "rebalancing": bool(app.rebalancing), "recovering": bool(app.in_recovery)}

    async def _readyz(self, request: Any) -> web.Response:
        body = self._readiness()
        return web.json_response(body, status=200 if body["ready"] else 503)

    async def _watch_readiness(self) -> None:
        """Readiness, table recovery time, parcels on their way and the carriers' delay
        ratios as metrics, for the alerts and the dashboard."""
        owned = {tp.partition for tp in self.app.assignor.assigned_actives()
                 if tp.topic == self.settings.topics.orders}
        metrics.active_shipments.set(self.order_stage.active_parcels(owned))
        for carrier, ratio in lanes.delay_ratios(self.lane_figures).items():
            metrics.lane_delay_ratio.labels(metrics.carrier(carrier)).set(ratio)
        state = self._readiness()
        metrics.ready.set(1 if state["ready"] else 0)
        if state["ready"] and not self.collector_settled:
            runtime.settle()  # the tracking page's p99 under load
            self.collector_settled = True
        if state["recovering"] and self.recovering_since is None:
            self.recovering_since = time.monotonic()
        elif not state["recovering"] and self.recovering_since is not None:
            metrics.table_recovery_seconds.observe(time.monotonic() - self.recovering_since)
            self.recovering_since = None
            runtime.release_freed_memory()  # what reading the changelogs took
