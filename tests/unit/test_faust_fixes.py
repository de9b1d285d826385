"""The faust-streaming fixes the worker's at-least-once guarantee depends on."""

from types import SimpleNamespace

from faust.types import TP

from worker import faust_fixes


def consumer(generation: int, flowing: bool = True) -> SimpleNamespace:
    flow = SimpleNamespace(is_active=lambda: flowing)
    return SimpleNamespace(app=SimpleNamespace(consumer_generation_id=generation, flow_control=flow),
                           skipped_offsets={}, _committed_offset={})


def test_only_messages_of_the_current_generation_with_the_flow_on_are_acknowledged(monkeypatch):
    acked = []
    monkeypatch.setattr(faust_fixes, "_faust_ack", lambda self, message: acked.append(message) or True)
    tp = TP("orders", 0)
    old, current = SimpleNamespace(generation_id=1, tp=tp, offset=7), SimpleNamespace(generation_id=2, tp=tp, offset=6)
    it = consumer(2)
    assert faust_fixes._ack(it, old) is False  # fetched before the rebalance: read again
    assert faust_fixes._ack(consumer(2, flowing=False), current) is False  # mid-rebalance
    assert faust_fixes._ack(it, current) is True
    assert acked == [current]
    assert it.skipped_offsets == {tp: {7}}  # remembered until it is read again
    assert faust_fixes._ack(it, SimpleNamespace(generation_id=2, tp=tp, offset=7)) is True
    assert it.skipped_offsets == {tp: set()}


def test_after_a_skipped_offset_the_partition_is_out_of_turn_until_it_is_read_again(monkeypatch):
    # Handled past a skipped batch, an order's shipment came before its creation.
    monkeypatch.setattr(faust_fixes, "_faust_ack", lambda self, message: True)
    tp, other = TP("orders", 0), TP("orders", 1)
    it = consumer(2)

    def read(offset: int, generation: int = 2, where: TP = tp) -> SimpleNamespace:
        return SimpleNamespace(generation_id=generation, tp=where, offset=offset)

    assert faust_fixes._ack(it, read(5)) is True
    assert faust_fixes._ack(it, read(6, generation=1)) is False  # fetched before the rebalance
    assert faust_fixes.out_of_turn(it, read(7)) and faust_fixes._ack(it, read(7)) is False
    assert not faust_fixes.out_of_turn(it, read(3, where=other))  # its own turn
    assert it.skipped_offsets == {tp: {6, 7}}
    # Read again from 6 (fix 7's seek); a copy of 7 fetched before the seek still waits.
    assert faust_fixes.out_of_turn(it, read(7))
    assert not faust_fixes.out_of_turn(it, read(6)) and faust_fixes._ack(it, read(6)) is True
    assert not faust_fixes.out_of_turn(it, read(7)) and faust_fixes._ack(it, read(7)) is True
    assert it.skipped_offsets == {tp: set()}


def committing(committed: int | None, acked: list[int], skipped: set[int]) -> SimpleNamespace:
    tp = TP("orders", 0)
    return SimpleNamespace(tp=tp, _acked={tp: acked}, _committed_offset={tp: committed},
                           skipped_offsets={tp: skipped})


def test_a_commit_never_passes_an_offset_skipped_unprocessed(monkeypatch):
    monkeypatch.setattr(faust_fixes, "_faust_new_offset", lambda self, tp: max(self._acked[tp]) + 1)
    # Faust itself lets one missing offset at the head through, and any number before a first commit.
    for held in (committing(10, [11, 12], {10}), committing(None, [3, 4], {0, 1, 2})):
        assert faust_fixes._new_offset(held, held.tp) is None
    in_order = committing(10, [10, 11], {14})
    assert faust_fixes._new_offset(in_order, in_order.tp) == 12
    handled_since = committing(12, [12], {10})
    assert faust_fixes._new_offset(handled_since, handled_since.tp) == 13
    assert handled_since.skipped_offsets == {handled_since.tp: set()}


