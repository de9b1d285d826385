"""The latency benchmark's measure: from the input that set a notification off to its
dispatch command, for notifications told at once only."""

from types import SimpleNamespace

import orjson

from worker.bench_latency import at_once_latencies


def record(topic, timestamp, *, ce_id=None, command=None):
    return SimpleNamespace(topic=topic, timestamp=timestamp,
                           headers=[("ce_id", ce_id.encode())] if ce_id else [],
                           value=orjson.dumps(command) if command else b"")


def test_latency_runs_from_the_latest_cause_and_counts_only_what_is_told_at_once():
    records = [
        record("orders", 1_000, ce_id="created"),
        record("orders", 1_400, ce_id="paid"),
        record("tracking", 2_000, ce_id="out"),
        record("dispatch.email", 1_450, command={"kind": "order_confirmed", "caused_by": ["created", "paid"]}),
        record("dispatch.sms", 2_030, command={"kind": "out_for_delivery", "caused_by": ["out"]}),
        # A timer's: it waits for time to pass, not for the pipeline.
        record("dispatch.email", 9_000, command={"kind": "review_request", "caused_by": ["out"]}),
        # Its cause is not among the inputs read: nothing to measure from.
        record("dispatch.push", 5_000, command={"kind": "delivered", "caused_by": ["elsewhere"]}),
    ]
    assert at_once_latencies(records, inputs={"orders", "tracking"}) == [30.0, 50.0]


def test_only_the_counted_inputs_notifications_are_measured():
    records = [
        record("orders", 1_000, ce_id="settling-paid"),  # the fresh worker's first seconds
        record("orders", 5_000, ce_id="counted-paid"),
        record("dispatch.email", 1_300, command={"kind": "order_confirmed", "caused_by": ["settling-paid"]}),
        record("dispatch.email", 5_020, command={"kind": "order_confirmed", "caused_by": ["counted-paid"]}),
    ]
    assert at_once_latencies(records, inputs={"orders"}, counted={"counted-paid"}) == [20.0]
    assert at_once_latencies(records, inputs={"orders"}, counted={"settling-paid"}) == [300.0]
