"""The faust-streaming fixes the worker's at-least-once guarantee depends on, and the fetcher's wait."""

import asyncio
from types import SimpleNamespace

from aiokafka.consumer.fetcher import Fetcher
from faust.types import TP

from worker import faust_fixes, metrics


def consumer(generation: int = 2, flowing: bool = True, frontier: dict | None = None) -> SimpleNamespace:
    flow = SimpleNamespace(is_active=lambda: flowing)
    return SimpleNamespace(app=SimpleNamespace(consumer_generation_id=generation, flow_control=flow),
                           frontier=frontier if frontier is not None else {}, early=set(), handled=0,
                           frontier_generation=generation)


def read(offset: int, follows: int | None = None, generation: int = 2, tp: TP = TP("orders", 0)):
    return SimpleNamespace(generation_id=generation, tp=tp, offset=offset,
                           follows=offset if follows is None else follows)


def test_only_messages_of_the_current_generation_with_the_flow_on_are_acknowledged(monkeypatch):
    acked = []
    monkeypatch.setattr(faust_fixes, "_faust_ack", lambda self, message: acked.append(message) or True)
    tp = TP("orders", 0)
    old, current = read(6, generation=1), read(6)
    it = consumer(frontier={tp: 6})
    assert faust_fixes._ack(it, old) is False  # fetched before the rebalance: read again
    assert it.frontier == {tp: 6} and it.early == {tp}
    assert faust_fixes._ack(consumer(flowing=False, frontier={tp: 6}), current) is False  # mid-rebalance
    assert faust_fixes._ack(it, current) is True
    assert acked == [current] and it.frontier == {tp: 7}


def test_each_partition_is_handled_strictly_in_offset_order(monkeypatch):
    # Handled past a skipped batch, an order's shipment came before its creation.
    monkeypatch.setattr(faust_fixes, "_faust_ack", lambda self, message: True)
    tp, other = TP("orders", 0), TP("orders", 1)
    it = consumer(frontier={tp: 5, other: 0})
    assert faust_fixes.in_turn(it, read(5)) and faust_fixes._ack(it, read(5)) is True
    # 6 went missing with a queue Faust emptied; 7 comes: it waits, and says so.
    assert not faust_fixes.in_turn(it, read(7)) and faust_fixes._ack(it, read(7)) is False
    assert it.early == {tp} and it.frontier[tp] == 6
    assert faust_fixes.in_turn(it, read(0, tp=other))  # its own turn
    # Read again from 6 (fix 7's watch): 6 and 7 in order, a late copy of 5 is left alone.
    assert not faust_fixes.in_turn(it, read(5)) and faust_fixes._ack(it, read(5)) is False
    for offset in (6, 7):
        assert faust_fixes.in_turn(it, read(offset)) and faust_fixes._ack(it, read(offset)) is True
    assert it.frontier[tp] == 8


def test_where_the_log_holds_no_record_the_next_one_is_in_turn(monkeypatch):
    # Compaction and transaction markers leave offsets without a record: aiokafka's fetch
    # went past them before the record it gives, whenever that fetch was made.
    monkeypatch.setattr(faust_fixes, "_faust_ack", lambda self, message: True)
    tp = TP("preferences", 0)
    it = consumer(frontier={tp: 10})
    assert faust_fixes.in_turn(it, read(14, follows=10, tp=tp)) and faust_fixes._ack(it, read(14, follows=10, tp=tp))
    assert it.frontier[tp] == 15
    # A record after a gap that began past the frontier: 15 or 16 are still to come.
    assert not faust_fixes.in_turn(it, read(20, follows=17, tp=tp))


def test_nothing_is_in_turn_until_the_rebalances_seek_has_set_the_frontier(monkeypatch):
    # Faust resumes the partitions a rebalance gave before it seeks them: what is fetched
    # meanwhile was judged by the last seek's frontier, none for a partition new here, so
    # an order's delivery scan was handled before its out-for-delivery one.
    monkeypatch.setattr(faust_fixes, "_faust_ack", lambda self, message: True)
    given, kept = TP("tracking", 3), TP("tracking", 1)
    it = consumer(generation=3, frontier={kept: 80})
    it.frontier_generation = 2  # the seek of the generation before
    for message in (read(851, generation=3, tp=given), read(80, generation=3, tp=kept)):
        assert not faust_fixes.in_turn(it, message) and faust_fixes._ack(it, message) is False
    it.frontier, it.frontier_generation = {given: 794, kept: 80}, 3  # this generation's seek
    assert faust_fixes.in_turn(it, read(794, generation=3, tp=given))
    assert not faust_fixes.in_turn(it, read(851, generation=3, tp=given))


