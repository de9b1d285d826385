"""``notifier bench``: reproducible throughput and latency figures, written to
docs/performance.md.

``senders``: one senders process against the sinks on the embedded broker (or
``NOTIFIER_KAFKA_BOOTSTRAP``), no faults, no rate limits: (a) a backlog of commands spread
over every channel, sent as fast as one process can (notifications per second, from the
first outcome to the last); (b) a steady 500 a second for 20 s, and the time from each
command's arrival on its dispatch topic to the provider's acceptance (p50, p99).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from worker import codec, runtime, topics
from worker.broker import EmbeddedBroker, free_port
from worker.figures import write_block
from worker.render import for_channel, render
from worker.settings import PROJECT_ROOT, Settings, load

CHANNELS = ("email", "sms", "push", "wechat", "webhook", "in_app")


@contextlib.contextmanager
def broker_for(settings: Settings, prefix: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """A work folder and the environment for a benchmark's processes: the embedded broker
    started in the folder, unless ``NOTIFIER_KAFKA_BOOTSTRAP`` names a cluster. Both go
    at the end."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    env = dict(os.environ)
    broker = None
    try:
        if "NOTIFIER_KAFKA_BOOTSTRAP" not in os.environ:
            broker = EmbeddedBroker(settings.kafka_libs, workdir / "broker", port=free_port())
            print("starting the embedded broker...", flush=True)
            env["NOTIFIER_KAFKA_BOOTSTRAP"] = broker.start()
        yield workdir, env
    finally:
        if broker:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def local_providers(workdir: Path) -> dict[str, str]:
    """Settings for sinks and senders of a benchmark's own: free ports, no rate limits, quiet logs."""
    return {
        "NOTIFIER_OUTBOX": str(workdir / "outbox.jsonl"),
        "NOTIFIER_PROVIDER_RATES": "", "NOTIFIER_SMS_PER_NUMBER_PER_SECOND": "0",
        "NOTIFIER_LOG_LEVEL": "warning",
        "NOTIFIER_SENDERS_WEB_PORT": str(free_port()), "NOTIFIER_SINKS_WEB_PORT": str(free_port()),
        "NOTIFIER_SMTP_PORT": str(free_port()),
        **{f"NOTIFIER_{name}_URL": f"http://127.0.0.1:{free_port()}"
           for name in ("SMS", "PUSH", "APNS", "WECHAT", "EMAIL_EVENTS")},
        "NOTIFIER_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/webhooks",
    }


def without_quiet_hours(workdir: Path) -> dict[str, str]:
    """Settings for rules without quiet hours: under the event clock a night passes in
    seconds, and under the wall clock the hour of the run would decide what is held; either
    way a held notification's wait is not the pipeline's."""
    shipped = (PROJECT_ROOT / "worker" / "rules.toml").read_text()
    quiet = 'quiet_hours = { start = "22:00", end = "08:00" }'
    if quiet not in shipped:  # a replace that finds nothing would leave them on, unseen
        raise ValueError(f"worker/rules.toml no longer says {quiet}")
    rules = workdir / "rules.toml"
    rules.write_text(shipped.replace(quiet, 'quiet_hours = { start = "00:00", end = "00:00" }'))
    return {"NOTIFIER_RULES": str(rules)}


async def unread(settings: Settings, group: str, inputs: list[str]) -> int:
    """Records on ``inputs`` that ``group`` has not committed yet; -1 while it has committed
    nothing on them, or the broker does not answer."""
    async with _offsets(settings) as (admin, consumer):
        return await _unread(admin, consumer, group, inputs)


async def read_through(settings: Settings, group: str, inputs: list[str],
                       timeout: float = 3600) -> None:
    """Wait until ``group`` has committed every input partition's end offset."""
    async with _offsets(settings) as (admin, consumer):
        deadline = time.monotonic() + timeout
        while await _unread(admin, consumer, group, inputs) != 0:
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not read its inputs in time")
            await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def _offsets(settings: Settings,
                   ) -> AsyncIterator[tuple[AIOKafkaAdminClient, AIOKafkaConsumer]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_servers)
    await admin.start()
    await consumer.start()
    try:
        yield admin, consumer
    finally:
        await consumer.stop()
        await admin.close()


async def _unread(admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, group: str,
                  inputs: list[str]) -> int:
    """A partition the group has not committed yet counts whole: a consumer commits only
    what it has read from (the senders, a channel no command went to)."""
    try:
        committed = {tp: meta.offset for tp, meta in
                     (await admin.list_consumer_group_offsets(group)).items() if tp.topic in inputs}
        if not committed:
            return -1
        partitions = [tp for name in inputs for tp in await partitions_of(consumer, name)]
        ends = await consumer.end_offsets(partitions)
    except KafkaError:
        return -1
    return sum(max(0, ends[tp] - max(0, committed.get(tp, 0))) for tp in partitions)


