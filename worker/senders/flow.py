"""Records of one consumer, handled concurrently without losing any.

Each record runs as its own task; with ``ordered``, the records of one topic and key run
one after the other in one task (one customer's news in order). A partition's offset is committed up to its
oldest record not yet done, so a crash forgets nothing and a slow record holds up no other.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

Handler = Callable[[Any], Awaitable[None]]


class Flow:
    def __init__(self, consumer: AIOKafkaConsumer, handle: Handler, *, ordered: bool,
                 limit: int = 1000) -> None:
        self.consumer, self.handle, self.ordered, self.limit = consumer, handle, ordered, limit
        self.pending: dict[TopicPartition, set[int]] = defaultdict(set)
        self.read: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.queues: dict[tuple[str, bytes | None], deque[Any]] = {}  # per key, while it runs
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        try:
            while True:
                self._backpressure()
                batch = await self.consumer.getmany(timeout_ms=200, max_records=1000)
                for tp, records in batch.items():
                    for record in records:
                        self._start(tp, record)
                    self.read[tp] = records[-1].offset + 1
                mine = self.consumer.assignment()  # after a rebalance, only what is still ours
                offsets = {tp: min(self.pending[tp], default=end) for tp, end in self.read.items()
                           if tp in mine}
                if offsets != self.committed:
                    await self.consumer.commit(offsets)
                    self.committed = offsets
        finally:
            for task in self.tasks:
                task.cancel()

    def _backpressure(self) -> None:
        """A partition with ``limit`` records in hand stops fetching until half are done:
        a slow provider (its rate limit, an open circuit) holds up its own topic only."""
        for tp, offsets in self.pending.items():
            if len(offsets) >= self.limit and tp not in self.paused:
                self.consumer.pause(tp)
                self.paused.add(tp)
            elif len(offsets) < self.limit // 2 and tp in self.paused:
                self.consumer.resume(tp)
                self.paused.discard(tp)

    def _start(self, tp: TopicPartition, record: Any) -> None:
        self.pending[tp].add(record.offset)
        if not self.ordered:
            self._spawn(self._drain(None, deque([(tp, record)])))
            return
        key = (record.topic, record.key)
        if key in self.queues:  # that key's task is running: it takes this one next
            self.queues[key].append((tp, record))
        else:
            self.queues[key] = deque([(tp, record)])
            self._spawn(self._drain(key, self.queues[key]))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _drain(self, key: tuple[str, bytes | None] | None, queue: deque[Any]) -> None:
        """One key's records, one after the other, until none is left."""
        try:
            while queue:
                tp, record = queue[0]
                try:
                    await self.handle(record)
                finally:
                    queue.popleft()
                    self.pending[tp].discard(record.offset)
        finally:
            if key is not None:
                self.queues.pop(key, None)
