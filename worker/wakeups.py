"""When each order or customer of a partition is next due, held in memory.

The index of a table whose values say when they are next due themselves (an order's
``wake_at``, a customer's ``next_release``). It holds nothing the table does not, so it
is never written anywhere: a restart or a rebalance loses nothing, and whoever holds a
partition builds its index again from the table (``source``) when it is first asked. A table of
wake-ups beside the states (as this was first built) cost more changelog records than
the states themselves, and could disagree with them after a crash between the two.

With a ``limit`` (the RocksDB store, whose states are not all in memory) the index holds
only the keys already due and the ``limit`` due soonest after them when it reads its
source; the others are due at or after its *horizon* and are left in the table. When a
partition's time reaches the horizon the index reads its source again. So its memory does
not grow with the orders held, and what it costs is a read of the table each time that
many wake-ups have passed.
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any


Source = Callable[[], Iterable[tuple[int, str, str | datetime | None]]]  # (partition, key, when due)


class Wakeups:
    def __init__(self, source: Source = lambda: (), limit: int | None = None) -> None:
        self.source, self.limit, self.built = source, limit, False
        # Keys due at or after this epoch second are not held (None: every key is).
        self.horizon: int | None = None
        self._at: dict[int, dict[str, int]] = {}  # partition -> key -> epoch second
        # partition -> (second, key), oldest first; an entry whose second is no longer the
        # key's is left in place and passed over when it comes up.
        self._queue: dict[int, list[tuple[int, str]]] = {}

    def clear(self) -> None:
        """Forget everything: the source is read again when the index is next asked."""
        self._at.clear()
        self._queue.clear()
        self.built, self.horizon = False, None

    def _build(self, until: int | None = None) -> None:
        """Read the source: with a limit, every key due by ``until`` and the ``limit`` due
        soonest after it."""
        self.clear()
        self.built = True
        try:
            if self.limit is None:
                for partition, key, due in self.source():
                    self.set(partition, key, due)
                return
            soonest: list[tuple[int, int, str]] = []  # (-second, partition, key), a max-heap
            horizon = None
            for partition, key, due in self.source():
                if due is None:
                    continue
                second = _second(due)
                if until is not None and second <= until:  # due now: visited at once
                    self._hold(partition, key, second)
                    continue
                entry = (-second, partition, key)
                if len(soonest) < self.limit:
                    heapq.heappush(soonest, entry)
                    continue
                left = -heapq.heappushpop(soonest, entry)[0]  # the latest of them, or this one
                horizon = left if horizon is None else min(horizon, left)
            for negative, partition, key in soonest:
                self._hold(partition, key, -negative)
            self.horizon = horizon
        except BaseException:
            # Half an index would never wake the keys it missed: read it all again next time.
            self.clear()
            raise

    def _ready(self, now: datetime) -> int:
        """Built, and read again if ``now`` has reached the horizon; ``now`` in seconds."""
        until = int(now.timestamp())
        if not self.built or (self.horizon is not None and until >= self.horizon):
            self._build(until)
        return until

    def set(self, partition: int, key: str, due: str | datetime | None) -> None:
        """``key`` is next due at ``due`` (a stamp or a time), or never (None)."""
        if not self.built:
            self._build()
        second = None if due is None else _second(due)
        if second is None or (self.horizon is not None and second >= self.horizon):
            self._at.get(partition, {}).pop(key, None)  # never, or found again by a later read
            return
        self._hold(partition, key, second)

    def _hold(self, partition: int, key: str, second: int) -> None:
        at = self._at.setdefault(partition, {})
        if at.get(key) == second:
            return
        at[key] = second
        queue = self._queue.setdefault(partition, [])
        heapq.heappush(queue, (second, key))
        if len(queue) > 2 * len(at) + 64:  # mostly entries passed over: start it afresh
            queue[:] = sorted((s, k) for k, s in at.items())

    def due(self, partition: int, now: datetime) -> list[tuple[datetime, str]]:
        """(due time, key) of the keys due at or before ``now``, oldest first; nothing changes."""
        until, at = self._ready(now), self._at.get(partition, {})
        queue = self._queue.get(partition, [])
        taken, due = [], []
        while queue and queue[0][0] <= until:
            entry = heapq.heappop(queue)
            if at.get(entry[1]) == entry[0]:
                taken.append(entry)
                due.append((datetime.fromtimestamp(entry[0], UTC), entry[1]))
        for entry in taken:
            heapq.heappush(queue, entry)
        return due

    def any_due(self, partition: int, now: datetime) -> bool:
        """Is a key of the partition due at or before ``now``?"""
        until = self._ready(now)
        at, queue = self._at.get(partition, {}), self._queue.get(partition, [])
        while queue and at.get(queue[0][1]) != queue[0][0]:
            heapq.heappop(queue)  # passed over: the key is due at another time now, or never
        return bool(queue) and queue[0][0] <= until

    async def drain(self, partition: int, now: datetime,
                    visit: Callable[[datetime, str], Awaitable[datetime | None]],
                    settle: Callable[[], Awaitable[Any]] | None = None) -> None:
        """Visit every key due by ``now`` in time order. ``visit`` answers when the key is
        next due: by ``now``, it is visited again in this same pass; later, it is kept;
        None, it leaves.

        The index changes only once every visit is done and ``settle`` (the caller's wait
        for what the visits published) has returned: a pass cut short leaves every key
        due, to be visited again."""
        queue = self.due(partition, now)
        upcoming: dict[str, datetime | None] = {}
        while queue:
            at, key = heapq.heappop(queue)
            upcoming[key] = await visit(at, key)
            if (next_at := upcoming[key]) is not None and next_at <= now:
                heapq.heappush(queue, (next_at, key))
        if settle is not None:
            await settle()
        for key, next_at in upcoming.items():
            self.set(partition, key, next_at)


def _second(due: str | datetime) -> int:
    return int((datetime.fromisoformat(due) if isinstance(due, str) else due).timestamp())
