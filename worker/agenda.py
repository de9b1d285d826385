"""Wake-up times kept in a table, so they survive restarts and rebalances.

Entries are bucketed by partition and second (``agenda|<p>|<epoch second>`` → orjson
list of keys); a per-partition cursor remembers the first second not yet handed out.
:meth:`Agenda.pop_due` walks the buckets from the cursor to ``now``. The table is any
byte mapping: a Faust table in the worker, a dict in tests. Faust writes a table's
changelog to the partition of the event being processed, so an agenda entry is
always written while processing its own partition.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import datetime

import orjson


class Agenda:
    def __init__(self, table: MutableMapping[bytes, bytes], name: str) -> None:
        self.table, self.name = table, name

    def add(self, partition: int, due: datetime, key: str) -> None:
        second = int(due.timestamp())
        cursor = self._cursor(partition)
        if cursor is None:
            self._set_cursor(partition, second)
        elif second < cursor:
            second = cursor  # already past: due at the next look
        bucket = self._bucket(partition, second)
        keys = orjson.loads(self.table[bucket]) if bucket in self.table else []
        if key not in keys:
            keys.append(key)
            self.table[bucket] = orjson.dumps(keys)

    def pop_due(self, partition: int, now: datetime) -> list[str]:
        """Keys due at or before ``now``, oldest first, each once; they leave the agenda."""
        cursor, until = self._cursor(partition), int(now.timestamp())
        if cursor is None or cursor > until:
            return []
        due: list[str] = []
        for second in range(cursor, until + 1):
            bucket = self._bucket(partition, second)
            if bucket in self.table:
                due.extend(orjson.loads(self.table[bucket]))
                del self.table[bucket]
        self._set_cursor(partition, until + 1)
        return list(dict.fromkeys(due))

    def _bucket(self, partition: int, second: int) -> bytes:
        return f"{self.name}|{partition}|{second}".encode()

    def _cursor(self, partition: int) -> int | None:
        raw = self.table.get(f"{self.name}|{partition}|cursor".encode())
        return int(raw) if raw is not None else None

    def _set_cursor(self, partition: int, second: int) -> None:
        self.table[f"{self.name}|{partition}|cursor".encode()] = str(second).encode()
