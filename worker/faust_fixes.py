"""Fixes to faust-streaming (0.11–0.15) and to aiokafka as Faust drives it, applied once at
start (fix 7 runs on a timer).
Fixes 1, 2, 3, 5, 6, 7, 8, 9 and 10 are what the worker's at-least-once guarantee depends on. The
first five and the seventh were found by ``tests/integration/test_scale_out.py`` (with two
workers, one stopping mid-stream, 3 to 12 of 600 confirmations were lost), the sixth while
reading Faust's recovery for ``tests/faults/``.

1. A stream skips the events it fetched before a rebalance (their generation is over, or
   the flow is stopped) and acknowledges them as if processed. The next commit then moves
   the offset past events nobody handled; the worker that owns the partition next starts
   after them. Here the consumer refuses those acknowledgements: the rebalance seeks every
   partition back to its committed offset, so they are read again and handled.
2. ``ProducerBuffer.flush`` returns as soon as one buffered message takes longer than 0.1 s
   to go out. The consumer flushes before it commits, so under load it committed offsets
   whose table changes (changelog records) were still buffered, and lost them if the worker
   stopped then. Here a flush drains the whole buffer, and also waits for the message the
   buffer has taken out but not yet handed to aiokafka (its send blocks while aiokafka's
   batches are full, as under load): the buffer then counts as empty, aiokafka's own flush
   does not know that message yet, and the commit went ahead without it. Seen in the
   5,000-order fault run: an `order.paid` read after a kill found no `order.created` state,
   though the creation had been committed.
3. The consumer drops every fetched message below the highest offset it has read, to skip
   what it has seen. A rebalance seeks a partition back to its committed offset, but the
   fetch loop may still be walking a batch fetched before the seek and set that highest
   offset forward again: the messages read anew after the seek are then dropped unread
   (seen in the consumer's own "DROPPED MESSAGE" log). Here the consumer keeps no such
   mark, so nothing is dropped: a message read twice is handled twice, which every stage
   is built for (events and notifications are recognised by their ids). Its other use, to
   treat a jump in offsets as a gap left by compaction, goes too: on a compacted input a
   commit may then wait at such a gap, which repeats some work after a restart and loses
   nothing.

5. After a rebalance Faust seeks every partition back to its committed offset, so that the
   events skipped by fix 1 are read again; but aiokafka's ``seek_to_committed`` leaves a
   partition that has no committed offset yet (or offset 0) where its fetch position is:
   after the events fetched and skipped. A partition's first events, before its first
   commit, were then never handled (seen: six intents of a new customer partition never
   reached the customer stage when a worker left a few seconds after start). Here such
   partitions go back to their beginning, as the group's ``earliest`` reset policy says;
   the changelogs, read by table recovery on its own terms, are left alone.

6. When a rebalance's recovery is done, the in-memory store drops every key it read from a
   changelog partition that is not among the table's *active* partitions of that recovery.
   That drops the standby partitions' keys too, while their standby reading goes on from
   where it got (so the warm copy is left with only what was written since), and it runs
   late enough to drop keys that the next rebalance's recovery has just read for a
   partition now active again. Here the store drops only the keys of partitions this worker
   holds in no way (neither active nor standby) when it runs, and logs how many keys the
   stock code would have dropped (seen in the 5,000-order fault run: 63 and 123 keys of a
   joining worker's standby partitions). No loss was traced to it; it was found while
   looking for one.

7. A partition's events can still be skipped unprocessed after the rebalance's seek: a
   fetch made before the new generation began is delivered after it, and the stream skips
   it for its old generation (seen in every run of the scale-out test: a dozen offsets of
   each partition the remaining worker took over); and Faust empties its queues of fetched
   events at a rebalance (``flow_control.clear()``) without their passing the
   acknowledgement. Later events were then handled before the skipped ones were read again:
   an order's ``order.shipped`` found no ``order.created`` yet, and its notification was
   decided with nobody to tell (83 of a 5,000-order fault run's lost so, and 45 in
   another by the queue's path). Here each partition is handled strictly in offset order.
   The consumer keeps its *frontier*, the offset before which every record has been handled
   (the committed offset after a rebalance's seek), and every message carries ``follows``,
   where aiokafka's fetch stood before it: the log holds no record from there to the
   message (compaction, transaction markers), whenever and however it was fetched. A
   message is in turn (:func:`in_turn`) when ``follows <= frontier <= offset``; the stages
   handle only those, and skip those below the frontier (handled already). One that came
   early has its acknowledgement refused, and a watch (:class:`FrontierWatch`, once a
   second) reads a partition again from its frontier when the frontier stands still while
   records past it have been fetched: after two looks if one came early or was skipped by
   the stream, or if nothing at all was handled meanwhile; after thirty while other
   records are handled (it may be slow behind them in a queue); from the log's start
   instead when retention has deleted the records before it.

8. Faust commits past one unacknowledged offset at the head of a partition (it holds the
   commit only when the first acknowledged offset is more than one past the committed one),
   and past any number of them in a partition never committed. Here a partition's commit is
   its frontier.

9. Faust's compiled stream iterator (``faust._cython.streams``, used whenever its extension
   is built, as in the PyPI wheels of 0.15) acknowledges a stream's events with its own
   inlined copy of ``Consumer.ack``, so fixes 1, 7 and 8 never saw them: events skipped at
   a rebalance were acknowledged and committed past as if handled. Here streams use
   Faust's Python iterator, which calls ``Consumer.ack``. Found on 2026-12-03 when the
   frontier of fix 7 never moved.

10. Fix 7's frontier is set by the rebalance's seek, but Faust resumes the partitions a
    rebalance gave (``resume_partitions``) before it seeks them (``perform_seek``, a round
    trip to the broker), and the stream hands over what is fetched meanwhile. Those
    records were judged against the frontier of the worker's previous seek: none at all
    for a partition it did not hold then, so every record counted as in turn, or a stale
    one. Seen in a fresh-clone ``make test`` (2026-12-06): a worker handled an order's
    ``delivered`` scan before its ``out_for_delivery``, so the customer never heard the
    parcel was out for delivery; and an ``order.packed`` before its ``order.created``.
    Here a frontier holds only for the generation whose seek set it: until that seek is
    done no record is in turn, and the seek brings them all again.

And two that are not about losing events:

4. Faust listens with aiohttp's default backlog of 128 connections, so a burst of new
   clients (200 at once in ``notifier bench page``) overflows it and the kernel makes the
   rest wait a second or three for their SYN to be retried. Here the backlog is 1024.

11. aiokafka's fetcher sends a broker no fetch request at all while records it fetched from
    any one of that broker's partitions wait unread, for up to its ``prefetch_backoff``
    (0.1 s, which its consumer does not let one set). A worker reads a dozen topics, its
    own intents and changelogs among them, from the same brokers, and the records waiting
    were mostly those of its input partitions that Faust had not taken yet: a new input
    arriving then waited for the rest of the 0.1 s, at each of the two stages. At 20
    events a second one notification in forty took some 175 ms from its input to its
    dispatch command, against 15 ms for the others (``notifier bench latency``, 2026-12-07:
    p99 168 to 186 ms in four runs; 21 and 29 ms with the wait cut to 20 ms, 19 and 39 ms
    at 5 ms), and a fresh worker's first 10 s at 200 a second had p99 225 and 248 ms
    (64 and 92 ms at 20 ms). Here every fetcher of the process waits 20 ms at most: at a
    steady 200 a second, and behind a backlog, the figures did not move beyond this
    machine's noise; 20 ms did as well as 5, and a longer hold makes fewer, larger fetches.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import faust.streams
from aiohttp.web import TCPSite
from aiokafka.consumer.fetcher import Fetcher, PartitionRecords
from faust.stores.memory import Store as MemoryStore
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.transport.producer import ProducerBuffer
from faust.web.drivers.aiohttp import Web as WebDriver

from worker import metrics

log = logging.getLogger("worker.faust_fixes")
_faust_ack = Consumer.ack
_faust_seek_to_committed = AIOKafkaConsumerThread.seek_to_committed
_faust_send_pending = ProducerBuffer._send_pending
_faust_perform_seek = Consumer.perform_seek
_faust_new_offset = Consumer._new_offset
_faust_to_message = AIOKafkaConsumer._to_message
_aiokafka_consumer_record = PartitionRecords._consumer_record
_aiokafka_fetcher_init = Fetcher.__init__
# Fix 7: by partition, the offset after the last record any consumer of this process has
# fetched (written by the consumer's thread).
FETCHED: dict[Any, int] = {}


def _ack(self: Consumer, message: Any) -> bool:
    app, tp = self.app, message.tp
    if message.generation_id != app.consumer_generation_id or not app.flow_control.is_active():
        # Skipped by the stream, not processed: read again after the rebalance, or by fix 7.
        self.early.add(tp)
        return False
    turn = _turn(self, message)
    if turn is not NEXT:
        if turn is EARLY:
            self.early.add(tp)
        return False
    if tp in self.frontier:
        self.frontier[tp] = message.offset + 1
    self.handled += 1
    return _faust_ack(self, message)


NEXT, DONE, EARLY = "next", "done", "early"


def _turn(consumer: Any, message: Any) -> str:
    if consumer.frontier_generation != consumer.app.consumer_generation_id:
        return EARLY  # fix 10: this generation's seek has not said where turns begin
    frontier = consumer.frontier.get(message.tp)
    offset = message.offset
    if frontier is None or offset == frontier:
        return NEXT
    if offset < frontier:
        return DONE
    # The log holds no records from ``follows`` to this one (compaction, transaction markers).
    return NEXT if getattr(message, "follows", offset) <= frontier else EARLY


def in_turn(consumer: Any, message: Any) -> bool:
    """Whether every record of the message's partition before it has been handled: the
    stages handle only such messages, each partition strictly in offset order (fix 7)."""
    return _turn(consumer, message) is NEXT


async def _perform_seek(self: Consumer) -> None:
    generation = self.app.consumer_generation_id
    await _faust_perform_seek(self)
    # Everything before the committed offsets was handled; the rest is read again from there.
    changelogs = self.app.tables.changelog_topics
    self.frontier = {tp: self._committed_offset.get(tp) or 0
                     for tp in self.assignment() if tp.topic not in changelogs}
    self.early.clear()
    # Fix 10: for this generation only; a seek overtaken by the next rebalance counts for
    # none (that rebalance seeks again).
    self.frontier_generation = generation if generation == self.app.consumer_generation_id else None


def _new_offset(self: Consumer, tp: Any) -> int | None:
    frontier = self.frontier.get(tp)
    if frontier is None:
        return _faust_new_offset(self, tp)
    self._acked[tp].clear()  # all below the frontier: nothing for Faust's own reckoning
    self._acked_index[tp].clear()
    return frontier if frontier > (self._committed_offset.get(tp) or 0) else None


def _consumer_record(self: PartitionRecords, tp: Any, record: Any) -> Any:
    consumer_record = _aiokafka_consumer_record(self, tp, record)
    # Where the fetch stood before this record: the previous record's offset + 1, or past
    # the batches and markers in between, or the fetch's own start.
    consumer_record.follows = self.next_fetch_offset
    if record.offset >= FETCHED.get(tp, 0):
        FETCHED[tp] = record.offset + 1
    return consumer_record


def _to_message(self: AIOKafkaConsumer, tp: Any, record: Any) -> Any:
    message = _faust_to_message(self, tp, record)
    message.follows = getattr(record, "follows", record.offset)
    return message


async def _send_pending(self: ProducerBuffer, fut: Any) -> None:
    self.in_hand = getattr(self, "in_hand", 0) + 1
    try:
        await _faust_send_pending(self, fut)
    finally:
        self.in_hand -= 1


async def _flush(self: ProducerBuffer) -> None:
    while self.size or getattr(self, "in_hand", 0):
        self.message_sent.clear()  # set each time the buffer has handed one over
        try:
            await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)
        except TimeoutError:
            pass


class _NoReadMark(dict):  # type: ignore[type-arg]
    """The consumer's read offsets, always unknown to the fetch loop."""

    def __getitem__(self, tp: Any) -> None:
        return None