async def test_a_seek_forgets_only_what_was_skipped_on_partitions_no_longer_held(monkeypatch):
    # Kept for those held: a fetch made before the seek may still deliver later offsets.
    seeks = []

    async def faust_seek(self):
        seeks.append(self)

    monkeypatch.setattr(faust_fixes, "_faust_perform_seek", faust_seek)
    it = committing(10, [], {10, 11})
    gone = TP("orders", 3)
    it.skipped_offsets[gone] = {4}
    it.assignment = lambda: {it.tp}
    await faust_fixes._perform_seek(it)
    assert seeks == [it] and it.skipped_offsets == {it.tp: {10, 11}}
    # Committed past since (read again and handled elsewhere first): in turn again.
    it._committed_offset[it.tp] = 12
    assert not faust_fixes.out_of_turn(it, SimpleNamespace(tp=it.tp, offset=12))


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
    """As much of a Faust app as the watch of skipped events reads: one intents partition
    committed up to ``committed``, with the acknowledged offsets after it."""

    def __init__(self, committed: int, acked: list[int], topic: str = "intents",
                 skipped: set[int] | None = None) -> None:
        self.tp = TP(topic, 1)
        self.seeks: list[dict] = []
        self.rebalancing = self.in_recovery = False
        self.flow_control = SimpleNamespace(is_active=lambda: True)
        self.tables = SimpleNamespace(changelog_topics={"notifier-orders-changelog"})

        async def seek_wait(partitions):
            self.seeks.append(partitions)

        self.consumer = SimpleNamespace(_acked={self.tp: acked}, _committed_offset={self.tp: committed},
                                        flow_active=True, seek_wait=seek_wait, _commit_fut=None,
                                        assignment=lambda: {self.tp},
                                        skipped_offsets={self.tp: skipped} if skipped else {})


async def test_a_partition_waiting_before_skipped_events_is_read_again_from_its_commit():
    watch, app = faust_fixes.SkippedWatch(compacted=frozenset({"preferences"})), Worker(6, [11, 12, 13])
    await watch.look(app)
    assert app.seeks == []  # once may be the commit loop between two steps
    await watch.look(app)
    assert app.seeks == [{app.tp: 6}]
    for _ in range(faust_fixes.SkippedWatch.AGAIN_AFTER - 1):
        await watch.look(app)
    assert app.seeks == [{app.tp: 6}]  # given time to come round
    await watch.look(app)
    assert app.seeks == [{app.tp: 6}, {app.tp: 6}]  # still waiting: read again


async def test_a_partition_whose_every_event_left_was_skipped_is_read_again_from_the_first():
    """Nothing acknowledged after the commit, so no gap shows: only the skipped offsets tell."""
    watch, app = faust_fixes.SkippedWatch(compacted=frozenset()), Worker(6, [], skipped={8, 9, 10})
    app.consumer._acked = {}
    await watch.look(app)
    assert app.seeks == []
    await watch.look(app)
    assert app.seeks == [{app.tp: 8}]  # 6 and 7 were handled, and are being acknowledged
    # Kept until read again: a copy of 9 fetched before the seek must not come first.
    assert app.consumer.skipped_offsets == {app.tp: {8, 9, 10}}
    for _ in range(3):
        await watch.look(app)
    assert app.seeks == [{app.tp: 8}]


async def test_partitions_handled_in_order_mid_rebalance_mid_commit_or_compacted_are_left_alone():
    watch = faust_fixes.SkippedWatch(compacted=frozenset({"preferences"}))
    in_order, compacted, rebalancing = Worker(6, [6, 7, 8]), Worker(6, [11], "preferences"), Worker(6, [11])
    rebalancing.rebalancing = True
    committing = Worker(6, [11])  # a commit has taken 6 to 10 off, and not yet moved to 11
    committing.consumer._commit_fut = object()
    for app in (in_order, compacted, rebalancing, committing):
        for _ in range(3):
            await watch.look(app)
        assert app.seeks == []