async def test_a_seek_overtaken_by_the_next_rebalance_sets_no_frontier(monkeypatch):
    it = committing(None, None, [])
    it.early = set()
    it.app = SimpleNamespace(tables=SimpleNamespace(changelog_topics=set()), consumer_generation_id=4)
    it.assignment = lambda: {TP("orders", 0)}

    async def overtaken(self):
        self.app.consumer_generation_id = 5

    monkeypatch.setattr(faust_fixes, "_faust_perform_seek", overtaken)
    await faust_fixes._perform_seek(it)
    assert it.frontier_generation is None  # generation 5 seeks for itself


def test_the_records_aiokafka_gives_say_where_its_fetch_stood_before_them():
    from aiokafka.consumer.fetcher import PartitionRecords

    faust_fixes.apply()
    fetch = SimpleNamespace(next_fetch_offset=10, _key_deserializer=None, _value_deserializer=None)
    tp = TP("orders", 3)
    record = PartitionRecords._consumer_record(
        fetch, tp, SimpleNamespace(offset=14, key=None, value=b"{}", timestamp=0, timestamp_type=0,
                                   checksum=None, headers=[]))
    assert (record.offset, record.follows) == (14, 10)
    assert faust_fixes.FETCHED[tp] == 15


def committing(committed: int | None, frontier: int | None, acked: list[int]) -> SimpleNamespace:
    tp = TP("orders", 0)
    return SimpleNamespace(tp=tp, _acked={tp: acked}, _acked_index={tp: set(acked)},
                           _committed_offset={tp: committed},
                           frontier={} if frontier is None else {tp: frontier})


def test_a_partition_is_committed_up_to_its_frontier_and_never_past_it(monkeypatch):
    monkeypatch.setattr(faust_fixes, "_faust_new_offset", lambda self, tp: max(self._acked[tp]) + 1)
    # Faust itself lets one missing offset at the head through, and any number before a first commit.
    for held in (committing(10, 10, [11, 12]), committing(None, 0, [3, 4])):
        assert faust_fixes._new_offset(held, held.tp) is None
    in_order = committing(10, 12, [10, 11])
    assert faust_fixes._new_offset(in_order, in_order.tp) == 12
    assert in_order._acked == {in_order.tp: []} and in_order._acked_index == {in_order.tp: set()}
    changelog = committing(3, None, [3, 4])  # not handled by a stage: Faust's own reckoning
    assert faust_fixes._new_offset(changelog, changelog.tp) == 5


async def test_a_rebalance_starts_every_stream_partition_held_from_its_committed_offset(monkeypatch):
    async def faust_seek(self):
        self._committed_offset.update({TP("orders", 0): 40, TP("orders-changelog", 0): 9})

    monkeypatch.setattr(faust_fixes, "_faust_perform_seek", faust_seek)
    it = committing(None, 55, [])
    it.early = {TP("orders", 3)}
    it.app = SimpleNamespace(tables=SimpleNamespace(changelog_topics={"orders-changelog"}),
                             consumer_generation_id=7)
    it.assignment = lambda: {TP("orders", 0), TP("orders", 1), TP("orders-changelog", 0)}
    await faust_fixes._perform_seek(it)
    assert it.frontier == {TP("orders", 0): 40, TP("orders", 1): 0} and it.early == set()
    assert it.frontier_generation == 7


def test_the_fetch_loop_never_sees_a_read_mark_so_drops_nothing():
    marks = faust_fixes._NoReadMark()
    marks["orders-0"] = 41
    assert marks["orders-0"] is None


async def test_a_flush_waits_for_the_whole_buffer_and_the_message_in_hand(monkeypatch):
    # Faust's gives up after one slow message, and counts one taken out of the buffer but
    # still blocked on its way into aiokafka as gone.
    import asyncio

    handed: list[str] = []
    aiokafka_full = asyncio.Event()

    async def slow_hand_over(self, fut):
        await aiokafka_full.wait()
        handed.append(fut)

    monkeypatch.setattr(faust_fixes, "_faust_send_pending", slow_hand_over)
    buffer = SimpleNamespace(size=0, message_sent=asyncio.Event())

    async def hand_over(fut):
        await faust_fixes._send_pending(buffer, fut)
        buffer.message_sent.set()

    sending = asyncio.create_task(hand_over("changelog record"))
    await asyncio.sleep(0)
    flushing = asyncio.create_task(faust_fixes._flush(buffer))
    await asyncio.sleep(0.25)
    assert not flushing.done()  # the buffer is empty, but a record is still in hand
    aiokafka_full.set()
    await asyncio.wait_for(flushing, 1)
    await sending
    assert handed == ["changelog record"]


