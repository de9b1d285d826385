"""The senders process: consume dispatch commands, call providers, report outcomes.

At-least-once with an idempotent effect: every command's outcome is written to
``notifications.sent`` before its offset is committed, and the outcomes already
written (the sent-ledger, rebuilt from that topic at start) are checked before
every provider call, so a redelivered command is never sent twice.

A send that may succeed later goes to ``notifications.retry`` with its due time (the
provider's Retry-After, else exponential backoff with jitter), so its partition goes on;
after the retry budget it goes to the dead-letter topic with a ``notification.failed``.
Each provider has a token bucket (its rate limit) and a circuit breaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from worker import codec, metrics, runtime, schemas, topics
from worker.codec import BadInput
from worker.senders import ByPlatform, PermanentFailure, RetryLater, Sender
from worker.senders.flow import Flow
from worker.senders.ledger import Ledger
from worker.senders.guard import CircuitBreaker, TokenBucket
from worker.senders.inbox import InboxSender
from worker.senders.apns import ApnsSender
from worker.senders.push import FcmSender
from worker.senders.sms import SmsSender
from worker.senders.smtp import EmailSender
from worker.senders.webhook import WebhookSender
from worker.senders.wechat import WechatSender
from worker.settings import Settings

log = logging.getLogger("worker.senders")
SOURCE = "urn:order-notifier:senders"
CONCURRENCY = 256  # provider calls in flight


def build_senders(settings: Settings, producer: AIOKafkaProducer) -> dict[str, Sender]:
    """One sender a channel; ``producer`` is the in-app inbox's way out."""
    push = ByPlatform("push", {"fcm": FcmSender(settings), "apns": ApnsSender(settings)}, "fcm")
    return {"email": EmailSender(settings), "sms": SmsSender(settings), "push": push,
            "wechat": WechatSender(settings), "webhook": WebhookSender(settings),
            "in_app": InboxSender(settings, producer)}


@dataclass
class Guard:
    """A provider's rate limit and circuit breaker."""

    bucket: TokenBucket
    breaker: CircuitBreaker
    in_flight: int = 0  # calls to the provider not back yet

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def wait(self, provider: str) -> None:
        loop = asyncio.get_running_loop()
        while (pause := self.breaker.wait(loop.time())) > 0:
            metrics.circuit_open.labels(provider).set(1)
            await asyncio.sleep(pause)
        metrics.circuit_open.labels(provider).set(0 if self.breaker.state(loop.time()) == "closed" else 1)
        if (pause := self.bucket.wait(loop.time())) > 0:
            await asyncio.sleep(pause)