_faust_consumer_init = Consumer.__init__


def _consumer_init(self: Consumer, *args: Any, **kwargs: Any) -> None:
    _faust_consumer_init(self, *args, **kwargs)
    self._read_offset = _NoReadMark()
    # Fixes 7 and 8: by partition, the offset before which every record has been handled,
    # and the partitions some of whose records came early or were skipped by the stream.
    self.frontier: dict[Any, int] = {}
    self.frontier_generation: int | None = None  # fix 10: the generation whose seek set it
    self.early: set[Any] = set()
    self.handled = 0  # records handled: the watch tells a busy worker from an idle one


async def _seek_to_committed(self: Any) -> Any:
    committed = await _faust_seek_to_committed(self)
    changelogs = self.app.tables.changelog_topics
    never_committed = [tp for tp, offset in committed.items()
                       if not offset and tp.topic not in changelogs]
    if never_committed and self.app.conf.consumer_auto_offset_reset == "earliest":
        await self.call_thread(self._ensure_consumer().seek_to_beginning, *never_committed)
    return committed


async def _drop_unheld_partitions(self: MemoryStore, active_tps: set[Any], standby_tps: set[Any]) -> None:
    assignor = self.app.assignor
    held = {tp.partition for tp in (*active_tps, *standby_tps, *assignor.assigned_actives(),
                                    *assignor.assigned_standbys())}
    active = {tp.partition for tp in active_tps}
    dropped = [k for k, p in self._key_partition.items() if p not in held]
    for key in dropped:
        self.data.pop(key, None)
        self._key_partition.pop(key, None)
    kept = sum(1 for p in self._key_partition.values() if p not in active)
    if kept:
        log.info("recovery done: kept %d keys of partitions held as standby or assigned anew "
                 "(faust would have dropped them), dropped %d", kept, len(dropped))


