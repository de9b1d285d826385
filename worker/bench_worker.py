"""``notifier bench worker``: the stream worker against its ceiling, and what an order costs.

One run, on the embedded broker (or ``NOTIFIER_KAFKA_BOOTSTRAP``) and one simulated stream
(the event-clock stream of :func:`worker.simulate.stories`: whole order lifecycles with
their tracking, preference updates and clock ticks, cut at ``--events``), written to the
input topics before anything reads them:

(a) the ceiling: a raw aiokafka pipe in this process that consumes the inputs, decodes each
    value with orjson and produces it to a topic of its own, committing after each batch;
(b) the worker end to end: one ``notifier worker`` process (event clock, memory store) reads
    the same inputs and does all it does in production (order state, rules, lanes, intents,
    the customer stage, dispatch commands), timed from its readiness to the commit of its
    last input;
(c) memory per active order: the orders the worker held at the end (with their wake-ups and
    their customers) are copied under new ids into a fresh worker's changelogs, to each
    ``--active`` count; that worker recovers them and makes its first pass over their
    wake-ups (building their index, as a worker with inputs does), and its resident memory
    above an empty worker's, divided by the orders, is what one order costs (memory and
    RocksDB stores; for RocksDB also the bytes on disk).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import re
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

from worker import packing, runtime, simulate, topics
from worker.bench import broker_for, each_record, machine, partitions_of, read_through
from worker.broker import free_port
from worker.figures import write_block
from worker.settings import CHANNELS, PROJECT_ROOT, Settings, Topics, load

START = datetime(2026, 10, 1, tzinfo=UTC)
COPIED_TABLES = ("orders", "customers")  # the tables that grow with orders
ORDER_ID = re.compile(rb"SO\d{8}-\d{9}")
CUSTOMER_ID = re.compile(rb"CU-\d{5}")


def stream(settings: Settings, events: int) -> list[simulate.Record]:
    """The benchmarks' stream: two weeks of whole order lifecycles, cut at ``events``."""
    return list(itertools.islice(
        simulate.stories(settings, count=max(1, events // 12), seed=2026, start=START, days=14), events))


def run(settings: Settings, events: int, active: list[int]) -> int:
    with broker_for(settings, "notifier-bench-worker-") as (workdir, env):
        env.update({"NOTIFIER_LOG_LEVEL": "warning", "NOTIFIER_CLOCK": "event"})
        bench = load(env)
        asyncio.run(topics.ensure(bench))
        records = stream(bench, events)
        inputs = sorted({r.topic for r in records})
        asyncio.run(simulate.produce(bench, iter(records), progress=False))
        print(f"{len(records):,} events written to {', '.join(inputs)}", flush=True)

        print("(a) the raw pipe...", flush=True)
        raw = asyncio.run(_raw_pipe(bench, inputs, len(records)))
        print("(b) the worker...", flush=True)
        app_id = f"bench-worker-{int(time.time())}"
        worker = WorkerProcess(env, workdir, app_id)
        try:
            began = worker.ready()
            # Done when the inputs are read, and the intents they set off too (the customer
            # stage turns them into dispatch commands).
            asyncio.run(read_through(bench, app_id, inputs))
            asyncio.run(read_through(bench, app_id, [*inputs, bench.topics.intents]))
            elapsed = time.monotonic() - began
            print(f"    {len(records):,} inputs in {elapsed:.1f} s", flush=True)
        finally:
            worker.stop()
        dispatched = asyncio.run(_ends(bench, [bench.topics.dispatch(c) for c in CHANNELS]))
        lines = [
            f"(a) raw aiokafka pipe (consume, orjson decode, produce): {raw:,.0f} events/s",
            f"(b) the worker end to end, {len(records):,} events to {dispatched:,} dispatch commands: "
            f"{len(records) / elapsed:,.0f} events/s; b/a = {len(records) / elapsed / raw:.3f}",
        ]
        tables = asyncio.run(_snapshot(bench, app_id))
        print(f"(c) memory: {len(tables['orders']):,} orders held at the end, copied...", flush=True)
        for store in ("memory://", "rocksdb://"):
            empty = _recovered(env, workdir, bench, store, {}, 0)
            for count in active:
                held = _recovered(env, workdir, bench, store, tables, count)
                per_order = (held["rss"] - empty["rss"]) / count
                line = (f"(c) {store.rstrip(':/')} store, {count:,} active orders: resident memory "
                        f"{held['rss'] / 2**20:,.0f} MiB ({empty['rss'] / 2**20:,.0f} MiB empty), "
                        f"{per_order / 1024:,.2f} KiB an order; recovered in {held['seconds']:.0f} s")
                if store.startswith("rocksdb"):
                    line += f"; {held['disk'] / count / 1024:,.2f} KiB an order on disk"
                print("    " + line.removeprefix("(c) "), flush=True)
                lines.append(line)
    for line in lines:
        print(line)
    how = f"notifier bench worker --events {events} --active {','.join(map(str, active))}"
    write_block(PROJECT_ROOT / "docs" / "performance.md", "bench:worker", "Worker",
                f"`{how}` on {machine()}, {datetime.now(UTC):%Y-%m-%d}:", lines)
    return 0


async def _raw_pipe(settings: Settings, inputs: list[str], total: int) -> float:
    """Events a second through consume, decode, produce (in batches, each record to its
    input partition's number), at least once: offsets committed once the produce requests
    of the batch are acknowledged."""
    out = f"bench.raw.{int(time.time())}"
    await _create(settings, [out])
    consumer = AIOKafkaConsumer(*inputs, bootstrap_servers=settings.kafka_servers,
                                group_id=out, auto_offset_reset="earliest", enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_servers, linger_ms=5)
    await consumer.start()
    await producer.start()
    try:
        seen, began = 0, 0.0
        while seen < total:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            began = began or time.monotonic()
            acks = []
            for tp, records in fetched.items():
                batch = producer.create_batch()
                for record in records:
                    orjson.loads(record.value)
                    if batch.append(key=record.key, value=record.value, timestamp=None) is None:
                        acks.append(await producer.send_batch(batch, out, partition=tp.partition))
                        batch = producer.create_batch()
                        batch.append(key=record.key, value=record.value, timestamp=None)
                acks.append(await producer.send_batch(batch, out, partition=tp.partition))
                seen += len(records)
            await asyncio.gather(*acks)
            await consumer.commit()
        return seen / (time.monotonic() - began)
    finally:
        await consumer.stop()
        await producer.stop()


class WorkerProcess:
    """A ``notifier worker`` process of its own consumer group."""

    def __init__(self, env: dict[str, str], workdir: Path, app_id: str, **settings: str) -> None:
        self.port, self.data = free_port(), workdir / app_id
        self.process = runtime.spawn(
            "worker", workdir / f"{app_id}.log", cwd=workdir,
            env={**env, "NOTIFIER_APP_ID": app_id, "NOTIFIER_WEB_PORT": str(self.port),
                 "NOTIFIER_DATA_DIR": str(self.data), **settings})

    def ready(self, timeout: float = 900) -> float:
        """Wait for ``/readyz``; the moment it answered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker stopped (exit {self.process.returncode})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as answer:
                    if answer.status == 200:
                        return time.monotonic()
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError("the worker did not become ready")

    def rss(self) -> int:
        if rss := runtime.resident_bytes(self.process.pid):
            return rss
        raise RuntimeError("no VmRSS for the worker")

    def settled(self, timeout: float = 300) -> None:
        """Wait until the worker has done what it was given: two seconds running with
        under a tenth of a core (a first pass over a million orders takes some 20 s)."""
        deadline, quiet = time.monotonic() + timeout, 0
        used = runtime.cpu_seconds(self.process.pid)
        while quiet < 2 and time.monotonic() < deadline:
            time.sleep(1)
            now = runtime.cpu_seconds(self.process.pid)
            quiet, used = (quiet + 1 if now - used < 0.1 else 0), now

    def stop(self) -> None:
        runtime.stop(self.process)


async def _ends(settings: Settings, names: list[str]) -> int:
    """Records on ``names``, all partitions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_servers)
    await consumer.start()
    try:
        partitions = [tp for name in names for tp in await partitions_of(consumer, name)]
        return sum((await consumer.end_offsets(partitions)).values()) if partitions else 0
    finally:
        await consumer.stop()


async def _snapshot(settings: Settings, app_id: str) -> dict[str, dict[bytes, bytes]]:
    """The latest value of every key of the growing tables, from their changelogs."""
    tables: dict[str, dict[bytes, bytes]] = {}
    for name in COPIED_TABLES:
        latest = tables[name] = {}
        async for record in each_record(settings, [f"{app_id}-{name}-changelog"]):
            if record.value is None:
                latest.pop(record.key, None)
            else:
                latest[record.key] = record.value
    return tables


def _copies(tables: dict[str, dict[bytes, bytes]], count: int,
            partitions: int) -> Iterator[tuple[str, bytes, bytes, int]]:
    """(table, key, value, partition) for ``count`` orders made from the held ones: each copy
    renames its orders and customers (an order's wake-up time travels in its state)."""
    orders = list(tables.get("orders", {}).items())
    made = 0
    for copy in range(math.ceil(count / max(1, len(orders)))):
        tag = f"-{copy}".encode() if copy else b""

        def renamed(raw: bytes, tag: bytes = tag) -> bytes:
            raw = ORDER_ID.sub(lambda m: m.group(0) + tag, raw)
            return CUSTOMER_ID.sub(lambda m: m.group(0) + tag, raw)

        def state(saved: bytes) -> bytes:  # renamed inside, kept as the worker keeps it
            return packing.renamed(saved, renamed)

        for key, value in orders[:count - made]:
            key = renamed(key)
            yield "orders", key, state(value), _partition(key, partitions)
        made += min(len(orders), count - made)
        for key, value in tables.get("customers", {}).items():
            key = renamed(key)
            yield "customers", key, state(value), _partition(key, partitions)


def _partition(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions  # Kafka's default partitioner, as Faust's


FIRST_PASS = datetime(2000, 1, 1, tzinfo=UTC)


def _recovered(env: dict[str, str], workdir: Path, settings: Settings, store: str,
               tables: dict[str, dict[bytes, bytes]], count: int) -> dict[str, float]:
    """A fresh worker that recovers ``count`` copied orders from its changelogs: its resident
    memory once ready and settled, the recovery's seconds, its store's bytes on disk."""
    app_id = f"bench-memory-{store.split(':')[0]}-{count}-{int(time.time())}"
    asyncio.run(_write_changelogs(settings, app_id, _copies(tables, count, settings.partitions)))
    # Topics of its own, all empty: the worker only holds what it recovered.
    quiet = {f"NOTIFIER_TOPIC_{f.name.upper()}": f"{app_id}.{f.name}" for f in dataclasses.fields(Topics)}
    began = time.monotonic()
    worker = WorkerProcess(env, workdir, app_id, NOTIFIER_STORE=store, **quiet)
    try:
        seconds = worker.ready() - began
        # A tick long before any wake-up is due: each stage makes its first pass, and holds
        # the index of its wake-ups from then on, as a worker with inputs does.
        own = load({**env, **quiet})
        asyncio.run(simulate.produce(own, iter(simulate.ticks(own, FIRST_PASS)), progress=False))
        worker.settled()  # what start-up does after readiness, and the passes
        disk = sum(f.stat().st_size for f in worker.data.rglob("*") if f.is_file())
        return {"rss": worker.rss(), "seconds": seconds, "disk": disk}
    finally:
        worker.stop()


async def _write_changelogs(settings: Settings, app_id: str,
                            rows: Iterator[tuple[str, bytes, bytes, int]]) -> None:
    await _create(settings, [f"{app_id}-{name}-changelog" for name in COPIED_TABLES],
                  {"cleanup.policy": "compact"})
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_servers, linger_ms=20,
                                max_batch_size=1024 * 1024, max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        for table, key, value, partition in rows:
            await producer.send(f"{app_id}-{table}-changelog", value, key=key, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


async def _create(settings: Settings, names: list[str], configs: dict[str, str] | None = None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, settings.partitions, settings.replication_factor,
                                            topic_configs=configs or {}) for name in names])
    finally:
        await admin.close()
