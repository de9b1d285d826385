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
from worker import settings as settings_module, simulate
from worker.domain.notification import notification_id

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


def test_worker_against_a_broker_that_is_down_says_so_and_retries(stack):
    from worker.broker import free_port

    process = stack.start("worker", NOTIFIER_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    assert wait_for(lambda: stack.log("worker").count("is unreachable") >= 2, timeout=30)
    assert process.poll() is None, "it keeps retrying"
    log = stack.log("worker")
    assert "Traceback" not in log
    assert "retrying in" in log