class SendersService:
    def __init__(self, settings: Settings, senders: dict[str, Sender] | None = None) -> None:
        self.settings = settings
        self.ledger = Ledger(settings.ledger_days)  # notification ids with an outcome
        # Attempts that may have reached the provider (begun before a crash, or cut off): id -> when
        self.uncertain: dict[str, str] = {}
        self.in_flight: set[str] = set()
        # Markers and outcomes of many concurrent sends share produce requests: fewer,
        # larger requests cost the broker much less CPU than one per record.
        # And a batch large enough for every send in flight: a full batch holds up each
        # further send until it has gone to the broker and back.
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_servers, acks="all",
                                         linger_ms=10, max_batch_size=512 * 1024)
        self.senders = senders or build_senders(settings, self.producer)
        self.guards: dict[str, Guard] = {}  # by provider, made on first use
        self.topic_channel = {settings.topics.dispatch(c): c for c in self.senders}
        group = f"{settings.app_id}-senders"
        self.consumer = AIOKafkaConsumer(
            *self.topic_channel, bootstrap_servers=settings.kafka_servers, group_id=group,
            enable_auto_commit=False, auto_offset_reset="earliest",
        )
        self.retries = AIOKafkaConsumer(
            settings.topics.retry, bootstrap_servers=settings.kafka_servers, group_id=f"{group}-retry",
            enable_auto_commit=False, auto_offset_reset="earliest",
        )
        self.calls = asyncio.Semaphore(CONCURRENCY)

    async def run(self) -> None:
        await self.producer.start()
        await self._load_ledger()
        schemas.prepare()  # before the first commands, not by them
        runtime.settle()
        await self.consumer.start()
        await self.retries.start()
        log.info("senders ready: %s; ledger holds %d outcomes", ", ".join(self.senders),
                 len(self.ledger))
        try:
            await asyncio.gather(Flow(self.consumer, self._handle, ordered=True).run(),
                                 Flow(self.retries, self._retry, ordered=False).run())
        finally:
            await self.consumer.stop()
            await self.retries.stop()
            await self.producer.stop()
            for sender in self.senders.values():
                await sender.close()

    async def _retry(self, record: Any) -> None:
        """A send from the retry topic: it sleeps on its own until it is due."""
        entry = orjson.loads(record.value)
        channel = entry["channel"]
        metrics.retries_waiting.labels(channel).inc()
        try:
            wait = (datetime.fromisoformat(entry["due"]) - _now()).total_seconds()
            await asyncio.sleep(max(0.0, wait))
            await self._attempt(channel, entry["command"], entry["attempts"], entry["origin"])
        finally:
            metrics.retries_waiting.labels(channel).dec()

    async def _load_ledger(self) -> None:
        """Read the recent outcomes (their ids are never sent again), and the attempts
        begun without an outcome: a crash came in the middle of those."""
        servers, t = self.settings.kafka_servers, self.settings.topics
        since = _now() - timedelta(days=self.settings.ledger_days)  # see worker.senders.ledger
        for record in await topics.read_all(servers, t.sent, since):
            self.ledger.add(orjson.loads(record.value)["notification_id"], record.timestamp / 1000)
        for record in await topics.read_all(servers, t.attempts, since):
            nid = record.key.decode()
            if record.value is None:  # the provider said no to that attempt
                self.uncertain.pop(nid, None)
            elif nid not in self.ledger:
                self.uncertain.setdefault(nid, orjson.loads(record.value)["at"])

    async def _handle(self, record: Any) -> None:
        """A dispatch command; one that breaks a sender goes to the dead-letter topic."""
        origin = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        try:
            await self._dispatch(record, origin)
        except Exception as error:  # a bug must not stop every other send, nor vanish
            log.exception("sender error on %s[%s]@%s", record.topic, record.partition, record.offset)
            await self._dead_letter(record.value, record.key, record.headers,
                                    BadInput("sender_error", f"{type(error).__name__}: {error}"), origin)

    async def _dispatch(self, record: Any, origin: dict[str, Any]) -> None:
        channel = self.topic_channel[record.topic]
        try:
            envelope = codec.decode(record.key, record.value, record.headers,
                                    accepted_types=frozenset({"notification.requested"}),
                                    max_bytes=self.settings.max_event_bytes)
        except BadInput as error:
            await self._dead_letter(record.value, record.key, record.headers, error, origin)
            return
        await self._attempt(channel, envelope.data, 0, origin)

    async def _attempt(self, channel: str, command: dict[str, Any], attempts: int,
                       origin: dict[str, Any]) -> None:
        """One provider call for ``command``, unless it already has an outcome; then its
        outcome, or its place on the retry topic."""
        nid = command["notification_id"]
        if nid in self.ledger or nid in self.in_flight:
            log.info("already sent or sending; skipped", extra={"notification_id": nid})
            return
        sender = self.senders[channel].pick(command)
        if self._expired(command):
            await self._report(command, channel, sender.provider, "suppressed", attempts,
                               {"reason": "expired"})
            return
        self.in_flight.add(nid)
        try:
            retry = await self._begin(sender, channel, command, attempts, origin)
        finally:
            self.in_flight.discard(nid)
        if retry is not None:  # after the discard: the retry may come back before the ack
            await self._send_to_retry(command, channel, attempts + 1, origin, retry.retry_after)

    async def _begin(self, sender: Sender, channel: str, command: dict[str, Any], attempts: int,
                     origin: dict[str, Any]) -> RetryLater | None:
        """The call, unless the provider took this send already (before a crash, or before
        the line broke on an earlier attempt); a failure that may pass comes back, to be
        retried."""
        nid = command["notification_id"]
        since = self.uncertain.pop(nid, None)
        if since and (found := await sender.find(command, since)):
            log.info("the provider had taken it already", extra={"notification_id": nid})
            await self._report(command, channel, sender.provider, "sent", attempts + 1,
                               {"provider_message_id": found.provider_message_id})
            return None
        if since and not sender.tells_what_it_took:
            log.warning("sending again; %s cannot tell whether it took the interrupted attempt",
                        sender.provider, extra={"notification_id": nid})
        return await self._call(sender, channel, command, attempts + 1, origin)

    def _guard(self, provider: str) -> Guard:
        if provider not in self.guards:
            rate = self.settings.rates.get(provider, 0.0)
            self.guards[provider] = Guard(TokenBucket(rate, max(1.0, rate)), CircuitBreaker(
                self.settings.breaker_failures, self.settings.breaker_seconds))
        return self.guards[provider]

    async def _call(self, sender: Sender, channel: str, command: dict[str, Any], attempts: int,
                    origin: dict[str, Any]) -> RetryLater | None:
        guard = self._guard(sender.provider)
        await guard.wait(sender.provider)
        begun = _now().isoformat()
        if not sender.drops_repeats:
            # Written before the call: after a crash, the provider is asked before a resend.
            await self.producer.send_and_wait(self.settings.topics.attempts,
                                              orjson.dumps({"at": begun}),
                                              key=command["notification_id"].encode())
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            # Only the call itself takes a slot: a provider's rate limit or open circuit
            # (waited for above) holds up its own sends, not the other providers'.
            async with self.calls:
                with guard.calling():
                    delivery = await sender.send(command)
        except PermanentFailure as failure:
            guard.breaker.succeeded()  # the provider answered: it is up
            metrics.provider_calls.labels(sender.provider, "rejected").inc()
            await self._report(command, channel, sender.provider, "failed", attempts,
                               {"reason": failure.reason})
            return None
        except RetryLater as retry:
            if guard.breaker.failed(loop.time(), guard.in_flight):
                log.warning("%s failed %d of its last %d calls: its circuit is open for %.0f s",
                            sender.provider, guard.breaker.failures, len(guard.breaker.recent),
                            guard.breaker.cool_down)
            metrics.provider_calls.labels(sender.provider, "retry").inc()
            if retry.answered and not sender.drops_repeats:  # it said no: nothing is uncertain
                await self.producer.send_and_wait(self.settings.topics.attempts, None,
                                                  key=command["notification_id"].encode())
            elif not sender.drops_repeats:  # the line broke: it may have taken it; ask first
                self.uncertain[command["notification_id"]] = begun
            if attempts >= self.settings.retry_attempts:
                await self._give_up(command, channel, sender.provider, attempts, origin, retry)
                return None
            return retry
        finally:
            metrics.send_seconds.labels(sender.provider).observe(loop.time() - started)
        guard.breaker.succeeded()
        metrics.provider_calls.labels(sender.provider, "accepted").inc()
        extra = {"provider_message_id": delivery.provider_message_id} if (
            delivery.provider_message_id) else {}
        await self._report(command, channel, sender.provider, "sent", attempts, extra)
        return None

    async def _send_to_retry(self, command: dict[str, Any], channel: str, attempts: int,
                             origin: dict[str, Any], retry_after: float | None) -> None:
        due = _now() + timedelta(seconds=self._backoff(attempts, retry_after))
        entry = {"channel": channel, "attempts": attempts, "due": due.isoformat(),
                 "origin": origin, "command": command}
        await self.producer.send_and_wait(self.settings.topics.retry, orjson.dumps(entry),
                                          key=command["customer_id"].encode())

    async def _give_up(self, command: dict[str, Any], channel: str, provider: str, attempts: int,
                       origin: dict[str, Any], retry: RetryLater) -> None:
        """The retry budget is spent: the command to the dead-letter topic, and its outcome."""
        value, headers = codec.encode(
            event_type="notification.requested", event_id=command["notification_id"],
            source=SOURCE, time=_now(), data=command, subject=command["order_id"])
        error = BadInput("retries_exhausted", f"{attempts} attempts; last: {retry.reason}")
        await self._dead_letter(value, command["customer_id"].encode(), headers, error, origin)
        await self._report(command, channel, provider, "failed", attempts,
                           {"reason": "retries_exhausted"})

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        """The provider's Retry-After, else exponential backoff; with jitter either way, so
        many messages held up together do not come back together."""
        s = self.settings
        delay = retry_after or min(s.retry_max_seconds, s.retry_base_seconds * 2 ** (attempts - 1))
        return delay * random.uniform(0.8, 1.2)

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
        for optional in ("shipment_id", "variant"):
            if command.get(optional):
                data[optional] = command[optional]
        value, headers = codec.encode(
            event_type=f"notification.{outcome}", event_id=f"{outcome[:3]}-{command['notification_id']}",
            source=SOURCE, time=now, data=data, subject=command["order_id"],
        )
        await self.producer.send_and_wait(self.settings.topics.sent, value,
                                          key=command["customer_id"].encode(), headers=headers)
        self.ledger.add(command["notification_id"], now.timestamp())
        metrics.outcomes.labels(command["kind"], channel, outcome).inc()
        if outcome == "sent":
            metrics.event_to_send_seconds.labels(channel).observe(latency_ms / 1000)
        log.info("notification %s", outcome, extra={
            "notification_id": command["notification_id"], "order_id": command["order_id"],
            "channel": channel, "kind": command["kind"]})

    async def _dead_letter(self, value: bytes, key: bytes | None, headers: Any, error: BadInput,
                           origin: dict[str, Any]) -> None:
        metrics.invalid_inputs.labels(origin["topic"], error.error_type).inc()
        metrics.dlq_writes.labels(origin["topic"]).inc()
        log.warning("dead-lettered %s[%s]@%s: %s", origin["topic"], origin["partition"],
                    origin["offset"], error.message)
        await self.producer.send_and_wait(self.settings.topics.dlq, value, key=key, headers=codec.dlq_headers(
            headers, error, topic=origin["topic"], partition=origin["partition"], offset=origin["offset"]))


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