async def each_record(settings: Settings, names: list[str]) -> AsyncIterator[ConsumerRecord]:
    """Every record on ``names`` (all their partitions), from the start to at least the
    ends they had when asked."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_servers, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    try:
        partitions = [tp for name in names for tp in await partitions_of(consumer, name)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=1000, max_records=20_000)).values():
                for record in batch:
                    yield record
    finally:
        await consumer.stop()


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    cluster = await consumer._client.fetch_all_metadata()  # the consumer's own cache is lazy
    return [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()]


def run(settings: Settings, backlog: int, steady_rate: float, steady_seconds: float) -> int:
    with broker_for(settings, "notifier-bench-") as (workdir, env):
        env.update(local_providers(workdir), NOTIFIER_APP_ID=f"bench-{int(time.time())}")
        # The SMS sink calls each message's StatusCallback back, as Twilio does. No worker
        # takes them here, so the sinks' own web port answers them (404), as cheaply as a
        # worker would: a refused connection each took a fifth of the sinks' CPU.
        env["NOTIFIER_PUBLIC_URL"] = f"http://127.0.0.1:{env['NOTIFIER_SINKS_WEB_PORT']}"
        bench = load(env)
        asyncio.run(topics.ensure(bench))
        children = [runtime.spawn(name, workdir / f"{name}.log", env=env, cwd=workdir)
                    for name in ("sinks", "senders")]
        try:
            time.sleep(3)
            figures = asyncio.run(_measure(bench, backlog, steady_rate, steady_seconds))
        finally:
            runtime.stop(*children)
    lines = [
        f"one senders process, {backlog:,} notifications over {len(CHANNELS)} channels, no faults: "
        f"{figures['rate']:,.0f} notifications/s",
        f"steady {steady_rate:g}/s for {steady_seconds:g} s: dispatch to provider acceptance "
        f"p50 {figures['p50']:.0f} ms, p99 {figures['p99']:.0f} ms",
    ]
    for line in lines:
        print(line)
    _write(lines, f"notifier bench senders --backlog {backlog} --rate {steady_rate:g} "
                  f"--seconds {steady_seconds:g}")
    return 0


async def _measure(settings: Settings, backlog: int, rate: float, seconds: float) -> dict[str, float]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_servers, linger_ms=5)
    await producer.start()
    try:
        content = {c: for_channel(c, render("shipped", "zh_CN", "Asia/Shanghai", _FACTS), "SO-1",
                                  _FACTS["tracking_url"], "tpl") for c in CHANNELS}
        for n in range(backlog):
            await _send(producer, settings, f"backlog-{n}", CHANNELS[n % len(CHANNELS)], content)
        await producer.flush()
        print(f"{backlog:,} commands queued; sending...", flush=True)
        outcomes = await _wait_for(settings, backlog)
        times = sorted(datetime.fromisoformat(o["occurred_at"]) for o in outcomes)
        backlog_rate = (backlog - 1) / max(1e-3, (times[-1] - times[0]).total_seconds())
        print(f"steady {rate:g}/s for {seconds:g} s...", flush=True)
        start = time.monotonic()
        for n in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            await _send(producer, settings, f"steady-{n}", CHANNELS[n % len(CHANNELS)], content)
        await producer.flush()
        steady = [o for o in await _wait_for(settings, backlog + int(rate * seconds))
                  if o["notification_id"].startswith("steady-")]
        latencies = sorted(o["latency_ms"] for o in steady)
        return {"rate": backlog_rate, "p50": statistics.median(latencies),
                "p99": latencies[int(0.99 * (len(latencies) - 1))]}
    finally:
        await producer.stop()


async def _send(producer, settings: Settings, nid: str, channel: str, content: dict) -> None:
    now = datetime.now(UTC)
    recipient = {"email": {"email": "c@example.com"}, "sms": {"phone": "+8613912345678"},
                 "push": {"push_token": "tok", "platform": "fcm"}, "wechat": {"wechat_openid": "o-1"},
                 "webhook": {"url": settings.webhook_url}, "in_app": {"customer_id": "C1"}}[channel]
    command = {"notification_id": nid, "kind": "shipped", "priority": "transactional", "order_id": "SO-1",
               "customer_id": f"C{hash(nid) % 1000}", "channel": channel, "locale": "zh-CN",
               "recipient": recipient, "content": content[channel], "tracking_url": _FACTS["tracking_url"],
               "created_at": now.isoformat(), "received_at": now.isoformat(), "caused_by": ["bench"]}
    value, headers = codec.encode(event_type="notification.requested", event_id=nid, source="urn:bench",
                                  time=now, data=command, subject="SO-1")
    await producer.send(settings.topics.dispatch(channel), value, key=command["customer_id"].encode(),
                        headers=headers)


async def _wait_for(settings: Settings, count: int, timeout: float = 600) -> list[dict]:
    """The first ``count`` outcomes, read as they come (re-reading the topic each time
    would take the CPU the senders are measured on)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(settings.topics.sent, bootstrap_servers=settings.kafka_servers,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    outcomes: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while len(outcomes) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000, max_records=5000)).values():
                outcomes += [orjson.loads(r.value) for r in records]
        return outcomes
    finally:
        await consumer.stop()


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _write(lines: list[str], how: str) -> None:
    write_block(PROJECT_ROOT / "docs" / "performance.md", "bench:senders", "Senders",
                f"`{how}` on {machine()}, {datetime.now(UTC):%Y-%m-%d}:", lines)


_FACTS = {"shop": {"name": "熊猫优选"}, "customer": {"name": "李雷"}, "order_id": "SO-1",
          "tracking_url": "http://127.0.0.1:6066/t/x", "items": [], "promised_delivery_by": None,
          "total": {"amount": "88", "currency": "CNY"},
          "shipment": {"carrier": "zto", "tracking_number": "ZTO123", "carrier_eta": None}}
