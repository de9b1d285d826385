"""Addresses' recent orders kept in a table, forgotten once they leave the window.

``<fingerprint>`` → the address's entry (:func:`worker.domain.risk.seen`), and, per
partition, ``days|<p>`` → the days held and ``day|<p>|<YYYY-MM-DD>`` → the addresses seen
that day. When a day leaves the window its addresses are forgotten unless seen since, so
the table holds the window's addresses, not every address ever shipped to.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from datetime import date, timedelta
from typing import Any

import orjson

from worker.domain import risk
from worker.domain.notification import Alert


class AddressBook:
    def __init__(self, table: MutableMapping[bytes, bytes], rules: risk.Risk) -> None:
        self.table, self.rules = table, rules
        self.days_kept = math.ceil(rules.window_hours / 24) + 1

    def seen(self, partition: int, sighting: risk.Sighting) -> Alert | None:
        entry, alert = risk.seen(self._get(sighting.address), sighting, self.rules)
        self._put(sighting.address, entry)
        self._index(partition, sighting.address, sighting.at[:10])
        return alert

    def _index(self, partition: int, address: str, day: str) -> None:
        days_key = f"days|{partition}"
        days = sorted({*(self._get(days_key) or []), day})
        listed = self._get(f"day|{partition}|{day}") or []
        if address not in listed:
            self._put(f"day|{partition}|{day}", [*listed, address])
        first = (date.fromisoformat(days[-1]) - timedelta(days=self.days_kept - 1)).isoformat()
        for old in [d for d in days if d < first]:
            for stale in self._get(f"day|{partition}|{old}") or []:
                entry = self._get(stale)
                if entry is not None and entry["last"][:10] < first:
                    self.table.pop(stale.encode(), None)
            self.table.pop(f"day|{partition}|{old}".encode(), None)
        self._put(days_key, [d for d in days if d >= first])

    def _get(self, key: str) -> Any:
        raw = self.table.get(key.encode())
        return orjson.loads(raw) if raw is not None else None

    def _put(self, key: str, value: Any) -> None:
        self.table[key.encode()] = orjson.dumps(value)
