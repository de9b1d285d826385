"""Lanes on the real broker: delivered parcels teach a lane, the lane sets a stall's threshold."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from tests.integration.conftest import wait_for
from tests.integration.kafka_io import read_all
from worker import settings as settings_module, simulate
from worker.domain import histogram

pytestmark = pytest.mark.integration
START = datetime(2026, 11, 2, 2, tzinfo=UTC)
LANE = "zto|CN-ZJ|CN-SH"


def parcel(settings, n: int, placed: datetime, scans: list[tuple[str, float]]) -> list:
    """One order with one ZTO parcel from Zhejiang to Shanghai; scans at hours after placing."""
    order_id, sid = f"LN-{n:04d}", f"LN-{n:04d}-1"
    customer = {"id": f"CU-L{n:04d}", "name": "Wei", "email": f"l{n}@example.com",
                "locale": "en", "timezone": "Asia/Shanghai"}

    def event(topic, kind, hours, data, suffix):
        return simulate.Record(topic, order_id, kind, f"{order_id}-{suffix}", "urn:test",
                               placed + timedelta(hours=hours), {"order_id": order_id, **data})

    at = lambda hours: (placed + timedelta(hours=hours)).isoformat()  # noqa: E731
    records = [
        event(settings.topics.orders, "order.created", 0, {
            "shop": {"id": "s1", "name": "Shop"}, "customer": customer,
            "items": [{"sku": "A", "name": "Tea", "quantity": 1, "unit_price": "20.00"}],
            "total": {"amount": "20.00", "currency": "CNY"}, "placed_at": at(0)}, "c"),
        event(settings.topics.orders, "order.paid", 0.1, {"paid_at": at(0.1)}, "p"),
        event(settings.topics.orders, "order.shipped", 0.5, {
            "shipment_id": sid, "carrier": "zto", "tracking_number": f"ZT{n}", "shipped_at": at(0.5),
            "origin": {"country": "CN", "region": "ZJ"},
            "destination": {"country": "CN", "region": "SH"}}, "s"),
    ]
    for i, (status, hours) in enumerate(scans):
        records.append(event(settings.topics.tracking, "tracking.updated", hours, {
            "shipment_id": sid, "carrier": "zto", "tracking_number": f"ZT{n}",
            "checkpoint": {"status": status, "occurred_at": at(hours)}}, f"t{i}"))
    return records


def feed(settings, records: list, *tick_times: datetime) -> None:
    records = sorted(records, key=lambda r: r.time)
    ticks = [t for at in tick_times for t in simulate.ticks(settings, at)]
    asyncio.run(simulate.produce(settings, iter(records + ticks), progress=False))


def lane_samples(settings) -> int:
    records = asyncio.run(read_all(settings.kafka_bootstrap, settings.topics.lane_figures))
    latest = [orjson.loads(r.value) for r in records if r.key == LANE.encode()]
    return histogram.total(latest[-1]["gaps"].get("PICKED_UP", {})) if latest else 0


def stall_alerts(settings) -> list[dict]:
    records = asyncio.run(read_all(settings.kafka_bootstrap, settings.topics.alerts))
    return [orjson.loads(r.value) for r in records
            if dict(r.headers)["ce_type"] == b"alert.tracking_stalled"]


def test_a_lane_learns_from_deliveries_and_sets_the_stall_threshold_across_a_restart(stack):
    stack.env["NOTIFIER_CLOCK"] = "event"
    settings = settings_module.load(stack.env)
    for command in ("sinks", "worker", "senders"):
        stack.start(command)
    stack.wait_ready()

    # 40 parcels that scan every 4 hours: on this lane 48 h of silence would be absurd.
    quick = [("PICKED_UP", 1), ("IN_TRANSIT", 5), ("IN_TRANSIT", 9), ("DELIVERED", 13)]
    records = [r for n in range(40) for r in parcel(settings, n, START + timedelta(minutes=10 * n), quick)]
    feed(settings, records, START + timedelta(hours=24))
    assert wait_for(lambda: lane_samples(settings) >= 40, timeout=120), lane_samples(settings)

    # The worker dies and comes back: the lane's figures come back from the compacted topic.
    stack.processes["worker"].send_signal(signal.SIGKILL)
    stack.processes["worker"].wait()
    stack.start("worker")
    stack.wait_ready()
    time.sleep(3)

    stalled_at = START + timedelta(hours=30)
    feed(settings, parcel(settings, 9999, stalled_at, [("PICKED_UP", 1)]),
         stalled_at + timedelta(hours=30))  # 29 h of silence: past the floor, not the default
    assert wait_for(lambda: stall_alerts(settings), timeout=120)
    feed(settings, [], stalled_at + timedelta(hours=31))  # another tick changes nothing
    time.sleep(5)
    [alert] = stall_alerts(settings)
    assert alert["order_id"] == "LN-9999"
    assert alert["figures"]["threshold_hours"] == 24.0
    assert alert["figures"]["silent_since"] == (stalled_at + timedelta(hours=1)).isoformat()
    assert alert["raised_at"] == (stalled_at + timedelta(hours=25)).isoformat()