async def test_after_a_rebalance_a_stream_partition_never_committed_is_read_from_its_beginning(monkeypatch):
    # aiokafka's seek_to_committed leaves such a partition after the events fetched (and
    # skipped) before the rebalance: they would never be handled.
    committed = {TP("intents", 3): None, TP("intents", 1): 0, TP("intents", 2): 57,
                 TP("app-orders-changelog", 3): None}

    async def faust_seek(self):
        return committed

    sought = []

    async def call_thread(method, *partitions):
        return method(*partitions)

    aiokafka_consumer = SimpleNamespace(seek_to_beginning=lambda *tps: sought.extend(tps))
    thread = SimpleNamespace(
        app=SimpleNamespace(tables=SimpleNamespace(changelog_topics={"app-orders-changelog"}),
                            conf=SimpleNamespace(consumer_auto_offset_reset="earliest")),
        call_thread=call_thread, _ensure_consumer=lambda: aiokafka_consumer)
    monkeypatch.setattr(faust_fixes, "_faust_seek_to_committed", faust_seek)
    assert await faust_fixes._seek_to_committed(thread) is committed
    assert sorted((tp.topic, tp.partition) for tp in sought) == [("intents", 1), ("intents", 3)]


async def test_after_recovery_the_memory_store_keeps_what_it_holds_as_standby_or_was_just_given():
    # Faust's store dropped every key of a partition not active in the recovery that ended:
    # a standby copy lost what it had read, and a partition given back meanwhile lost what
    # the next recovery had just read for it.
    changelog = "app-orders-changelog"
    assignor = SimpleNamespace(assigned_actives=lambda: {TP(changelog, 0), TP(changelog, 2)},
                               assigned_standbys=lambda: set())
    store = SimpleNamespace(app=SimpleNamespace(assignor=assignor),
                            data={b"a": b"0", b"b": b"1", b"c": b"2", b"d": b"3"},
                            _key_partition={b"a": 0, b"b": 1, b"c": 2, b"d": 3})
    await faust_fixes._drop_unheld_partitions(store, {TP(changelog, 0)}, {TP(changelog, 1)})
    assert store.data == {b"a": b"0", b"b": b"1", b"c": b"2"}  # 3 is held in no way here
    assert store._key_partition == {b"a": 0, b"b": 1, b"c": 2}


class Worker:
    """As much of a Faust app as the frontier watch reads: one intents partition handled
    up to ``frontier``, with records fetched up to ``fetched``."""

    def __init__(self, frontier: int, fetched: int, early: bool = False) -> None:
        self.tp = TP("intents", 1)
        self.seeks: list[dict] = []
        self.rebalancing = self.in_recovery = False
        self.consumer_generation_id = 2
        self.flow_control = SimpleNamespace(is_active=lambda: True)

        async def seek_wait(partitions):
            self.seeks.append(partitions)

        async def earliest_offsets(tp):
            return {tp: self.log_start}

        self.log_start = 0
        faust_fixes.FETCHED[self.tp] = fetched
        async def perform_seek():
            self.seeks.append("committed")
            self.consumer.frontier_generation = self.consumer_generation_id

        self.consumer = SimpleNamespace(frontier={self.tp: frontier}, early={self.tp} if early else set(),
                                        flow_active=True, seek_wait=seek_wait, perform_seek=perform_seek,
                                        earliest_offsets=earliest_offsets, handled=0,
                                        frontier_generation=2)


def rereads(tp, reason):
    return metrics.registry.get_sample_value(
        "notifier_partition_rereads_total", {"topic": tp.topic, "reason": reason}) or 0


