"""The pure decision code gives the same decisions however far reads run ahead of them."""

from __future__ import annotations

from datetime import UTC, datetime

from worker import simulate
from worker.replay import Replay
from worker.settings import Settings
from worker.stream import load_rules

SETTINGS = Settings(clock="event")


def test_decisions_made_after_reading_ahead_are_the_decisions_made_in_time():
    # A worker's pass can come after later records were read: its orders topic lags its
    # tracking topic, or a restart reads again what its state already holds. 5 % of the
    # simulated scans are told hours late, after later scans: none of that may show.
    records = list(simulate.stories(SETTINGS, count=300, seed=9, start=datetime(2026, 11, 9, tzinfo=UTC),
                                    days=7, tick_minutes=30))

    def decided(read_ahead: int) -> tuple[dict[str, str], set[str]]:
        outcome = Replay(load_rules(SETTINGS)).run(records, read_ahead=read_ahead)
        return {i.notification_id: i.kind for i in outcome.intents}, {a.alert_id for a in outcome.alerts}

    in_time, late = decided(0), decided(300)
    assert len(in_time[0]) > 1000
    assert late == in_time
