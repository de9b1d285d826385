"""The senders' ledger: the notifications that have an outcome, for as long as a command
for one of them can come again.

A command is redelivered minutes after its first try at the most, and expires within days:
``days`` of outcomes are all a command can meet again. A fresh process reads that many from
``notifications.sent``; a process that has run for months forgets the older ones in the same
way, so its memory stays that of ``days`` of outcomes.
"""

from __future__ import annotations

from collections import OrderedDict


class Ledger:
    def __init__(self, days: float) -> None:
        self.keep = days * 86400
        # id -> when its outcome was written (epoch seconds), the oldest first
        self._at: OrderedDict[str, float] = OrderedDict()

    def add(self, notification_id: str, at: float) -> None:
        """One more outcome, written at ``at``; outcomes older than ``days`` before it go."""
        self._at[notification_id] = at
        self._at.move_to_end(notification_id)
        horizon = at - self.keep
        while self._at and next(iter(self._at.values())) < horizon:
            self._at.popitem(last=False)

    def __contains__(self, notification_id: object) -> bool:
        return notification_id in self._at

    def __len__(self) -> int:
        return len(self._at)
