from datetime import UTC, datetime, timedelta

import pytest

from worker.wakeups import Wakeups

T0 = datetime(2026, 11, 2, 10, tzinfo=UTC)


def keys(due):
    return [key for _, key in due]


def test_due_keys_come_out_oldest_first_at_their_latest_time_and_later_ones_wait():
    wakeups = Wakeups()
    wakeups.set(0, "b", T0 + timedelta(minutes=5))
    wakeups.set(0, "a", T0 + timedelta(hours=3))
    wakeups.set(0, "a", T0)  # said again, earlier: the earlier holds
    wakeups.set(0, "c", T0 + timedelta(days=2))
    assert wakeups.due(0, T0 + timedelta(minutes=10)) == [
        (T0, "a"), (T0 + timedelta(minutes=5), "b")]
    wakeups.set(0, "a", None)
    wakeups.set(0, "b", T0 + timedelta(days=1))
    assert wakeups.due(0, T0 + timedelta(hours=5)) == []
    assert keys(wakeups.due(0, T0 + timedelta(days=30))) == ["b", "c"]


def test_partitions_are_apart_and_a_stamp_is_a_time():
    wakeups = Wakeups()
    wakeups.set(0, "late", (T0 - timedelta(hours=5)).isoformat())
    wakeups.set(1, "other", T0)
    assert wakeups.due(0, T0) == [(T0 - timedelta(hours=5), "late")]
    assert wakeups.due(1, T0) == [(T0, "other")]
    assert wakeups.due(2, T0) == []


def test_the_index_is_built_from_its_source_when_first_asked_and_again_after_a_clear():
    held = [(0, "a", T0.isoformat()), (1, "b", None), (0, "c", (T0 + timedelta(days=1)).isoformat())]
    reads = []
    wakeups = Wakeups(lambda: reads.append(1) or held)
    assert reads == []
    assert keys(wakeups.due(0, T0 + timedelta(days=2))) == ["a", "c"]
    assert wakeups.due(1, T0 + timedelta(days=2)) == []  # nothing due: never woken
    held[0] = (0, "a", (T0 + timedelta(days=3)).isoformat())  # the table moved on elsewhere
    wakeups.clear()  # a rebalance
    assert keys(wakeups.due(0, T0 + timedelta(days=2))) == ["c"]
    assert reads == [1, 1]


async def test_drain_visits_in_time_order_and_follows_wake_ups_within_the_pass():
    wakeups = Wakeups()
    wakeups.set(0, "b", T0 + timedelta(minutes=30))
    wakeups.set(0, "a", T0)
    visits = []

    async def visit(at, key):
        visits.append((at - T0, key))
        # "a" comes due again 40 minutes on (inside this pass), then a day on (kept).
        return {"a": T0 + timedelta(minutes=40), "b": None}[key] if at == T0 or key == "b" else (
            T0 + timedelta(days=1))

    await wakeups.drain(0, T0 + timedelta(hours=1), visit)
    assert visits == [(timedelta(0), "a"), (timedelta(minutes=30), "b"),
                      (timedelta(minutes=40), "a")]
    assert wakeups.due(0, T0 + timedelta(days=2)) == [(T0 + timedelta(days=1), "a")]


async def test_a_pass_cut_short_leaves_every_key_due_for_the_next_look():
    # A worker stopped in the middle of a pass: nothing it was due to visit may be lost,
    # neither the keys it never got to nor the one it was visiting, nor those it did.
    wakeups = Wakeups()
    for n, key in enumerate(("a", "b", "c")):
        wakeups.set(0, key, T0 + timedelta(minutes=n))
    visited = []

    async def visit(at, key):
        if key == "b":
            raise RuntimeError("stopped mid-pass")
        visited.append(key)
        return T0 + timedelta(days=1)

    with pytest.raises(RuntimeError):
        await wakeups.drain(0, T0 + timedelta(hours=1), visit)
    assert visited == ["a"]
    assert keys(wakeups.due(0, T0 + timedelta(hours=1))) == ["a", "b", "c"]