@dataclass(slots=True)
class _Standing:
    frontier: int
    looks: int = 0  # looks the frontier has stood here with records past it fetched
    idle: int = 0  # of them, looks after a second in which nothing was handled anywhere
    rest: int = 0  # looks to wait after reading it again

    def missing(self, early: bool) -> bool:
        """Whether the records past the frontier look lost rather than on their way."""
        return (early and self.looks >= FrontierWatch.AFTER_EARLY
                or self.idle >= FrontierWatch.AFTER_IDLE or self.looks >= FrontierWatch.AFTER_BUSY)


class FrontierWatch:
    """Fix 7: a partition whose frontier stands still while records past it have been
    fetched is read again from its frontier."""

    AFTER_EARLY = 2  # looks: a later record came (or one was skipped), so one went missing
    AFTER_IDLE = 2  # looks with nothing handled anywhere: what was fetched went missing
    AFTER_BUSY = 30  # looks while others are handled: it may be slow behind them in a queue
    AGAIN_AFTER = 10  # looks: read again and still standing, read again

    def __init__(self) -> None:
        self.standing: dict[Any, _Standing] = {}
        self.handled = -1  # the consumer's count of handled records at the last look

    async def look(self, app: Any) -> None:
        consumer = app.consumer
        if (app.rebalancing or app.in_recovery or not app.flow_control.is_active()
                or not consumer.flow_active):
            self.standing.clear()  # the rebalance's own seek comes first
            return
        if consumer.frontier_generation != app.consumer_generation_id:
            # Fix 10: no seek set this generation's frontier (none is known to end so, but
            # nothing would be handled until one does).
            log.warning("no frontier for generation %s; seeking to the committed offsets",
                        app.consumer_generation_id)
            await consumer.perform_seek()
            return
        idle, self.handled = consumer.handled == self.handled, consumer.handled
        standing = {}
        for tp, frontier in list(consumer.frontier.items()):
            if FETCHED.get(tp, 0) <= frontier:
                continue
            it = self.standing.get(tp)
            it = standing[tp] = it if it is not None and it.frontier == frontier else _Standing(frontier)
            it.looks, it.idle, it.rest = it.looks + 1, it.idle + idle, it.rest - 1
            early = tp in consumer.early
            if it.rest > 0 or not it.missing(early):
                continue
            it.rest = self.AGAIN_AFTER
            reason = "later_came_first" if early else "none_came"
            metrics.partition_rereads.labels(tp.topic, reason).inc()
            log.warning("%s[%s]: records from %d on were fetched and not handled (%s); "
                        "reading them again", tp.topic, tp.partition, frontier, reason)
            consumer.early.discard(tp)
            try:
                start = (await consumer.earliest_offsets(tp)).get(tp, 0)
                if start > frontier:  # deleted by retention: nothing before it to handle
                    consumer.frontier[tp] = frontier = start
                await consumer.seek_wait({tp: frontier})
            except Exception:  # noqa: BLE001 - the partition moved meanwhile: its new owner reads it
                log.exception("reading %s[%s] again failed", tp.topic, tp.partition)
        self.standing = standing