async def test_a_partition_standing_after_an_early_record_is_read_again_from_its_frontier():
    watch, app = faust_fixes.FrontierWatch(), Worker(6, 20, early=True)
    before = rereads(app.tp, "later_came_first")
    await watch.look(app)
    assert app.seeks == []  # once may be the stage between two steps
    await watch.look(app)
    assert app.seeks == [{app.tp: 6}] and app.consumer.early == set()
    assert rereads(app.tp, "later_came_first") == before + 1  # what SRE's alert counts
    app.consumer.early.add(app.tp)  # a copy fetched before the seek still comes early
    for _ in range(faust_fixes.FrontierWatch.AGAIN_AFTER - 1):
        await watch.look(app)
    assert app.seeks == [{app.tp: 6}]  # given time to come round
    await watch.look(app)
    assert app.seeks == [{app.tp: 6}, {app.tp: 6}]  # still standing: read again


async def test_a_partition_whose_frontier_retention_deleted_is_read_from_the_logs_start():
    watch, app = faust_fixes.FrontierWatch(), Worker(6, 60, early=True)
    app.log_start = 40
    for _ in range(faust_fixes.FrontierWatch.AFTER_EARLY):
        await watch.look(app)
    assert app.seeks == [{app.tp: 40}] and app.consumer.frontier[app.tp] == 40


async def test_records_fetched_that_never_came_are_read_again_once_nothing_is_handled():
    """Nothing came early: what was fetched was dropped with a queue (Faust empties them at
    a rebalance), or is slow behind other partitions' records in one."""
    watch, app = faust_fixes.FrontierWatch(), Worker(6, 20)
    for _ in range(faust_fixes.FrontierWatch.AFTER_BUSY - 1):
        app.consumer.handled += 5  # the stage is busy with other partitions
        await watch.look(app)
    assert app.seeks == []
    app.consumer.handled += 5
    await watch.look(app)
    assert app.seeks == [{app.tp: 6}]

    watch, idle = faust_fixes.FrontierWatch(), Worker(6, 20)
    for _ in range(faust_fixes.FrontierWatch.AFTER_IDLE):
        await watch.look(idle)
    assert idle.seeks == []  # the first look has nothing to compare with
    await watch.look(idle)
    assert idle.seeks == [{idle.tp: 6}]


async def test_partitions_moving_handled_to_the_end_or_mid_rebalance_are_left_alone():
    watch = faust_fixes.FrontierWatch()
    moving, at_end, rebalancing = Worker(6, 20, early=True), Worker(20, 20), Worker(6, 20, early=True)
    rebalancing.rebalancing = True
    for app in (moving, at_end, rebalancing):
        for look in range(faust_fixes.FrontierWatch.AFTER_BUSY + 1):
            if app is moving:
                app.consumer.frontier[app.tp] += 1
            await watch.look(app)
        assert app.seeks == []


async def test_a_generation_whose_seek_set_no_frontier_is_sought_by_the_watch():
    watch, app = faust_fixes.FrontierWatch(), Worker(6, 6)
    app.consumer_generation_id = 3  # its seek was overtaken, and no rebalance followed
    await watch.look(app)
    assert app.seeks == ["committed"] and app.consumer.frontier_generation == 3
    await watch.look(app)
    assert app.seeks == ["committed"]


def test_streams_acknowledge_through_the_consumer_so_the_fixes_see_every_acknowledgement():
    # Faust's compiled iterator inlines its own copy of Consumer.ack (fix 9).
    import faust

    faust_fixes.apply()
    app = faust.App("fix-9", broker="kafka://127.0.0.1:1", store="memory://")
    iterator = app.stream(app.channel()).__aiter__()
    assert iterator.__qualname__ == "Stream._py_aiter"
    iterator.aclose().close()  # never started: nothing to wait for


async def test_a_fetcher_holds_back_its_brokers_fetches_20_ms_at_most_while_fetched_records_wait():
    # aiokafka's 0.1 s held a new input behind another partition's unread records, at each
    # stage: one notification in forty took 175 ms at 20 events a second (fix 11).
    faust_fixes.apply()
    loop = asyncio.get_running_loop()
    client = SimpleNamespace(_loop=loop, _metadata_max_age_ms=300_000)
    subscriptions = SimpleNamespace(register_fetch_waiters=lambda waiters: None, subscription=None,
                                    wait_for_assignment=loop.create_future)
    fetcher = Fetcher(client, subscriptions)
    try:
        assert fetcher._prefetch_backoff == 0.02
    finally:
        fetcher._fetch_task.cancel()
        await asyncio.gather(fetcher._fetch_task, return_exceptions=True)