async def test_the_index_changes_only_after_the_pass_is_settled():
    wakeups = Wakeups()
    wakeups.set(0, "a", T0)
    seen_at_settle = []

    async def settle():
        seen_at_settle.append(keys(wakeups.due(0, T0)))

    async def visit(at, key):
        return T0 + timedelta(days=1)

    await wakeups.drain(0, T0, visit, settle=settle)
    assert seen_at_settle == [["a"]]  # still due while the caller waits for its acks
    assert wakeups.due(0, T0) == []
    assert wakeups.due(0, T0 + timedelta(days=2)) == [(T0 + timedelta(days=1), "a")]


def test_keys_said_again_and_again_do_not_grow_the_index_without_bound():
    wakeups = Wakeups()
    for n in range(20_000):  # five orders, each told of a new time again and again
        wakeups.set(0, f"o{n % 5}", T0 + timedelta(days=90, minutes=n))
    assert len(wakeups._queue[0]) < 200
    assert [at - T0 for at, _ in wakeups.due(0, T0 + timedelta(days=200))] == [
        timedelta(days=90, minutes=n) for n in range(19_995, 20_000)]


def test_any_due_looks_past_entries_whose_keys_moved_on():
    wakeups = Wakeups()
    wakeups.set(0, "SO-1", "2026-11-02T02:00:00+00:00")
    wakeups.set(0, "SO-1", "2026-11-05T02:00:00+00:00")  # moved later: its first entry is stale
    assert not wakeups.any_due(0, datetime(2026, 11, 3, tzinfo=UTC))
    assert wakeups.any_due(0, datetime(2026, 11, 5, 2, tzinfo=UTC))
    wakeups.set(0, "SO-1", None)
    assert not wakeups.any_due(0, datetime(2026, 12, 1, tzinfo=UTC)) and not wakeups.any_due(1, datetime(2026, 12, 1, tzinfo=UTC))


def test_an_index_whose_reading_failed_is_read_whole_the_next_time():
    reads = []

    def source():
        reads.append(1)
        yield 0, "a", T0
        if len(reads) == 1:
            raise RuntimeError("the table could not be read to its end")
        yield 0, "b", T0

    wakeups = Wakeups(source)
    with pytest.raises(RuntimeError):
        wakeups.due(0, T0)
    assert keys(wakeups.due(0, T0)) == ["a", "b"]  # "b" is not left unwoken


def test_with_a_limit_the_index_holds_the_soonest_and_reads_its_source_again_at_the_horizon():
    # The RocksDB store: the states are not all in memory, so neither are their wake-ups.
    table = {f"o{n}": T0 + timedelta(hours=n) for n in range(10)}
    reads = []

    def source():
        reads.append(1)
        return [(0, key, due) for key, due in table.items()]

    wakeups = Wakeups(source, limit=3)
    # Those due now, and the next three: o5 on stay in the table.
    assert keys(wakeups.due(0, T0 + timedelta(hours=1))) == ["o0", "o1"]
    assert wakeups.horizon == int((T0 + timedelta(hours=5)).timestamp())
    assert sum(len(at) for at in wakeups._at.values()) == 5 and len(reads) == 1
    wakeups.set(0, "o9", T0 + timedelta(minutes=30))  # moved earlier: held now
    wakeups.set(0, "o1", T0 + timedelta(hours=8))  # moved past the horizon: left to the table
    table.update(o9=T0 + timedelta(minutes=30), o1=T0 + timedelta(hours=8))
    assert keys(wakeups.due(0, T0 + timedelta(hours=2))) == ["o0", "o9", "o2"]
    assert len(reads) == 1
    # Time reaches the horizon: read again, and nothing due in between is missed.
    for key in ("o0", "o9", "o2"):
        del table[key]
        wakeups.set(0, key, None)
    assert keys(wakeups.due(0, T0 + timedelta(hours=4))) == ["o3", "o4"] and len(reads) == 1
    # Time jumps a day: read again, and everything due by then comes, however many.
    assert keys(wakeups.due(0, T0 + timedelta(days=1))) == ["o3", "o4", "o5", "o6", "o7", "o1", "o8"]
    assert len(reads) == 2 and wakeups.horizon is None


def test_a_limit_the_table_never_reaches_reads_it_once():
    wakeups = Wakeups(lambda: [(0, "a", T0), (1, "b", T0 + timedelta(days=3)), (0, "c", None)], limit=5)
    assert wakeups.due(0, T0 + timedelta(days=30)) == [(T0, "a")] and wakeups.horizon is None
    assert keys(wakeups.due(1, T0 + timedelta(days=30))) == ["b"]
