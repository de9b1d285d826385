"""Addresses' recent orders kept in a table, forgotten once they leave the window.

``<fingerprint>`` → the address's entry (:func:`worker.domain.risk.seen`), and, per
partition, ``days|<p>`` → the days held, each with how many pieces its index has, and
``day|<p>|<YYYY-MM-DD>`` (then ``…|1``, ``…|2``) → the addresses seen that day, ``PIECE``
at the most in each. When a day leaves the window its addresses are forgotten unless seen
since, so the table holds the window's addresses, not every address ever shipped to.

A day's index grows by pieces: one list rewritten with every new address cost a sale day
quadratic time and changelog bytes (40,000 addresses on one partition in a day: 51 s of
CPU, and a last record of 1.3 MB, over Kafka's default limit of 1 MB).
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from datetime import date, timedelta
from typing import Any

import orjson

from worker.domain import risk
from worker.domain.notification import Alert

PIECE = 100  # addresses in one key of a day's index: about 3 KB


class AddressBook:
    def __init__(self, table: MutableMapping[bytes, bytes], rules: risk.Risk) -> None:
        self.table, self.rules = table, rules
        self.days_kept = math.ceil(rules.window_hours / 24) + 1

    def seen(self, partition: int, sighting: risk.Sighting) -> Alert | None:
        before = self._get(sighting.address)
        entry, alert = risk.seen(before, sighting, self.rules)
        self._put(sighting.address, entry)
        day = sighting.at[:10]
        # An entry's "last" is its latest order's, listed under that order's day.
        if before is None or before["last"][:10] != day:
            self._index(partition, sighting.address, day)
        return alert

    def _index(self, partition: int, address: str, day: str) -> None:
        days_key = f"days|{partition}"
        days = self._days(days_key)
        pieces = days.setdefault(day, 1)
        last = _piece(partition, day, pieces - 1)
        listed = self._get(last) or []
        if address not in listed:
            if len(listed) >= PIECE:
                days[day] = pieces + 1
                last, listed = _piece(partition, day, pieces), []
            self._put(last, [*listed, address])
        first = (date.fromisoformat(max(days)) - timedelta(days=self.days_kept - 1)).isoformat()
        for old in [d for d in days if d < first]:
            for number in range(days.pop(old)):
                key = _piece(partition, old, number)
                for stale in self._get(key) or []:
                    entry = self._get(stale)
                    if entry is not None and entry["last"][:10] < first:
                        self.table.pop(stale.encode(), None)
                self.table.pop(key.encode(), None)
        self._put(days_key, days)

    def _days(self, key: str) -> dict[str, int]:
        """The days held and their index's pieces (a list of days, one piece each, before
        the index came in pieces)."""
        days = self._get(key) or {}
        return dict.fromkeys(days, 1) if isinstance(days, list) else days

    def _get(self, key: str) -> Any:
        raw = self.table.get(key.encode())
        return orjson.loads(raw) if raw is not None else None

    def _put(self, key: str, value: Any) -> None:
        self.table[key.encode()] = orjson.dumps(value)


def _piece(partition: int, day: str, number: int) -> str:
    return f"day|{partition}|{day}" + (f"|{number}" if number else "")
