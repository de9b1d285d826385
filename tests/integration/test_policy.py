"""5,000 simulated orders over 14 simulated days through the real broker, event clock.

Everything is checked from what left the system: the sinks' outbox and
``notifications.sent``. The expectations come from the generated stream itself.

`make test` replays 300 orders (the worker takes about six minutes for 5,000 on two
cores, which would put the suite past its ten-minute budget); `make test-policy` and
``NOTIFIER_POLICY_ORDERS=5000`` replay all 5,000.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, time as clock_time
from zoneinfo import ZoneInfo

import orjson
import pytest

from tests.integration.kafka_io import read_all
from worker import settings as settings_module, simulate
from worker.settings import CHANNELS
from worker.domain.milestones import canonical
from worker.stream import load_rules

pytestmark = pytest.mark.integration
START = datetime(2026, 10, 19, tzinfo=UTC)  # spans the end of DST in London and Los Angeles
ORDERS = int(os.environ.get("NOTIFIER_POLICY_ORDERS", "300"))
ONCE_PER_PARCEL = ("shipped", "delivered", "customs_hold", "available_for_pickup",
                   "in_transit_update")
ONCE_PER_ORDER = ("order_confirmed", "ship_delayed", "review_request", "order_cancelled")
DEFAULT_QUIET = ("22:00", "08:00")


def outcomes(settings) -> list[dict]:
    records = asyncio.run(read_all(settings.kafka_bootstrap, settings.topics.sent))
    return [{"type": dict(r.headers)["ce_type"].decode(), **orjson.loads(r.value)} for r in records]


def consumed(stack) -> float:
    """Input events the worker has read, from its own /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{stack.web_port}/metrics", timeout=5) as page:
        text = page.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("notifier_events_consumed_total{") and
               any(f'topic="{stack.topics[t]}"' in line for t in ("orders", "tracking", "preferences"))
               ) + sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("notifier_duplicate_events_total{"))


def settled(stack, settings, inputs: int, quiet_seconds: float = 10,
            timeout: float = 480) -> list[dict]:
    """Outcomes once the worker has read every input, every command dispatched has its
    outcome, and their number stopped growing."""
    deadline = time.monotonic() + timeout
    while consumed(stack) < inputs:
        assert time.monotonic() < deadline, f"worker read {consumed(stack)} of {inputs} inputs"
        time.sleep(2)
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        seen = outcomes(settings)
        if len(seen) != last:
            last, since = len(seen), time.monotonic()
        elif time.monotonic() - since > quiet_seconds:
            done = len({o["notification_id"] for o in seen if o["type"] != "notification.suppressed"})
            if done >= dispatched(settings):
                return seen
            since = time.monotonic()  # the senders are still at it
        time.sleep(2)
    pytest.fail(f"outcomes still growing after {timeout} s ({last})")


def dispatched(settings) -> int:
    """Distinct notifications dispatched to the senders (a command may be written twice)."""
    return len({dict(r.headers)["ce_id"] for c in CHANNELS for r in asyncio.run(
        read_all(settings.kafka_bootstrap, settings.topics.dispatch(c)))})


def inside(local: clock_time, window: tuple[str, str]) -> bool:
    start, end = (clock_time.fromisoformat(w) for w in window)
    return start <= local < end if start < end else (local >= start or local < end)


