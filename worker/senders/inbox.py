"""The in-app inbox: each message onto the customer's inbox topic, read by the app and the
tracking page. The notification id is the record's ``ce_id``, so a repeat is recognisable,
and after a crash the topic itself says whether a message was already written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer

from worker import codec, topics
from worker.senders import Delivery, Sender
from worker.settings import Settings

SOURCE = "urn:order-notifier:inbox"


class InboxSender(Sender):
    channel = "in_app"
    provider = "inbox"
    tells_what_it_took = True  # the inbox topic itself

    def __init__(self, settings: Settings, producer: AIOKafkaProducer) -> None:
        self.settings, self.topic, self.producer = settings, settings.topics.inbox, producer
        self.written: dict[str, str] | None = None  # ce_id -> "partition:offset", after a crash

    async def send(self, command: dict[str, Any]) -> Delivery:
        content = command["content"]
        entry = {"notification_id": command["notification_id"], "kind": command["kind"],
                 "order_id": command["order_id"], "customer_id": command["customer_id"],
                 "title": content.get("subject", ""), "text": content["text"],
                 "url": command.get("tracking_url", ""), "created_at": command["created_at"]}
        value, headers = codec.encode(event_type="inbox.message", event_id=command["notification_id"],
                                      source=SOURCE, time=datetime.now(UTC), data=entry,
                                      subject=command["order_id"])
        metadata = await self.producer.send_and_wait(
            self.topic, value, key=command["customer_id"].encode(), headers=headers)
        return Delivery(provider_message_id=f"{metadata.partition}:{metadata.offset}")

    async def find(self, command: dict[str, Any], since: str) -> Delivery | None:
        if self.written is None:
            # Once, for every interrupted send: the inbox from a little before the first.
            self.written = await self._written_since(datetime.fromisoformat(since) - timedelta(minutes=5))
        where = self.written.get(command["notification_id"])
        return Delivery(provider_message_id=where) if where else None

    async def _written_since(self, since: datetime) -> dict[str, str]:
        records = await topics.read_all(self.settings.kafka_servers, self.topic, since)
        return {codec.header_dict(r.headers).get("ce_id", b"").decode(): f"{r.partition}:{r.offset}"
                for r in records}
