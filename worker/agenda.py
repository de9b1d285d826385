"""Wake-up times kept in a table, so they survive restarts and rebalances.

Entries are bucketed by partition and minute (``<name>|<p>|<epoch minute>`` → orjson
list of ``[epoch second, key]``). An index in two levels lists the days that hold
buckets (``<name>|<p>|days``) and, for each, its hours (``<name>|<p>|hours|<epoch day>``),
so :meth:`Agenda.pop_due` visits only the hours that hold buckets, however long the clock
jumped, and adding a wake-up months ahead (an order to forget) reads and writes lists of
a few dozen numbers, not one of every hour in between. The table is any byte mapping: a
Faust table in the worker, a dict in tests. Faust writes a table's changelog to the
partition of the event being processed, so an agenda entry is always written while
processing its own partition.
"""

from __future__ import annotations

import heapq
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

import orjson

MINUTE, HOUR, DAY = 60, 3600, 86400


class Agenda:
    def __init__(self, table: MutableMapping[bytes, bytes], name: str) -> None:
        self.table, self.name = table, name

    def add(self, partition: int, due: datetime, key: str) -> None:
        second = int(due.timestamp())
        days = self._days(partition)
        if second // DAY not in days:
            self._set_days(partition, sorted([*days, second // DAY]))
        hours = self._hours(partition, second // DAY)
        if second // HOUR not in hours:
            self._set_hours(partition, second // DAY, sorted([*hours, second // HOUR]))
        bucket = self._bucket(partition, second // MINUTE)
        entries = orjson.loads(self.table[bucket]) if bucket in self.table else []
        if [second, key] not in entries:
            entries.append([second, key])
            self.table[bucket] = orjson.dumps(entries)

    def pop_due(self, partition: int, now: datetime) -> list[tuple[datetime, str]]:
        """(due time, key) of the keys due at or before ``now``, oldest first, each key
        once at its earliest time; they leave the agenda."""
        return self._due(partition, now, remove=True)

    def due(self, partition: int, now: datetime) -> list[tuple[datetime, str]]:
        """What :meth:`pop_due` answers, leaving the agenda as it is."""
        return self._due(partition, now, remove=False)

    def _due(self, partition: int, now: datetime, remove: bool) -> list[tuple[datetime, str]]:
        until = int(now.timestamp())
        due: dict[str, int] = {}
        days = self._days(partition)
        kept_days = []
        for day in days:
            if day > until // DAY:
                kept_days.append(day)
            elif self._due_on(partition, day, until, due, remove):
                kept_days.append(day)
        if remove and kept_days != days:
            self._set_days(partition, kept_days)
        return sorted((datetime.fromtimestamp(second, UTC), key) for key, second in due.items())

    def _due_on(self, partition: int, day: int, until: int, due: dict[str, int], remove: bool) -> bool:
        """Collect into ``due`` what ``day`` holds up to ``until``; answers whether the day
        still holds anything afterwards."""
        hours = self._hours(partition, day)
        kept = []
        for hour in hours:
            if hour > until // HOUR:
                kept.append(hour)
                continue
            first_minute = hour * HOUR // MINUTE
            last_minute = min(until // MINUTE, first_minute + HOUR // MINUTE - 1)
            later = False
            for minute in range(first_minute, last_minute + 1):
                bucket = self._bucket(partition, minute)
                if bucket not in self.table:
                    continue
                entries = orjson.loads(self.table[bucket])
                ahead = [e for e in entries if e[0] > until]
                for second, key in entries:
                    if second <= until and (key not in due or second < due[key]):
                        due[key] = second
                if not remove:
                    continue
                if ahead:
                    self.table[bucket] = orjson.dumps(ahead)
                    later = True
                else:
                    del self.table[bucket]
            if later or last_minute < first_minute + HOUR // MINUTE - 1:
                kept.append(hour)  # some of this hour is still ahead
        if remove and kept != hours:
            self._set_hours(partition, day, kept)
        return bool(kept)

    async def drain(self, partition: int, now: datetime,
                    visit: Callable[[datetime, str], Awaitable[datetime | None]],
                    settle: Callable[[], Awaitable[Any]] | None = None) -> None:
        """Visit every key due by ``now`` in time order. ``visit`` answers when the key is
        next due: by ``now``, it is visited again in this same pass; later, it is kept.

        The agenda changes only once every visit is done and ``settle`` (the caller's wait
        for what the visits published) has returned: a crash, a stop or a rebalance in the
        middle of a pass leaves every key on the agenda, to be visited again by whoever
        holds the partition next, instead of taking keys off that were never visited."""
        queue = self.due(partition, now)
        later: dict[str, datetime] = {}
        while queue:
            at, key = heapq.heappop(queue)
            upcoming = await visit(at, key)
            if upcoming is not None and upcoming <= now:
                heapq.heappush(queue, (upcoming, key))
            elif upcoming is not None:
                later[key] = min(upcoming, later.get(key, upcoming))
        if settle is not None:
            await settle()
        self.pop_due(partition, now)
        for key, at in later.items():
            self.add(partition, at, key)

    def _bucket(self, partition: int, minute: int) -> bytes:
        return f"{self.name}|{partition}|{minute}".encode()

    def _days(self, partition: int) -> list[int]:
        return self._list(f"{self.name}|{partition}|days".encode())

    def _set_days(self, partition: int, days: list[int]) -> None:
        self._set_list(f"{self.name}|{partition}|days".encode(), days)

    def _hours(self, partition: int, day: int) -> list[int]:
        return self._list(f"{self.name}|{partition}|hours|{day}".encode())

    def _set_hours(self, partition: int, day: int, hours: list[int]) -> None:
        self._set_list(f"{self.name}|{partition}|hours|{day}".encode(), hours)

    def _list(self, key: bytes) -> list[int]:
        raw = self.table.get(key)
        return orjson.loads(raw) if raw is not None else []

    def _set_list(self, key: bytes, numbers: list[int]) -> None:
        if numbers:
            self.table[key] = orjson.dumps(numbers)
        elif key in self.table:
            del self.table[key]  # an empty day leaves nothing behind
