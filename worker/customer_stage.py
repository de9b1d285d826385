"""The customer stage: intents + ``customers.preferences`` (co-partitioned by customer_id)
→ each customer's state → :mod:`worker.domain.customer` → ``notifications.dispatch.<channel>``,
or ``notification.suppressed`` on ``notifications.sent``.

Outcomes, engagement and in-app messages come back here: a permanent failure falls back
to the customer's next channel, an unsubscribe or a bounce changes the customer's
channels, both count in the engagement figures, and the inbox keeps each customer's
latest in-app messages for the tracking page. Held notifications are released by the
partition's watermark: the time every order partition has told it reached.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import faust
import orjson

from worker import codec, metrics, packing
from worker.codec import BadInput
from worker.domain import customer, engagement, inbox, links
from worker.domain.notification import Intent
from worker.domain.rules import CHANNELS
from worker.render import catalog_locale, for_channel, prepare, render
from worker.runtime import wall_now
from worker.wakeups import Wakeups

if TYPE_CHECKING:
    from worker.stream import Pipeline

PREFERENCE_TYPES = frozenset({"customer.preferences_updated"})


class CustomerStage:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.settings, self.rules = pipeline.settings, pipeline.rules
        t = self.settings.topics
        self.customers = pipeline.table("customers")
        self.wakeups = Wakeups(lambda: pipeline.held(  # held notifications' releases
            self.customers, t.intents,
            lambda state: customer.CustomerState.from_dict(state).next_release),
            limit=pipeline.wakeups_limit)
        self.watermarks = pipeline.table("watermarks")  # customer partition -> its watermark
        self.heard: dict[int, dict[int, datetime]] = {}  # ... -> order partition -> time it told
        # Each customer partition's engagement figures; every worker follows all of them.
        self.engagement_counts = pipeline.table("engagement")
        self.engagement_figures_topic = pipeline.topic(t.engagement_figures)
        # Each customer's latest in-app messages (from the inbox topic), for the tracking page.
        self.inbox = pipeline.table("inbox")
        self.dispatch = {c: pipeline.topic(t.dispatch(c)) for c in CHANNELS}
        self.short_links = pipeline.topic(t.short_links)
        prepare()  # the messages compiled before the worker is ready, not by its first ones

    def forget(self) -> None:
        """A rebalance: what each order partition told, and the index, are stale."""
        self.heard.clear()
        self.wakeups.clear()

    async def run(self, stream: faust.StreamT) -> None:
        """The agent."""
        async for event in self.pipeline.in_turn(stream):
            await self.pipeline.guarded(event, self._on_input, "customer")

    async def _on_input(self, event: faust.EventT) -> None:
        m, t = event.message, self.settings.topics
        if m.topic == t.preferences:
            await self._on_preferences(m)
            return
        if m.topic == t.engagement:
            await self._on_engagement(m)
            return
        if m.topic == t.inbox:
            self._on_inbox_message(m)
            return
        event_type = codec.header(m.headers, "ce_type")
        if m.topic == t.sent:
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
            await self.wakeups.drain(m.partition, now, lambda due, customer_id: (
                self._release(customer_id, self.pipeline.moment(due, now))),
                settle=lambda: self.pipeline.settled([]))
            return
        intent = Intent.from_dict(data)
        # Judged at the moment the order stage decided it: the same input gives the same
        # answer however the two stages' partitions interleave.
        now = datetime.fromisoformat(intent.created_at)
        state = self._customer(intent.customer_id) or customer.CustomerState(intent.customer_id)
        customer.prune(state, now, self.rules)
        actions = customer.decide(state, intent, now, self.rules, self.settings.webhook_url)
        await self._settle(state, actions)
        self._plan_release(m.partition, state)

    async def _release(self, customer_id: str, now: datetime) -> datetime | None:
        """Release what a customer has waiting; answers when the next is due."""
        state = self._customer(customer_id)
        if state is None:
            return None
        actions = customer.release(state, now, self.rules, self.settings.webhook_url)
        await self._settle(state, actions)
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
        await self._settle(state, actions)  # also keeps a dead push token's end
        self._plan_release(partition, state)

    async def _on_engagement(self, m: Any) -> None:
        """A customer opened, clicked, unsubscribed, or a provider told of a delivery or a
        bounce: counted, and what it changes in the customer's preferences applied."""
        envelope = codec.decode(m.key, m.value, m.headers,
                                accepted_types=engagement.ENGAGEMENT_TYPES,
                                max_bytes=self.settings.max_event_bytes)
        metrics.events_consumed.labels(m.topic, envelope.type).inc()
        data = envelope.data
        if data["customer_id"] != m.key.decode("utf-8", "replace"):
            raise BadInput("wrong_key", "record key differs from data.customer_id")
        state = self._customer(data["customer_id"]) or customer.CustomerState(data["customer_id"])
        heard = customer.engaged(state, envelope.type, data, envelope.time or wall_now(),
                                 self.rules, event_id=envelope.identity)
        if heard == "repeat":
            metrics.duplicates.labels(m.topic).inc()
            return
        # Counted before the state that remembers the event is written: a crash in between
        # counts it again rather than never (the figures are kept at least once).
        if engagement.counts(envelope.type, first=heard == "first"):
            await self._count(m.partition, envelope.type, data, first=heard == "first")
        self.pipeline.still_ours()
        self._save(m.key, state)

    def _on_inbox_message(self, m: Any) -> None:
        """An in-app message the senders wrote: kept with the customer's latest ones."""
        metrics.events_consumed.labels(m.topic, "inbox.message").inc()
        message = orjson.loads(m.value)
        saved = self.inbox.get(m.key)
        self.inbox[m.key] = orjson.dumps(inbox.keep(orjson.loads(saved) if saved else [], message))

    def inbox_of(self, customer_id: str, order_id: str) -> list[dict[str, Any]]:
        """The customer's in-app messages about one order, newest first."""
        saved = self.inbox.data.get(customer_id.encode())  # from outside the stream: the store
        return inbox.of_order(orjson.loads(saved) if saved else [], order_id)

    async def _count(self, partition: int, event_type: str, data: dict[str, Any],
                     first: bool = True) -> None:
        """One more event in the partition's figures for the notification's kind, channel and
        variant; the partition's new figures go onto the compacted figures topic."""
        figures_key = engagement.key(data)
        metrics.engagement.labels(*figures_key.split("|"), engagement.COUNTED[event_type]).inc()
        stored_key = f"{partition}|{figures_key}"
        saved = self.engagement_counts.get(stored_key.encode())
        figures = engagement.count(orjson.loads(saved) if saved else None, event_type, first)
        self.engagement_counts[stored_key.encode()] = orjson.dumps(figures)
        await self.engagement_figures_topic.send(key=stored_key.encode(),
                                                 value=orjson.dumps(figures), force=True)

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

    async def _settle(self, state: customer.CustomerState, actions: list[customer.Action]) -> None:
        """Carry out the actions, then write the state that remembers them."""
        await asyncio.gather(*(self._carry_out(a) for a in actions))
        self.pipeline.still_ours()
        self._save(state.customer_id.encode(), state)

    def _plan_release(self, partition: int, state: customer.CustomerState) -> None:
        self.wakeups.set(partition, state.customer_id, state.next_release)

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
        link = self._link(intent, route, variant)
        token = links.sign(link, self.settings.link_secret)
        public = self.settings.public_url.rstrip("/")
        tracking_url = f"{public}/c/{token}"
        if route.channel == "sms":  # a short link, known to every worker before the SMS goes
            code = links.short_code(token, self.settings.link_secret)
            await (await self.short_links.send(key=code.encode(), value=orjson.dumps(
                {"token": token, "expires": link.expires}), force=True))
            tracking_url = f"{public}/s/{code}"
        facts = {**intent.facts, "order_id": intent.order_id, "variant": variant,
                 "tracking_url": tracking_url}
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
        await self.pipeline.send(self._dispatch_topic(route.channel), intent.customer_id,
                                 "notification.requested", route.notification_id, intent.order_id,
                                 command)

    def _dispatch_topic(self, channel: str) -> faust.TopicT:
        if channel not in self.dispatch:
            self.dispatch[channel] = self.pipeline.topic(self.settings.topics.dispatch(channel))
        return self.dispatch[channel]

    def _customer(self, customer_id: str) -> customer.CustomerState | None:
        saved = self.customers.get(customer_id.encode())
        return customer.CustomerState.from_dict(packing.unpack(saved)) if saved else None

    def _save(self, key: bytes, state: customer.CustomerState) -> None:
        self.customers[key] = packing.pack(state.to_dict(), due=state.next_release)

    async def _on_preferences(self, m: Any) -> None:
        customer_id = m.key.decode("utf-8", "replace") if m.key else ""
        if m.value is None:  # tombstone: the customer asked to be forgotten
            metrics.events_consumed.labels(m.topic, "tombstone").inc()
            if not customer_id:
                raise BadInput("missing_key", "a tombstone needs the customer id as its key")
            state = self._customer(customer_id) or customer.CustomerState(customer_id)
            erased_at = datetime.fromtimestamp(m.timestamp, UTC) if m.timestamp else wall_now()
            await asyncio.gather(*(self._carry_out(a) for a in customer.erase(state, erased_at)))
            self._save(m.key, state)
            return
        envelope = codec.decode(m.key, m.value, m.headers, accepted_types=PREFERENCE_TYPES,
                                max_bytes=self.settings.max_event_bytes)
        metrics.events_consumed.labels(m.topic, envelope.type).inc()
        state = self._customer(customer_id) or customer.CustomerState(customer_id)
        customer.update_preferences(state, envelope.data, envelope.time or wall_now())
        self._save(m.key, state)

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
        await self.pipeline.send(self.pipeline.sent, intent.customer_id, "notification.suppressed",
                                 "sup-" + intent.notification_id.removeprefix("ntf-"),
                                 intent.order_id, outcome)

    def _link(self, intent: Intent, route: customer.Route, variant: str | None) -> links.Link:
        """What the notification's links say. They expire ``link_ttl_days`` after the
        decision, so the same decision always renders the same message."""
        decided = datetime.fromisoformat(intent.created_at)
        expires = decided + timedelta(days=self.settings.link_ttl_days)
        return links.Link(intent.order_id, intent.customer_id, route.notification_id,
                          intent.kind, route.channel, variant or "", int(expires.timestamp()))