def _tcp_site(self: Any) -> TCPSite:
    conf = self.app.conf
    return TCPSite(self._runner, conf.web_bind, conf.web_port, ssl_context=conf.web_ssl_context,
                   backlog=1024)


# Fix 11: how long a fetcher holds back a broker's fetches while records it fetched wait.
PREFETCH_BACKOFF_SECONDS = 0.02


def _fetcher_init(self: Fetcher, *args: Any, **kwargs: Any) -> None:
    _aiokafka_fetcher_init(self, *args, **{**kwargs, "prefetch_backoff": PREFETCH_BACKOFF_SECONDS})


def apply() -> None:
    # Fix 9: Faust's compiled stream iterator acknowledges events by its own inlined copy of
    # Consumer.ack, so fixes 1, 7 and 8 never saw a stream's acknowledgements; its Python
    # twin calls Consumer.ack.
    faust.streams._CStreamIterator = None
    WebDriver._new_transport_tcp = _tcp_site  # type: ignore[method-assign]
    Consumer.ack = _ack  # type: ignore[method-assign]
    Consumer.perform_seek = _perform_seek  # type: ignore[method-assign]
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    Consumer.__init__ = _consumer_init  # type: ignore[method-assign]
    AIOKafkaConsumer._to_message = _to_message  # type: ignore[method-assign]
    PartitionRecords._consumer_record = _consumer_record  # type: ignore[method-assign]
    Fetcher.__init__ = _fetcher_init
    ProducerBuffer.flush = _flush  # type: ignore[method-assign]
    ProducerBuffer._send_pending = _send_pending  # type: ignore[method-assign]
    AIOKafkaConsumerThread.seek_to_committed = _seek_to_committed  # type: ignore[method-assign]
    MemoryStore.on_recovery_completed = _drop_unheld_partitions  # type: ignore[method-assign]
