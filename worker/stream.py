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

import logging
import tomllib
from datetime import UTC, datetime
from typing import Any

import faust
import orjson
from aiohttp import web

from worker import codec, metrics
from worker.codec import BadInput
from worker.domain import customer, order
from worker.domain.clock import Clock
from worker.domain.envelope import Envelope
from worker.domain.notification import Intent
from worker.domain.rules import Rules, parse
from worker.render import catalog_locale, render
from worker.settings import Settings

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
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{s}" for s in settings.kafka_servers],
        store=settings.store,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        web_port=settings.web_port,
        web_bind="0.0.0.0",
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


class Pipeline:
    """Holds the topics and tables and turns each consumed event into its effects."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app, self.settings, self.rules = app, settings, load_rules(settings)
        t, n = settings.topics, settings.partitions
        self.order_inputs = raw_topic(app, t.orders, t.tracking)
        self.customer_inputs = raw_topic(app, t.intents, t.preferences)
        self.intents = raw_topic(app, t.intents)
        self.tracking = raw_topic(app, t.tracking)
        self.sent = raw_topic(app, t.sent)
        self.dlq = raw_topic(app, t.dlq)
        self.dispatch = {c: raw_topic(app, t.dispatch(c)) for c in self.rules_channels()}
        self.orders = raw_table(app, "orders", n)
        self.customers = raw_table(app, "customers", n)
        self.clock_marks = raw_table(app, "clock", n)
        self.clock = Clock(event_mode=settings.event_clock)

        app.agent(self.order_inputs, name="order_stage")(self._order_stage)
        app.agent(self.customer_inputs, name="customer_stage")(self._customer_stage)
        app.timer(settings.tick_seconds, on_leader=True)(self._publish_wall_tick)
        app.page("/metrics")(self._metrics)
        app.page("/healthz")(self._healthz)
        app.page("/readyz")(self._readyz)

    def rules_channels(self) -> set[str]:
        return {c for rule in self.rules.kinds.values() for c in rule.channels}

    # -- agents ---------------------------------------------------------------------------

    async def _order_stage(self, stream: faust.StreamT) -> None:
        async for event in stream.events():
            await self._guarded(event, self._on_order_input)

    async def _customer_stage(self, stream: faust.StreamT) -> None:
        async for event in stream.events():
            await self._guarded(event, self._on_customer_input)

    async def _guarded(self, event: faust.EventT, handle: Any) -> None:
        message = event.message
        try:
            await handle(event)
        except BadInput as error:
            await self._dead_letter(event, error)
        except Exception as exc:  # noqa: BLE001 - one bad event must not stop the stream
            log.exception("unexpected error on %s[%s]@%s", message.topic, message.partition,
                          message.offset)
            await self._dead_letter(event, BadInput("processing_error", f"{type(exc).__name__}: {exc}"))

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
        now = self._advance_clock(m.partition, envelope)
        if envelope.type == "clock.tick":
            return
        if envelope.data["order_id"] != m.key.decode("utf-8", "replace"):
            raise BadInput("wrong_key", "record key differs from data.order_id")
        previous = self.orders.get(m.key)
        state = order.OrderState.from_dict(orjson.loads(previous)) if previous else None
        outcome = order.apply(state, envelope, now=now, received_at=_wall_now(), rules=self.rules)
        if outcome.duplicate:
            metrics.duplicates.labels(m.topic).inc()
            return
        # Intents are acknowledged before the state that remembers them is written, so a
        # crash in between repeats the intents (same ids, de-duplicated downstream)
        # instead of losing them.
        for intent in outcome.intents:
            metrics.decided.labels(intent.kind).inc()
            await self._publish(self.intents, intent.customer_id, "notification.intended",
                                intent.notification_id, intent.order_id, intent)
        self.orders[m.key] = orjson.dumps(outcome.state.to_dict())

    def _advance_clock(self, partition: int, envelope: Envelope) -> datetime:
        when = envelope.time
        if envelope.type == "clock.tick":
            when = datetime.fromisoformat(envelope.data["now"])
        mark_key = str(partition).encode()
        if partition not in self.clock.high_water and (saved := self.clock_marks.get(mark_key)):
            self.clock.observe(partition, datetime.fromisoformat(saved.decode()))
        before = self.clock.high_water.get(partition)
        self.clock.observe(partition, when)
        after = self.clock.high_water.get(partition)
        if self.settings.event_clock and after is not None and after != before:
            self.clock_marks[mark_key] = after.isoformat().encode()
        return self.clock.now(partition, _wall_now())

    async def _publish_wall_tick(self) -> None:
        """Wall-clock mode: tick every partition so time-driven work runs without input."""
        if self.settings.event_clock:
            return
        now = _wall_now()
        for partition in range(self.settings.partitions):
            value, headers = codec.encode(
                event_type="clock.tick", event_id=f"tick-{now.isoformat()}-p{partition}",
                source=SOURCE, time=now, data={"now": now.isoformat()},
            )
            await self.tracking.send(key=f"tick-{partition}".encode(), value=value,
                                     headers=headers, partition=partition)

    # -- customer stage -------------------------------------------------------------------

    async def _on_customer_input(self, event: faust.EventT) -> None:
        m = event.message
        if m.topic == self.settings.topics.preferences:
            await self._on_preferences(m)
            return
        intent = Intent.from_dict(orjson.loads(m.value))
        metrics.events_consumed.labels(m.topic, "notification.intended").inc()
        saved = self.customers.get(m.key)
        preferences = orjson.loads(saved) if saved else None
        choice = customer.route(intent, preferences, self.rules,
                                webhook_url=self.settings.webhook_url)
        if isinstance(choice, customer.Suppressed):
            await self._suppress(intent, choice.reason)
            return
        facts = {**intent.facts, "order_id": intent.order_id, "tracking_url": self._tracking_url(intent)}
        locale = catalog_locale(choice.locale, self.rules.fallback_locale)
        content = render(intent.kind, locale, choice.timezone, facts)
        command = {
            "notification_id": intent.notification_id,
            "kind": intent.kind,
            "priority": intent.priority,
            "order_id": intent.order_id,
            "customer_id": intent.customer_id,
            "channel": choice.channel,
            "locale": choice.locale or locale.replace("_", "-"),
            "recipient": choice.recipient,
            "content": content.as_dict(),
            "tracking_url": facts["tracking_url"],
            "created_at": intent.created_at,
            "caused_by": intent.caused_by,
            "received_at": intent.received_at,
        }
        for optional in ("shipment_id", "not_before", "expires_at"):
            if getattr(intent, optional):
                command[optional] = getattr(intent, optional)
        metrics.dispatched.labels(intent.kind, choice.channel).inc()
        await self._publish(self.dispatch[choice.channel], intent.customer_id,
                            "notification.requested", intent.notification_id, intent.order_id,
                            command)

    async def _on_preferences(self, m: Any) -> None:
        if m.value is None:  # tombstone: the customer asked to be forgotten
            metrics.events_consumed.labels(m.topic, "tombstone").inc()
            if m.key and self.customers.get(m.key) is not None:
                del self.customers[m.key]
            return
        envelope = codec.decode(m.key, m.value, m.headers, accepted_types=PREFERENCE_TYPES,
                                max_bytes=self.settings.max_event_bytes)
        metrics.events_consumed.labels(m.topic, envelope.type).inc()
        saved = self.customers.get(m.key)
        merged = {**(orjson.loads(saved) if saved else {}), **envelope.data}
        self.customers[m.key] = orjson.dumps(merged)

    async def _suppress(self, intent: Intent, reason: str) -> None:
        metrics.suppressed.labels(intent.kind, reason).inc()
        outcome = {
            "notification_id": intent.notification_id, "kind": intent.kind,
            "order_id": intent.order_id, "customer_id": intent.customer_id, "channel": "none",
            "provider": "policy", "attempts": 0, "reason": reason,
            "occurred_at": intent.created_at,
        }
        await self._publish(self.sent, intent.customer_id, "notification.suppressed",
                            "sup-" + intent.notification_id.removeprefix("ntf-"), intent.order_id,
                            outcome)

    def _tracking_url(self, intent: Intent) -> str:
        return f"{self.settings.public_url.rstrip('/')}/track?order={intent.order_id}"

    # -- output ---------------------------------------------------------------------------

    async def _publish(self, topic: faust.TopicT, key: str, event_type: str, event_id: str,
                       subject: str, data: Any) -> None:
        """Send one binary-mode CloudEvent and wait for the broker's acknowledgement."""
        value, headers = codec.encode(event_type=event_type, event_id=event_id, source=SOURCE,
                                      time=_wall_now(), data=data, subject=subject)
        pending = await topic.send(key=key.encode(), value=value, headers=headers, force=True)
        await pending

    # -- web ------------------------------------------------------------------------------

    async def _metrics(self, request: Any) -> web.Response:
        return web.Response(body=metrics.exposition(),
                            content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type": "version=0.0.4"})

    async def _healthz(self, request: Any) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: Any) -> web.Response:
        app = self.app
        assigned = bool(app.consumer.assignment()) if app.consumer else False
        ready = assigned and not app.rebalancing and not app.in_recovery
        body = {"ready": ready, "partitions_assigned": assigned,
                "rebalancing": bool(app.rebalancing), "recovering": bool(app.in_recovery)}
        return web.json_response(body, status=200 if ready else 503)


def _wall_now() -> datetime:
    return datetime.now(UTC)
