"""``notifier pages``: tracking-page servers, so lookups do not wait behind one process.

A worker answers ``/track`` itself, on the process that also runs the stream: at a couple of
hundred customers refreshing at once it is the bottleneck (docs/performance.md). A page
server answers the same lookups from its own copy of what the page reads: it follows the
worker's tables through their changelogs (the orders, the in-app inboxes, the event clock)
and the lanes' figures, keeps the latest value of each key, and never forwards. Several page
server processes listen on one port (``NOTIFIER_PAGES_WEB_PORT``) with ``SO_REUSEPORT``, the
kernel spreading the connections over them, so lookups use every core.

A page server binds its port only once it has read every followed topic as far as it went
when it started: before that it would answer "not found" for orders it has not read yet.
It serves ``/track`` (the form, lookups, signed links), ``/healthz`` and ``/readyz``; the
links' clicks, opens, unsubscribes and the providers' callbacks stay on the worker
(``NOTIFIER_PUBLIC_URL``). Guesses are rate limited per process: the command divides
``NOTIFIER_LOOKUPS_PER_MINUTE`` among its processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import os
import signal
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from worker import page_http, runtime, topics
from worker.domain import inbox
from worker.domain.rules import Rules
from worker.settings import Settings
from worker.lookup_page import LookupPage

log = logging.getLogger("worker.pages")
FOLLOWED_TABLES = ("orders", "inbox", "clock")  # the worker's tables the page reads
# The changelogs read in bites: fetched as soon as anything was there, a page server following
# a busy worker sent a fetch request for every few records, which cost it more than the records.
FETCH_MIN_BYTES, FETCH_MAX_WAIT_MS = 64 << 10, 100


def changelog(settings: Settings, table: str) -> str:
    """Faust's name for a table's changelog topic."""
    return f"{settings.app_id}-{table}-changelog"


class Replica:
    """The latest value of every key the page reads, as the worker's changelogs tell it."""

    def __init__(self, settings: Settings, rules: Rules) -> None:
        self.settings, self.rules = settings, rules
        self.orders: dict[bytes, bytes] = {}
        self.inboxes: dict[bytes, bytes] = {}
        self.clock_marks: dict[bytes, bytes] = {}
        self.lane_figures: dict[str, dict[str, Any]] = {}
        self._latest = {changelog(settings, "orders"): self.orders,
                        changelog(settings, "inbox"): self.inboxes,
                        changelog(settings, "clock"): self.clock_marks}
        self._partitioner = DefaultPartitioner()

    @property
    def topics(self) -> list[str]:
        return [*self._latest, self.settings.topics.lane_figures]

    def apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """One changelog record: the key's new value, or its deletion (a tombstone)."""
        if key is None:
            return
        if topic == self.settings.topics.lane_figures:
            if value:
                self.lane_figures[key.decode()] = orjson.loads(value)
            return
        latest = self._latest[topic]
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value

    # -- what the page reads (lookup_page.Orders) -------------------------------------

    def saved_order(self, order_id: str) -> bytes | None:
        return self.orders.get(order_id.encode())

    def now_for(self, order_id: str) -> datetime:
        """The worker's clock for the order's partition: its event clock where it has one."""
        wall = datetime.now(UTC)
        if not self.settings.event_clock:
            return wall
        mark = self.clock_marks.get(str(self._partition(order_id.encode())).encode())
        return datetime.fromisoformat(mark.decode()) if mark else wall

    def lanes_of(self, keys: Any) -> list[dict[str, Any]]:
        return [self.lane_figures[k] for k in keys if k in self.lane_figures]

    def inbox_of(self, customer_id: str, order_id: str) -> list[dict[str, Any]]:
        saved = self.inboxes.get(customer_id.encode())
        return inbox.of_order(orjson.loads(saved) if saved else [], order_id)

    @functools.lru_cache(maxsize=1 << 16)  # noqa: B019 (one replica a process)
    def _partition(self, key: bytes) -> int:
        """The key's partition, as the worker's producer hashes it (murmur2)."""
        every = list(range(self.settings.partitions))
        return self._partitioner(key, every, every)

    async def follow(self, caught_up: asyncio.Event) -> None:
        """Read every followed topic from its start, and on; ``caught_up`` is set once each
        partition is read as far as it went when this began."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_servers,
                                    enable_auto_commit=False, max_partition_fetch_bytes=8 << 20,
                                    fetch_min_bytes=FETCH_MIN_BYTES, fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
        await consumer.start()
        try:
            partitions = [TopicPartition(t, p) for t in self.topics for p in range(self.settings.partitions)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = {tp: end for tp, end in (await consumer.end_offsets(partitions)).items() if end}
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                for tp, records in batches.items():
                    for record in records:
                        self.apply(tp.topic, record.key, record.value)
                if not caught_up.is_set() and await _read_to(consumer, ends):
                    caught_up.set()
        finally:
            await consumer.stop()


async def serve(settings: Settings, rules: Rules) -> None:
    """One page server: catch up, then listen (beside the others) until told to stop."""
    replica = Replica(settings, rules)
    caught_up = asyncio.Event()
    following = asyncio.ensure_future(replica.follow(caught_up))
    done, _ = await asyncio.wait([following, asyncio.ensure_future(caught_up.wait())],
                                 return_when=asyncio.FIRST_COMPLETED)
    if following in done:
        following.result()  # it failed before catching up: say why
    lookups = LookupPage(settings, replica)  # its templates compiled, then frozen with the rest
    runtime.settle()

    async def healthz(_: page_http.Request) -> web.Response:
        return _json({"ok": True, "pid": os.getpid()})

    async def readyz(_: page_http.Request) -> web.Response:
        return _json({"ready": True, "pid": os.getpid(), "orders": len(replica.orders),
                      "outlines": len(lookups.outlines)})

    server = page_http.Server({"/track": lookups.track, "/healthz": healthz, "/readyz": readyz})
    await server.start("0.0.0.0", settings.pages_web_port)
    log.info("pages ready on port %d: %d orders", settings.pages_web_port, len(replica.orders))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait([following, asyncio.ensure_future(stop.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if following.done():
            following.result()
    finally:
        following.cancel()
        await server.stop()


def run(settings: Settings, processes: int) -> int:
    """``processes`` page servers on one port; ends when one of them does (the rest are
    stopped), or on SIGINT/SIGTERM."""
    from worker.stream import load_rules

    rules = load_rules(settings)
    settings = dataclasses.replace(  # a client's guesses spread over the processes
        settings, lookups_per_minute=max(1, math.ceil(settings.lookups_per_minute / processes)))
    asyncio.run(topics.ensure(settings, {changelog(settings, t): {"cleanup.policy": "compact"}
                                         for t in FOLLOWED_TABLES}))
    children = []
    for _ in range(processes):
        if (pid := os.fork()) == 0:
            try:
                asyncio.run(serve(settings, rules))
                os._exit(0)
            except BaseException:  # noqa: BLE001 (a child never returns into the parent's code)
                log.exception("a page server stopped")
                os._exit(1)
        children.append(pid)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: _stop(children))
    pid, status = os.wait()
    _stop([c for c in children if c != pid])
    failed = os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM, -signal.SIGINT)
    for child in children:
        if child != pid:
            try:
                os.waitpid(child, 0)
            except ChildProcessError:
                pass
    return 1 if failed else 0


async def _read_to(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


def _stop(children: list[int]) -> None:
    for child in children:
        try:
            os.kill(child, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")

