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
