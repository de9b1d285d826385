"""A page server's copy of what the page reads, from the worker's changelog records."""

from __future__ import annotations

import dataclasses

import orjson
from aiokafka.partitioner import DefaultPartitioner

from worker import packing
from worker.page_server import Replica, changelog
from worker.settings import Settings
from worker.stream import load_rules


def replica(**settings: object) -> Replica:
    s = dataclasses.replace(Settings(), **settings)
    return Replica(s, load_rules(s))


def test_the_latest_value_of_each_key_is_kept_and_a_tombstone_forgets_it():
    r = replica()
    orders = changelog(r.settings, "orders")
    r.apply(orders, b"SO-1", packing.pack({"order": {"order_id": "SO-1"}, "v": 1}, None))
    r.apply(orders, b"SO-1", packing.pack({"order": {"order_id": "SO-1"}, "v": 2}, None))
    assert packing.unpack(r.saved_order("SO-1"))["v"] == 2
    r.apply(orders, b"SO-1", None)  # the worker forgot the order
    assert r.saved_order("SO-1") is None


def test_inbox_and_lane_figures_are_read_as_the_worker_wrote_them():
    r = replica()
    messages = [{"notification_id": "n1", "order_id": "SO-1", "title": "Shipped"},
                {"notification_id": "n2", "order_id": "SO-2", "title": "Other order"}]
    r.apply(changelog(r.settings, "inbox"), b"C-1", orjson.dumps(messages))
    assert [m["notification_id"] for m in r.inbox_of("C-1", "SO-1")] == ["n1"]
    assert r.inbox_of("C-unknown", "SO-1") == []
    r.apply(r.settings.topics.lane_figures, b"sf|CN-ZJ|CN-SH", orjson.dumps({"samples": 40}))
    assert r.lanes_of(["sf|CN-ZJ|CN-SH", "sf|*|CN"]) == [{"samples": 40}]
    assert changelog(r.settings, "orders") in r.topics and r.settings.topics.lane_figures in r.topics


def test_under_the_event_clock_an_order_is_seen_at_its_partitions_time():
    r = replica(clock="event")
    n = r.settings.partitions
    partition = DefaultPartitioner()(b"SO-1", list(range(n)), list(range(n)))
    r.apply(changelog(r.settings, "clock"), str(partition).encode(), b"2026-10-03T12:00:00+00:00")
    assert r.now_for("SO-1").isoformat() == "2026-10-03T12:00:00+00:00"
    assert replica().now_for("SO-1").year >= 2026  # the wall clock otherwise
