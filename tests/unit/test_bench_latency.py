"""The latency benchmark's measure: from the input that set a notification off to its
dispatch command and to the provider's acceptance, for notifications told at once only."""

from types import SimpleNamespace

import orjson

from worker.bench_latency import at_once_latencies


def record(topic, timestamp, *, ce_id=None, ce_type=None, data=None):
    headers = [("ce_id", ce_id.encode())] if ce_id else []
    headers += [("ce_type", ce_type.encode())] if ce_type else []
    return SimpleNamespace(topic=topic, timestamp=timestamp, headers=headers,
                           value=orjson.dumps(data) if data else b"")


def command(nid, kind, causes, channel="email"):
    return {"notification_id": nid, "kind": kind, "caused_by": causes, "channel": channel}


def outcome(nid, channel, how="sent"):
    return {"ce_type": f"notification.{how}", "data": {"notification_id": nid, "channel": channel}}


def test_latency_runs_from_the_latest_cause_and_counts_only_what_is_told_at_once():
    records = [
        record("orders", 1_000, ce_id="created"),
        record("orders", 1_400, ce_id="paid"),
        record("tracking", 2_000, ce_id="out"),
        record("dispatch.email", 1_450, data=command("n1", "order_confirmed", ["created", "paid"])),
        record("dispatch.sms", 2_030, data=command("n2", "out_for_delivery", ["out"], "sms")),
        # A timer's: it waits for time to pass, not for the pipeline.
        record("dispatch.email", 9_000, data=command("n3", "review_request", ["out"])),
        # Its cause is not among the inputs read: nothing to measure from.
        record("dispatch.push", 5_000, data=command("n4", "delivered", ["elsewhere"], "push")),
    ]
    assert at_once_latencies(records, inputs={"orders", "tracking"}, sent="sent").dispatched == [30.0, 50.0]


def test_the_providers_acceptance_is_the_sent_outcome_of_the_same_notification_and_channel():
    records = [
        record("orders", 1_000, ce_id="paid"),
        record("tracking", 2_000, ce_id="out"),
        record("dispatch.email", 1_020, data=command("n1", "order_confirmed", ["paid"])),
        record("dispatch.sms", 1_030, data=command("n1", "order_confirmed", ["paid"], "sms")),
        record("dispatch.push", 2_010, data=command("n2", "out_for_delivery", ["out"], "push")),
        record("sent", 1_090, **outcome("n1", "email")),
        record("sent", 1_400, **outcome("n1", "sms")),
        # Not accepted: the customer had opted out of push.
        record("sent", 2_050, **outcome("n2", "push", "suppressed")),
    ]
    measured = at_once_latencies(records, inputs={"orders", "tracking"}, sent="sent")
    assert measured.dispatched == [10.0, 20.0, 30.0]
    assert measured.accepted == [90.0, 400.0]


def test_only_the_counted_inputs_notifications_are_measured():
    records = [
        record("orders", 1_000, ce_id="settling-paid"),  # the fresh worker's first seconds
        record("orders", 5_000, ce_id="counted-paid"),
        record("dispatch.email", 1_300, data=command("n1", "order_confirmed", ["settling-paid"])),
        record("dispatch.email", 5_020, data=command("n2", "order_confirmed", ["counted-paid"])),
        record("sent", 1_500, **outcome("n1", "email")),
        record("sent", 5_100, **outcome("n2", "email")),
    ]
    counted = at_once_latencies(records, inputs={"orders"}, sent="sent", counted={"counted-paid"})
    settling = at_once_latencies(records, inputs={"orders"}, sent="sent", counted={"settling-paid"})
    assert (counted.dispatched, counted.accepted) == ([20.0], [100.0])
    assert (settling.dispatched, settling.accepted) == ([300.0], [500.0])
