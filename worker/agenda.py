"""Wake-up times kept in a table, so they survive restarts and rebalances.

Entries are bucketed by partition and second (``<name>|<p>|<epoch second>`` → orjson
list of keys). A per-partition index lists the hours that hold buckets, so
:meth:`Agenda.pop_due` visits only those hours, however long the clock jumped. The
table is any byte mapping: a Faust table in the worker, a dict in tests. Faust writes
a table's changelog to the partition of the event being processed, so an agenda entry
is always written while processing its own partition.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import datetime

import orjson

HOUR = 3600


class Agenda:
    def __init__(self, table: MutableMapping[bytes, bytes], name: str) -> None:
        self.table, self.name = table, name

    def add(self, partition: int, due: datetime, key: str) -> None:
        second = int(due.timestamp())
        hours = self._hours(partition)
        if second // HOUR not in hours:
            self._set_hours(partition, sorted([*hours, second // HOUR]))
        bucket = self._bucket(partition, second)
        keys = orjson.loads(self.table[bucket]) if bucket in self.table else []
        if key not in keys:
            keys.append(key)
            self.table[bucket] = orjson.dumps(keys)

    def pop_due(self, partition: int, now: datetime) -> list[str]:
        """Keys due at or before ``now``, oldest first, each once; they leave the agenda."""
        until = int(now.timestamp())
        hours = self._hours(partition)
        due: list[str] = []
        kept = []
        for hour in hours:
            if hour > until // HOUR:
                kept.append(hour)
                continue
            last = min(until, hour * HOUR + HOUR - 1)
            for second in range(hour * HOUR, last + 1):
                bucket = self._bucket(partition, second)
                if bucket in self.table:
                    due.extend(orjson.loads(self.table[bucket]))
                    del self.table[bucket]
            if last < hour * HOUR + HOUR - 1:
                kept.append(hour)  # the rest of this hour is still ahead
        if kept != hours:
            self._set_hours(partition, kept)
        return list(dict.fromkeys(due))

    def _bucket(self, partition: int, second: int) -> bytes:
        return f"{self.name}|{partition}|{second}".encode()

    def _hours(self, partition: int) -> list[int]:
        raw = self.table.get(f"{self.name}|{partition}|hours".encode())
        return orjson.loads(raw) if raw is not None else []

    def _set_hours(self, partition: int, hours: list[int]) -> None:
        self.table[f"{self.name}|{partition}|hours".encode()] = orjson.dumps(hours)
