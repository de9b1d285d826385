"""Fixes to faust-streaming (0.11–0.15), applied once at start (fix 7 runs on a timer).
Fixes 1, 2, 3, 5, 6, 7 and 8 are what the worker's at-least-once guarantee depends on. The
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
   each partition the remaining worker took over). Their acknowledgements are refused (fix
   1), so the partition's commit stops before them for good, and nothing reads them again
   until a restart. Here the consumer remembers every offset it refused to acknowledge
   until it is handled (or its partition goes to another worker), and a watch
   (:class:`SkippedWatch`, once a second) reads such a partition again from its first
   skipped offset once it has seen it waiting twice in a row while nothing is rebalancing
   or committing. It also reads again from its committed offset a partition whose
   acknowledged offsets start past it, skipped by any other path (compacted inputs left
   out: there a gap may be compaction's). Before the first way, a
   partition whose whole remaining backlog came in one skipped fetch had no acknowledged
   offset at all, and waited unread: 82 of 600 confirmations lost in one CI run.
   Until the skipped offsets are handled, the partition's later events are out of turn
   (:func:`out_of_turn`): the stages leave them unhandled and their acknowledgements are
   refused too, so each partition is handled in offset order, as the stages assume, even
   when a fetch made before a seek delivers later offsets after it. Handled past a skipped
   batch, an order's ``order.shipped`` found no ``order.created`` yet, and its notification
   was decided with nobody to tell: 83 of a 5,000-order fault run's lost so.

8. Faust commits past one unacknowledged offset at the head of a partition (it holds the
   commit only when the first acknowledged offset is more than one past the committed one),
   and past any number of them in a partition never committed. Here a commit never passes
   an offset this consumer refused to acknowledge: it waits for fix 7 to read it again.

And one for the web server: 4. Faust listens with aiohttp's default backlog of 128
connections, so a burst of new clients (200 at once in ``notifier bench page``) overflows
it and the kernel makes the rest wait a second or three for their SYN to be retried. Here
the backlog is 1024.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp.web import TCPSite
from faust.stores.memory import Store as MemoryStore
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.producer import ProducerBuffer
from faust.web.drivers.aiohttp import Web as WebDriver

log = logging.getLogger("worker.faust_fixes")
_faust_ack = Consumer.ack
_faust_seek_to_committed = AIOKafkaConsumerThread.seek_to_committed
_faust_send_pending = ProducerBuffer._send_pending
_faust_perform_seek = Consumer.perform_seek
_faust_new_offset = Consumer._new_offset


def _ack(self: Consumer, message: Any) -> bool:
    app, skipped = self.app, self.skipped_offsets
    if (message.generation_id != app.consumer_generation_id or not app.flow_control.is_active()
            or out_of_turn(self, message)):
        # Skipped by the stream, not processed: read again after the rebalance, or by fix 7.
        skipped.setdefault(message.tp, set()).add(message.offset)
        return False
    if message.tp in skipped:
        skipped[message.tp].discard(message.offset)
    return _faust_ack(self, message)


def out_of_turn(consumer: Any, message: Any) -> bool:
    """Whether an earlier offset of the message's partition was skipped unprocessed and
    not read again since: the message must wait to be read again after it (fix 7)."""
    if not consumer.skipped_offsets.get(message.tp):
        return False
    first = first_skipped(consumer, message.tp)
    return first is not None and first < message.offset


async def _perform_seek(self: Consumer) -> None:
    # Those of partitions still held stay: a fetch made before the seek may still deliver
    # later offsets of theirs, which must wait for the skipped ones read again.
    held = self.assignment()
    for tp in [tp for tp in self.skipped_offsets if tp not in held]:
        del self.skipped_offsets[tp]
    await _faust_perform_seek(self)


def first_skipped(consumer: Any, tp: Any) -> int | None:
    """The first offset of ``tp`` at or after its committed one that was skipped unprocessed."""
    committed = consumer._committed_offset.get(tp)
    skipped = consumer.skipped_offsets.get(tp)
    if skipped and committed is not None:
        skipped.difference_update([o for o in skipped if o < committed])  # handled since
    return min(skipped) if skipped else None


def _new_offset(self: Consumer, tp: Any) -> int | None:
    acked = self._acked[tp]
    skipped = first_skipped(self, tp)
    if acked and skipped is not None and skipped < min(acked):
        return None  # the commit would pass it
    return _faust_new_offset(self, tp)


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
    # Fixes 7 and 8: offsets skipped unprocessed and not handled since, by partition.
    self.skipped_offsets: dict[Any, set[int]] = {}


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


class SkippedWatch:
    """Fix 7: partitions whose commit waits before events nobody will handle are read
    again from there."""

    AGAIN_AFTER = 10  # looks: a partition read again and still waiting is read again

    def __init__(self, compacted: frozenset[str]) -> None:
        self.compacted = compacted
        self.waiting: dict[Any, tuple[tuple[int, int, str], int]] = {}  # tp -> (gap, looks seen)

    def gaps(self, app: Any) -> dict[Any, tuple[int, int, str]]:
        """(where to read again, first offset handled after it, what showed it) of each
        partition whose commit waits before offsets nobody will handle; -1 when none was
        handled after."""
        consumer, skip = app.consumer, self.compacted | app.tables.changelog_topics
        found = {}
        for tp, acked in list(consumer._acked.items()):
            committed = consumer._committed_offset.get(tp)
            if acked and committed is not None and tp.topic not in skip and min(acked) > committed:
                found[tp] = (committed, min(acked), "later offsets handled, never these")
        assigned = consumer.assignment()
        for tp in list(consumer.skipped_offsets):
            if tp in assigned and (skipped := first_skipped(consumer, tp)) is not None:
                acked = consumer._acked.get(tp)
                found[tp] = (skipped, min(acked) if acked else -1, "skipped by the stream")
        return found

    async def look(self, app: Any) -> None:
        if (app.rebalancing or app.in_recovery or not app.flow_control.is_active()
                or not app.consumer.flow_active):
            self.waiting.clear()  # the rebalance's own seek comes first
            return
        if app.consumer._commit_fut is not None:
            # A commit takes the acknowledged offsets off before it moves the committed one
            # (after the producer's flush, seconds under load): a gap that is not one.
            return
        seen = {}
        for tp, gap in self.gaps(app).items():
            before, looks = self.waiting.get(tp, (gap, 0))
            looks = looks + 1 if before == gap else 1
            seen[tp] = (gap, looks)
            if looks % self.AGAIN_AFTER == 2:
                start, handled, why = gap
                log.warning("%s[%s]: offsets from %d%s were left unprocessed (%s); reading them again",
                            tp.topic, tp.partition, start, f" to {handled - 1}" if handled > start else "",
                            why)
                try:
                    # The skipped offsets stay until handled: events fetched before the
                    # seek and delivered after it stay out of turn.
                    await app.consumer.seek_wait({tp: start})
                except Exception:  # noqa: BLE001 - the partition moved meanwhile: its new owner reads it
                    log.exception("reading %s[%s] again failed", tp.topic, tp.partition)
        self.waiting = seen


def _tcp_site(self: Any) -> TCPSite:
    conf = self.app.conf
    return TCPSite(self._runner, conf.web_bind, conf.web_port, ssl_context=conf.web_ssl_context,
                   backlog=1024)


def apply() -> None:
    WebDriver._new_transport_tcp = _tcp_site  # type: ignore[method-assign]
    Consumer.ack = _ack  # type: ignore[method-assign]
    Consumer.perform_seek = _perform_seek  # type: ignore[method-assign]
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    Consumer.__init__ = _consumer_init  # type: ignore[method-assign]
    ProducerBuffer.flush = _flush  # type: ignore[method-assign]
    ProducerBuffer._send_pending = _send_pending  # type: ignore[method-assign]
    AIOKafkaConsumerThread.seek_to_committed = _seek_to_committed  # type: ignore[method-assign]
    MemoryStore.on_recovery_completed = _drop_unheld_partitions  # type: ignore[method-assign]
