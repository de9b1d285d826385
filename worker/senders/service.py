"""The senders process: consume dispatch commands, call providers, report outcomes.

At-least-once with an idempotent effect: every command's outcome is written to
``notifications.sent`` before its offset is committed, and the outcomes already
written (the sent-ledger, rebuilt from that topic at start) are checked before
every provider call, so a redelivered command is never sent twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from worker import codec, metrics, topics
from worker.codec import BadInput
from worker.senders import PermanentFailure, RetryLater, Sender
from worker.senders.smtp import EmailSender
from worker.settings import Settings

log = logging.getLogger("worker.senders")
SOURCE = "urn:order-notifier:senders"
MAX_ATTEMPTS = 5
CONCURRENCY = 32  # provider calls in flight


def build_senders(settings: Settings) -> dict[str, Sender]:
    return {"email": EmailSender(settings)}


class SendersService:
    def __init__(self, settings: Settings, senders: dict[str, Sender] | None = None) -> None:
        self.settings = settings
        self.senders = senders or build_senders(settings)
        self.topic_channel = {settings.topics.dispatch(c): c for c in self.senders}
        self.ledger: set[str] = set()
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_servers, acks="all",
                                         linger_ms=2)
        self.consumer = AIOKafkaConsumer(
            *self.topic_channel, bootstrap_servers=settings.kafka_servers, group_id=f"{settings.app_id}-senders",
            enable_auto_commit=False, auto_offset_reset="earliest",
        )

    async def run(self) -> None:
        await self.producer.start()
        await self._load_ledger()
        await self.consumer.start()
        log.info("senders ready: %s; ledger holds %d outcomes", ", ".join(self.senders),
                 len(self.ledger))
        try:
            while True:
                batch = await self.consumer.getmany(timeout_ms=500, max_records=500)
                if batch:
                    await self._handle_batch([r for records in batch.values() for r in records])
                    await self.consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items()})
        finally:
            await self.consumer.stop()
            await self.producer.stop()
            for sender in self.senders.values():
                await sender.close()

    async def _handle_batch(self, records: list[Any]) -> None:
        """One customer's commands in order (shipped before delivered); customers at once,
        up to CONCURRENCY provider calls. Offsets are committed after the whole batch."""
        lanes: dict[tuple[str, bytes | None], list[Any]] = defaultdict(list)
        for record in records:
            lanes[(record.topic, record.key)].append(record)
        gate = asyncio.Semaphore(CONCURRENCY)

        async def lane(queue: list[Any]) -> None:
            async with gate:
                for record in queue:
                    await self._handle(record)

        await asyncio.gather(*(lane(queue) for queue in lanes.values()))

    async def _load_ledger(self) -> None:
        """Read every outcome written so far; their notification ids are never sent again."""
        for record in await topics.read_all(self.settings.kafka_servers, self.settings.topics.sent):
            self.ledger.add(orjson.loads(record.value)["notification_id"])

    async def _handle(self, record: Any) -> None:
        channel = self.topic_channel[record.topic]
        try:
            envelope = codec.decode(record.key, record.value, record.headers,
                                    accepted_types=frozenset({"notification.requested"}),
                                    max_bytes=self.settings.max_event_bytes)
        except BadInput as error:
            await self._dead_letter(record, error)
            return
        command = envelope.data
        if command["notification_id"] in self.ledger:
            log.info("already sent; skipped", extra={"notification_id": command["notification_id"]})
            return
        sender = self.senders[channel]
        attempts, outcome, extra = 0, "sent", {}
        if self._expired(command):
            outcome, extra = "suppressed", {"reason": "expired"}
        else:
            while True:
                attempts += 1
                started = asyncio.get_running_loop().time()
                try:
                    delivery = await sender.send(command)
                    metrics.provider_calls.labels(sender.provider, "accepted").inc()
                    if delivery.provider_message_id:
                        extra["provider_message_id"] = delivery.provider_message_id
                    break
                except PermanentFailure as failure:
                    metrics.provider_calls.labels(sender.provider, "rejected").inc()
                    outcome, extra = "failed", {"reason": failure.reason}
                    break
                except RetryLater as retry:
                    metrics.provider_calls.labels(sender.provider, "retry").inc()
                    if attempts >= MAX_ATTEMPTS:
                        outcome, extra = "failed", {"reason": "retries_exhausted"}
                        break
                    delay = retry.retry_after or min(30.0, 0.5 * 2 ** attempts)
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                finally:
                    metrics.send_seconds.labels(sender.provider).observe(
                        asyncio.get_running_loop().time() - started)
        await self._report(command, channel, sender.provider, outcome, attempts, extra)

    def _expired(self, command: dict[str, Any]) -> bool:
        """Past ``expires_at`` on the wall clock. With the event clock (replays, simulations),
        time-driven decisions belong to the worker, which dispatches only what is due."""
        expires = command.get("expires_at")
        return bool(expires) and not self.settings.event_clock and (
            datetime.fromisoformat(expires) < _now())

    async def _report(self, command: dict[str, Any], channel: str, provider: str, outcome: str,
                      attempts: int, extra: dict[str, Any]) -> None:
        now = _now()
        latency = now - datetime.fromisoformat(command.get("received_at") or command["created_at"])
        latency_ms = max(0, int(latency.total_seconds() * 1000))
        # Under the event clock the moment that counts is the simulated one the worker
        # released the command at, not this machine's time.
        occurred = (command.get("not_before") or command["created_at"]) if (
            self.settings.event_clock) else now.isoformat()
        data = {
            "notification_id": command["notification_id"], "kind": command["kind"],
            "order_id": command["order_id"], "customer_id": command["customer_id"],
            "channel": channel, "provider": provider, "attempts": attempts,
            "occurred_at": occurred, "latency_ms": latency_ms, **extra,
        }
        if command.get("shipment_id"):
            data["shipment_id"] = command["shipment_id"]
        value, headers = codec.encode(
            event_type=f"notification.{outcome}", event_id=f"{outcome[:3]}-{command['notification_id']}",
            source=SOURCE, time=now, data=data, subject=command["order_id"],
        )
        await self.producer.send_and_wait(self.settings.topics.sent, value,
                                          key=command["customer_id"].encode(), headers=headers)
        self.ledger.add(command["notification_id"])
        metrics.outcomes.labels(command["kind"], channel, outcome).inc()
        if outcome == "sent":
            metrics.event_to_send_seconds.labels(channel).observe(latency_ms / 1000)
        log.info("notification %s", outcome, extra={
            "notification_id": command["notification_id"], "order_id": command["order_id"],
            "channel": channel, "kind": command["kind"]})

    async def _dead_letter(self, record: Any, error: BadInput) -> None:
        metrics.invalid_inputs.labels(record.topic, error.error_type).inc()
        metrics.dlq_writes.labels(record.topic).inc()
        log.warning("dead-lettered %s[%s]@%s: %s", record.topic, record.partition, record.offset,
                    error.message)
        headers = codec.dlq_headers(record.headers, error, topic=record.topic,
                                    partition=record.partition, offset=record.offset)
        await self.producer.send_and_wait(self.settings.topics.dlq, record.value, key=record.key,
                                          headers=headers)


async def serve_web(settings: Settings) -> web.AppRunner:
    async def metrics_page(request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    app = web.Application()
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", settings.senders_web_port).start()
    return runner


def _now() -> datetime:
    return datetime.now(UTC)
