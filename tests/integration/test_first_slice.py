"""The first slice end to end: orders in, confirmation emails out, bad input dead-lettered."""

from __future__ import annotations

import asyncio
import email
import email.policy
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from tests.integration.conftest import wait_for
from tests.integration.kafka_io import produce, read_all
from worker import codec, settings as settings_module, simulate
from worker.domain.notification import notification_id
from worker.settings import Topics

pytestmark = pytest.mark.integration

ORDERS = 1000


def bad_inputs(topic: str, good: simulate.Record) -> list[tuple]:
    """Four of each kind of bad input, 20 in all."""
    value, headers = good.encoded()
    key = good.key.encode()
    typed = lambda t: [(k, t.encode() if k == "ce_type" else v) for k, v in headers]  # noqa: E731
    broken = orjson.loads(value)
    del broken["paid_at"]
    kinds = {
        "malformed_json": (key, b'{"order_id": "SO-1", ', headers),
        "missing_key": (None, value, headers),
        "unknown_type": (key, value, typed("order.teleported")),
        "too_large": (key, value + b" " * (1024 * 1024 + 10), headers),
        "schema_violation": (key, orjson.dumps(broken), headers),
    }
    return [(topic, k, v, h) for k, v, h in kinds.values() for _ in range(4)], kinds


def test_orders_become_exactly_one_confirmation_each(stack):
    stack.without_quiet_hours()
    settings = settings_module.load(stack.env)
    for command in ("sinks", "worker", "senders"):
        stack.start(command)
    stack.wait_ready()

    # Placed minutes ago (paid up to 5 min later): under the wall clock, orders from weeks ago
    # would rightly be late to ship, and payments in the future not yet confirmed.
    records = list(simulate.orders(settings, count=ORDERS, seed=42,
                                   start=datetime.now(UTC) - timedelta(minutes=6),
                                   spacing=timedelta(0)))
    rng = random.Random(7)
    duplicates = rng.sample(records, 150)
    bad, kinds = bad_inputs(settings.topics.orders, next(r for r in records if r.event_type == "order.paid"))
    stream = [(r.topic, r.key.encode(), *r.encoded()) for r in records + duplicates]
    # Bad input interleaved with good: nothing after it may be lost.
    for item in bad:
        stream.insert(rng.randrange(len(stream)), item)
    asyncio.run(produce(settings.kafka_bootstrap, stream))

    assert wait_for(lambda: len(stack.outbox_entries()) >= ORDERS, timeout=180), (
        f"only {len(stack.outbox_entries())} emails arrived\n" + stack.log("worker")[-3000:])
    time.sleep(3)  # anything extra would arrive now

    emails = [e for e in stack.outbox_entries() if e["channel"] == "email"]
    order_ids = sorted({r.key for r in records})
    expected = {notification_id(o, "order_confirmed") for o in order_ids}
    assert len(emails) == ORDERS
    assert {e["request"]["notification_id"] for e in emails} == expected
    sample = email.message_from_string(emails[0]["request"]["data"], policy=email.policy.default)
    assert sample.get_content_type() == "multipart/alternative"

    outcomes = asyncio.run(read_all(settings.kafka_bootstrap, settings.topics.sent))
    types = Counter(dict(r.headers)["ce_type"].decode() for r in outcomes)
    assert types == {"notification.sent": ORDERS}
    sent_ids = [orjson.loads(r.value)["notification_id"] for r in outcomes]
    assert sorted(sent_ids) == sorted(expected)
    assert all(orjson.loads(r.value)["latency_ms"] >= 0 for r in outcomes)

    dead = asyncio.run(read_all(settings.kafka_bootstrap, settings.topics.dlq))
    reasons = Counter(dict(r.headers)["error_type"].decode() for r in dead)
    assert reasons == {kind: 4 for kind in kinds}
    for r in dead:
        h = dict(r.headers)
        assert h["original_topic"].decode() == settings.topics.orders
        assert h["error_message"] and h["original_offset"].isdigit()
    assert stack.processes["worker"].poll() is None, "the worker must survive bad input"


def shipped_with_scans(topics: Topics, order: simulate.Record, now: datetime) -> list[tuple[str, str, dict]]:
    """(topic, event type, data) of an order's parcel shipped three minutes ago and out for
    delivery since one: the tracking topic's half of an order told all at once."""
    parcel = {"order_id": order.key, "shipment_id": f"{order.key}-1", "carrier": "sf-express",
              "tracking_number": f"SF{order.key[-6:]}"}
    place = {"country": "CN", "region": "Shanghai", "city": "Shanghai"}
    shipped = {**parcel, "shipped_at": (now - timedelta(minutes=3)).isoformat(),
               "origin": place, "destination": place}
    scans = [(topics.tracking, "tracking.updated", {**parcel, "checkpoint": {
        "status": status, "occurred_at": (now - timedelta(minutes=minutes)).isoformat()}})
        for status, minutes in (("PICKED_UP", 2), ("OUT_FOR_DELIVERY", 1))]
    return [(topics.orders, "order.shipped", shipped), *scans]


def test_under_the_wall_clock_a_payment_is_told_without_waiting_for_the_next_tick(stack):
    # Ticks an hour apart: only a decision taken as the inputs are read can send anything.
    stack.without_quiet_hours()
    settings = settings_module.load(stack.env)
    stack.start("sinks")
    stack.start("worker", NOTIFIER_TICK_SECONDS="3600")
    stack.start("senders")
    stack.wait_ready()
    now = datetime.now(UTC)
    records = list(simulate.orders(settings, count=23, seed=5, start=now - timedelta(minutes=6),
                                   spacing=timedelta(0)))
    one_by_one, told_at_once = records[:6], records[6:]
    for record in one_by_one:  # one at a time, as a shop's checkout sends them
        asyncio.run(produce(settings.kafka_bootstrap,
                            [(record.topic, record.key.encode(), *record.encoded())]))

    def confirmations(orders: list[simulate.Record]) -> set[str]:
        return {notification_id(r.key, "order_confirmed") for r in orders}

    def sent() -> set[str]:
        return {e["request"]["notification_id"] for e in stack.outbox_entries()}

    assert wait_for(lambda: sent() >= confirmations(one_by_one), timeout=60), stack.log("worker")[-3000:]

    # Whole orders in one go, their scans on the tracking topic, all known from the same
    # second: however the worker's reads of the two topics interleave, each customer hears
    # of the payment first, not of the parcel first with the confirmation held back 15
    # minutes behind it by the gap between an order's messages.
    stream = []
    for record in told_at_once:
        told = [(record.topic, record.event_type, record.data)]
        if record.event_type == "order.paid":
            told += shipped_with_scans(settings.topics, record, now)
        for topic, event_type, data in told:
            value, headers = codec.encode(event_type=event_type, event_id=f"{event_type}-{len(stream)}",
                                          source="urn:test", time=now, data=data, subject=record.key)
            stream.append((topic, record.key.encode(), value, headers))
    asyncio.run(produce(settings.kafka_bootstrap, stream))
    assert wait_for(lambda: sent() >= confirmations(told_at_once), timeout=60), (
        sorted(confirmations(told_at_once) - sent()), stack.log("worker")[-3000:])


def test_worker_against_a_broker_that_is_down_says_so_and_retries(stack):
    from worker.broker import free_port

    process = stack.start("worker", NOTIFIER_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    assert wait_for(lambda: stack.log("worker").count("is unreachable") >= 2, timeout=30)
    assert process.poll() is None, "it keeps retrying"
    log = stack.log("worker")
    assert "Traceback" not in log
    assert "retrying in" in log
