"""Creates the contract's topics at start, with documented partition counts and configs."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from worker.settings import CHANNELS, Settings

log = logging.getLogger("worker.topics")

# Large enough to dead-letter an oversized input with its original value.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def specs(settings: Settings) -> dict[str, dict[str, str]]:
    """Every topic we rely on and its configs; all share one partition count (co-partitioning)."""
    t = settings.topics
    topics: dict[str, dict[str, str]] = {
        t.orders: {"max.message.bytes": str(MAX_MESSAGE_BYTES)},
        t.tracking: {"max.message.bytes": str(MAX_MESSAGE_BYTES)},
        t.preferences: {"cleanup.policy": "compact", "max.message.bytes": str(MAX_MESSAGE_BYTES)},
        t.engagement: {"max.message.bytes": str(MAX_MESSAGE_BYTES)},
        t.intents: {},
        t.lanes: {},
        t.lane_figures: {"cleanup.policy": "compact"},
        t.engagement_figures: {"cleanup.policy": "compact"},
        t.addresses: {},
        t.sent: {},
        t.inbox: {},
        t.retry: {},
        t.attempts: {"cleanup.policy": "compact,delete", "retention.ms": str(7 * 86400_000)},
        # A code is kept as long as its token opens the order, and a day more.
        t.short_links: {"cleanup.policy": "compact,delete",
                        "retention.ms": str((settings.link_ttl_days + 1) * 86400_000)},
        t.alerts: {},
        t.dlq: {"max.message.bytes": str(MAX_MESSAGE_BYTES), "retention.ms": str(30 * 86400_000)},
    }
    for channel in CHANNELS:
        topics[t.dispatch(channel)] = {}
    return topics


async def wait_for_broker(settings: Settings, *, what: str, retry_seconds: float = 3.0) -> None:
    """Block until the broker answers, saying so once per attempt in one clear line."""
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_servers, request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.close()
            return
        except (KafkaConnectionError, KafkaError, OSError) as exc:
            log.warning(
                "%s: Kafka broker at %s is unreachable (%s); retrying in %.0f s",
                what, settings.kafka_bootstrap, type(exc).__name__, retry_seconds,
            )
            try:
                await admin.close()
            except Exception:  # noqa: BLE001 - best effort on a client that never started
                pass
            await asyncio.sleep(retry_seconds)


async def ensure(settings: Settings, more: dict[str, dict[str, str]] | None = None) -> list[str]:
    """Create missing topics (ours, and ``more`` of the same partition count); return the
    names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, settings.partitions, settings.replication_factor, topic_configs=configs)
            for name, configs in {**specs(settings), **(more or {})}.items()
            if name not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass  # another process created them at the same moment
            await _wait_for_leaders(admin, [n.name for n in wanted])
        return [n.name for n in wanted]
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str],
                            timeout: float = 30.0) -> None:
    """New partitions answer 'not leader' for a moment; wait so clients start quietly."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        described = await admin.describe_topics(names)
        if all(p["leader"] >= 0 for t in described for p in t["partitions"]) and all(
            t["partitions"] for t in described
        ):
            return
        await asyncio.sleep(0.2)


async def read_all(servers: list[str] | str, topic: str, since: datetime | None = None) -> list[Any]:
    """Every record of ``topic`` (or those written at or after ``since``) up to its end at
    the time of the call."""
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False,
                                max_partition_fetch_bytes=16 * 1024 * 1024,
                                fetch_max_bytes=64 * 1024 * 1024)
    await consumer.start()
    try:
        # topics() alone does not refresh the client's own view of the cluster.
        cluster = await consumer._client.fetch_all_metadata()
        tps = [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()]
        if not tps:
            return []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = dict.fromkeys(tps, 0)
        if since is not None:
            found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
            starts = {tp: found[tp].offset if found[tp] else ends[tp] for tp in tps}
        remaining = {tp for tp in tps if starts[tp] < ends[tp]}
        for tp in remaining:
            consumer.seek(tp, starts[tp])
        records: list[Any] = []
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, batch in batches.items():
                records += [r for r in batch if r.offset < ends[tp]]
                if batch and batch[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
        return records
    finally:
        await consumer.stop()
