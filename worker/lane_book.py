"""Lanes' day buckets kept in a table: bounded by the window, whatever the traffic.

``<lane>|<YYYY-MM-DD>`` → the day's histograms (orjson), and ``<lane>|days`` → the days
held. Learning a lesson adds it to its day, forgets the days that left the window, and
answers the lane's figures over the window. The table is any byte mapping: a Faust
table in the worker, a dict in tests.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import date, timedelta
from typing import Any

import orjson

from worker.domain import lanes
from worker.domain.rules import Prediction


class LaneBook:
    def __init__(self, table: MutableMapping[bytes, bytes], rules: Prediction) -> None:
        self.table, self.rules, self.window_days = table, rules, rules.window_days

    def stalled(self, lane: str, at: str) -> tuple[dict[str, Any], bool]:
        """Count a stall on ``lane``; answers the lane's figures and whether an incident
        started with it."""
        def count(bucket: dict[str, Any]) -> None:
            bucket.setdefault("stalls", []).append(at)

        figures = self._add(lane, at[:10], count)
        days = [self._get(f"{lane}|{d}") or {} for d in self._days(lane)]
        found = lanes.incident(days, at, self.rules)
        known = self._get(f"{lane}|incident")
        ongoing = known is not None and lanes.in_incident([{"incident": known}], at, self.rules)
        started = found is not None and not ongoing
        if started:
            known = found
        elif found is not None and known is not None:
            known = {**known, "last": at}  # still far above its baseline: the incident goes on
        if found is not None:
            self.table[f"{lane}|incident".encode()] = orjson.dumps(known)
        if known:
            figures["incident"] = known
        return figures, started

    def learn(self, lane: str, day: str, journey: dict[str, Any]) -> dict[str, Any]:
        """Add one parcel's journey to ``lane`` on ``day``; answers the lane's figures."""
        figures = self._add(lane, day, lambda bucket: lanes.learn(bucket, journey))
        if known := self._get(f"{lane}|incident"):
            figures["incident"] = known
        return figures

    def _add(self, lane: str, day: str, change: Any) -> dict[str, Any]:
        days = self._days(lane)
        first = (date.fromisoformat(max([day, *days])) - timedelta(days=self.window_days - 1)).isoformat()
        if day >= first:
            bucket = self._get(f"{lane}|{day}") or {}
            change(bucket)
            self.table[f"{lane}|{day}".encode()] = orjson.dumps(bucket)
            days = sorted({*days, day})
        for old in [d for d in days if d < first]:
            self.table.pop(f"{lane}|{old}".encode(), None)
        days = [d for d in days if d >= first]
        self.table[f"{lane}|days".encode()] = orjson.dumps(days)
        figures = lanes.figures([self._get(f"{lane}|{d}") or {} for d in days])
        return {"lane": lane, "window": [first, days[-1] if days else day], **figures}

    def _days(self, lane: str) -> list[str]:
        return self._get(f"{lane}|days") or []

    def _get(self, key: str) -> Any:
        raw = self.table.get(key.encode())
        return orjson.loads(raw) if raw is not None else None
