from datetime import UTC, datetime, timedelta

import pytest

from worker.agenda import Agenda

T0 = datetime(2026, 11, 2, 10, tzinfo=UTC)


def test_due_keys_come_out_once_oldest_first_and_later_ones_stay():
    agenda = Agenda({}, "wake")
    agenda.add(0, T0 + timedelta(minutes=5), "b")
    agenda.add(0, T0, "a")
    agenda.add(0, T0, "a")
    agenda.add(0, T0 + timedelta(days=2), "c")
    assert agenda.pop_due(0, T0 + timedelta(minutes=10)) == [
        (T0, "a"), (T0 + timedelta(minutes=5), "b")]
    assert agenda.pop_due(0, T0 + timedelta(minutes=10)) == []
    assert agenda.pop_due(0, T0 + timedelta(days=30)) == [(T0 + timedelta(days=2), "c")]


def test_a_past_due_time_comes_out_at_the_next_look_and_partitions_are_apart():
    agenda = Agenda({}, "wake")
    agenda.pop_due(0, T0)
    agenda.add(0, T0 - timedelta(hours=5), "late")
    agenda.add(1, T0, "other")
    assert agenda.pop_due(0, T0) == [(T0 - timedelta(hours=5), "late")]
    assert agenda.pop_due(1, T0) == [(T0, "other")]


async def test_drain_visits_in_time_order_and_follows_wake_ups_within_the_pass():
    agenda = Agenda({}, "wake")
    agenda.add(0, T0 + timedelta(minutes=30), "b")
    agenda.add(0, T0, "a")
    visits = []

    async def visit(at, key):
        visits.append((at - T0, key))
        # "a" comes due again 40 minutes on (inside this pass), then a day on (kept).
        return {"a": T0 + timedelta(minutes=40), "b": None}[key] if at == T0 or key == "b" else (
            T0 + timedelta(days=1))

    await agenda.drain(0, T0 + timedelta(hours=1), visit)
    assert visits == [(timedelta(0), "a"), (timedelta(minutes=30), "b"),
                      (timedelta(minutes=40), "a")]
    assert agenda.pop_due(0, T0 + timedelta(days=2)) == [(T0 + timedelta(days=1), "a")]


def test_keys_due_later_in_the_same_minute_stay_for_the_next_look():
    agenda = Agenda({}, "wake")
    agenda.add(0, T0 + timedelta(seconds=10), "early")
    agenda.add(0, T0 + timedelta(seconds=50), "late")
    assert agenda.pop_due(0, T0 + timedelta(seconds=30)) == [(T0 + timedelta(seconds=10), "early")]
    assert agenda.pop_due(0, T0 + timedelta(seconds=50)) == [(T0 + timedelta(seconds=50), "late")]
    assert [k for k in agenda.table if k.split(b"|")[2].isdigit()] == []  # no bucket left


async def test_a_pass_cut_short_leaves_every_key_on_the_agenda_for_the_next_owner():
    # A worker stopped or killed in the middle of a pass: nothing it took off the agenda
    # may be lost, neither the keys it never got to nor the one it was visiting.
    agenda = Agenda({}, "wake")
    for n, key in enumerate(("a", "b", "c")):
        agenda.add(0, T0 + timedelta(minutes=n), key)
    visited = []

    async def visit(at, key):
        if key == "b":
            raise RuntimeError("stopped mid-pass")
        visited.append(key)
        return T0 + timedelta(days=1)

    with pytest.raises(RuntimeError):
        await agenda.drain(0, T0 + timedelta(hours=1), visit)
    assert visited == ["a"]
    assert [key for _, key in agenda.pop_due(0, T0 + timedelta(hours=1))] == ["a", "b", "c"]


async def test_the_agenda_changes_only_after_the_pass_is_settled():
    agenda = Agenda({}, "wake")
    agenda.add(0, T0, "a")
    seen_at_settle = []

    async def settle():
        seen_at_settle.append([key for _, key in agenda.due(0, T0)])

    async def visit(at, key):
        return T0 + timedelta(days=1)

    await agenda.drain(0, T0, visit, settle=settle)
    assert seen_at_settle == [["a"]]  # still there while the caller waits for its acks
    assert agenda.due(0, T0) == []
    assert agenda.pop_due(0, T0 + timedelta(days=2)) == [(T0 + timedelta(days=1), "a")]


def test_a_wake_up_months_ahead_keeps_the_index_small():
    agenda = Agenda({}, "wake")
    for n in range(500):  # an order a few hours apart, each to be forgotten 90 days on
        placed = T0 + timedelta(hours=5 * n)
        agenda.add(0, placed, f"o{n}")
        agenda.add(0, placed + timedelta(days=90), f"o{n}")
    assert max(len(value) for key, value in agenda.table.items() if b"|days" in key or b"|hours|" in key) < 2000
    assert len(agenda.pop_due(0, T0 + timedelta(days=200))) == 500
    assert agenda.table == {}