@pytest.mark.timeout(600)
def test_five_thousand_orders_over_fourteen_days_follow_the_policy(stack):
    stack.env["NOTIFIER_CLOCK"] = "event"
    # Fourteen days in minutes: real-time rate limits (SMS 10 a second) would stretch it.
    stack.env["NOTIFIER_PROVIDER_RATES"] = ""
    settings = settings_module.load(stack.env)
    rules = load_rules(settings)
    for command in ("sinks", "worker", "senders"):
        stack.start(command)
    stack.wait_ready()
    records = list(simulate.stories(settings, count=ORDERS, seed=11, start=START, days=14,
                                    tick_minutes=30))
    asyncio.run(simulate.produce(settings, iter(records), progress=False))
    began = time.monotonic()
    seen = settled(stack, settings, inputs=len(records))
    print(f"{len(records)} inputs settled in {time.monotonic() - began:.0f} s")

    # What the stream said, for the expectations.
    zone, prefs, cancelled, scans = {}, defaultdict(list), {}, Counter()
    for r in records:
        if r.event_type == "order.created":
            zone[r.data["customer"]["id"]] = ZoneInfo(r.data["customer"]["timezone"])
        elif r.event_type == "customer.preferences_updated":
            prefs[r.data["customer_id"]].append((r.time, r.data))
        elif r.event_type == "order.cancelled":
            cancelled[r.key] = datetime.fromisoformat(r.data["cancelled_at"])
        elif r.event_type == "tracking.updated":
            reading = canonical(r.data["checkpoint"])
            scans[(r.data["shipment_id"], reading.milestone)] += 1

    def preferences(customer_id: str, at: datetime) -> dict:
        """The customer's preferences in force at ``at`` (updates apply from their event time)."""
        merged: dict = {}
        for t, update in prefs[customer_id]:
            if t <= at:
                merged.update(update)
        return merged

    sent = [o for o in seen if o["type"] == "notification.sent"]
    # What the providers took (WeChat and webhook receivers drop a repeat themselves), and
    # the in-app inbox.
    taken = [e["request"]["notification_id"] for e in stack.outbox_entries()
             if not e["request"].get("duplicate")]
    taken += [orjson.loads(r.value)["notification_id"]
              for r in asyncio.run(read_all(settings.kafka_bootstrap, settings.topics.inbox))]
    outbox = set(taken)
    assert {o["notification_id"] for o in sent} == outbox, "the providers and notification.sent disagree"
    assert len(outbox) == len(taken), "a notification reached its provider twice"

    kinds = Counter(o["kind"] for o in sent)
    paid = sum(1 for r in records if r.event_type == "order.paid")
    # Not vacuous: the stream really went through every key moment.
    assert kinds["order_confirmed"] > 0.7 * paid, kinds
    for kind in ("shipped", "delivered", "out_for_delivery", "delivery_failed", "ship_delayed",
                 "order_cancelled", "return_update", "review_request", "delivery_exception"):
        assert kinds[kind] > 0, (kind, kinds)

    per_parcel, per_order = Counter(), Counter()
    first = defaultdict(dict)
    # High-value orders hear the important kinds on two channels, the second id ending in
    # "-<channel>"; a failed delivery's email nobody opened goes again by SMS ("-escalated",
    # and nobody opens anything in this replay): one piece of news, counted once.
    assert any(o["notification_id"].endswith("-escalated") and o["channel"] == "sms" for o in sent)
    sent = [o for o in sent if not o["notification_id"].endswith(
        ("-escalated", *(f"-{c}" for c in CHANNELS)))]
    for o in sent:
        at = datetime.fromisoformat(o["occurred_at"])
        if o["kind"] in ONCE_PER_PARCEL:
            per_parcel[(o["order_id"], o.get("shipment_id"), o["kind"])] += 1
            first[(o["order_id"], o.get("shipment_id"))][o["kind"]] = at
        if o["kind"] in ONCE_PER_ORDER:
            per_order[(o["order_id"], o["kind"])] += 1
        if o["kind"] in ("out_for_delivery", "delivery_failed"):
            status = {"out_for_delivery": "OUT_FOR_DELIVERY", "delivery_failed": "DELIVERY_FAILED"}
            per_parcel[(o["order_id"], o.get("shipment_id"), o["kind"])] += 1
            assert per_parcel[(o["order_id"], o.get("shipment_id"), o["kind"])] <= max(
                1, scans[(o.get("shipment_id"), status[o["kind"]])]), o

        # No order got the same kind twice for a parcel (or for the order).
        if o["kind"] in ONCE_PER_PARCEL:
            assert per_parcel[(o["order_id"], o.get("shipment_id"), o["kind"])] == 1, o
        if o["kind"] in ONCE_PER_ORDER:
            assert per_order[(o["order_id"], o["kind"])] == 1, o

        # No non-urgent message inside the customer's quiet hours.
        priority = rules.kinds[o["kind"]].priority
        local = at.astimezone(zone[o["customer_id"]]).time()
        chosen = preferences(o["customer_id"], at)
        window = tuple(chosen.get("quiet_hours", {}).values()) or DEFAULT_QUIET
        if priority != "urgent":
            assert not inside(local, window), (o, local, window)

        # No marketing without opt-in.
        if priority == "marketing":
            assert chosen.get("marketing_opt_in"), o

        # Nothing after a cancellation but the cancellation itself.
        if o["order_id"] in cancelled and o["kind"] != "order_cancelled":
            assert at < cancelled[o["order_id"]], o

    # Every parcel told both `shipped` and `delivered` heard `shipped` first.
    both = [k for k, v in first.items() if {"shipped", "delivered"} <= v.keys()]
    assert both and all(first[k]["shipped"] <= first[k]["delivered"] for k in both)
    delivered = [k for k, v in first.items() if "delivered" in v]
    assert len(both) > 0.6 * len(delivered), (len(both), len(delivered))
