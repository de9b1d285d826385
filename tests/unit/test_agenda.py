from datetime import UTC, datetime, timedelta

from worker.agenda import Agenda

T0 = datetime(2026, 11, 2, 10, tzinfo=UTC)


def test_due_keys_come_out_once_oldest_first_and_later_ones_stay():
    agenda = Agenda({}, "wake")
    agenda.add(0, T0 + timedelta(minutes=5), "b")
    agenda.add(0, T0, "a")
    agenda.add(0, T0, "a")
    agenda.add(0, T0 + timedelta(days=2), "c")
    assert agenda.pop_due(0, T0 + timedelta(minutes=10)) == ["a", "b"]
    assert agenda.pop_due(0, T0 + timedelta(minutes=10)) == []
    assert agenda.pop_due(0, T0 + timedelta(days=30)) == ["c"]


def test_a_past_due_time_comes_out_at_the_next_look_and_partitions_are_apart():
    agenda = Agenda({}, "wake")
    agenda.pop_due(0, T0)
    agenda.add(0, T0 - timedelta(hours=5), "late")
    agenda.add(1, T0, "other")
    assert agenda.pop_due(0, T0) == ["late"]
    assert agenda.pop_due(1, T0) == ["other"]
