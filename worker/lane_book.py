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
        # lane -> the day buckets (as saved) its window merged: the next lesson on the lane
        # changes one day, and only the days whose saved bucket differs are merged again.
        self._windows: dict[str, tuple[dict[str, bytes], lanes.Window]] = {}

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
        return {"lane": lane, "window": [first, days[-1] if days else day],
                **self._window(lane, days).figures()}

    def _window(self, lane: str, days: list[str]) -> lanes.Window:
        """The lane's window over ``days``, brought up to date with the table. Checked day by
        day against what it merged, so a bucket written by another worker while the lane's
        partition was away is merged again as well. Taken out while it changes: a window
        left half changed by an error is merged afresh the next time."""
        merged, window = self._windows.pop(lane, None) or ({}, lanes.Window())
        saved = {d: raw for d in days if (raw := self.table.get(f"{lane}|{d}".encode())) is not None}
        for d, raw in merged.items():
            if saved.get(d) != raw:
                window.remove(orjson.loads(raw))
        for d, raw in saved.items():
            if merged.get(d) != raw:
                window.add(orjson.loads(raw))
        self._windows[lane] = saved, window
        return window

    def _days(self, lane: str) -> list[str]:
        return self._get(f"{lane}|days") or []

    def _get(self, key: str) -> Any:
        raw = self.table.get(key.encode())
        return orjson.loads(raw) if raw is not None else None
