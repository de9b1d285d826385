"""Many customers ordering to one doorstep, on the real broker: one alert, no address in it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from tests.integration.conftest import wait_for
from tests.integration.kafka_io import read_all
from worker import settings as settings_module, simulate

pytestmark = pytest.mark.integration

DOORSTEP = {"country": "CN", "region": "Shanghai", "city": "Shanghai", "postal_code": "200030",
            "line1": "88 Harbour Street, unit 3"}


def shipped(order: simulate.Record, n: int) -> simulate.Record:
    at = order.time + timedelta(minutes=30)
    return simulate.Record(order.topic, order.key, "order.shipped", f"evt-{order.key}-s", order.source, at, {
        "order_id": order.key, "shipment_id": f"{order.key}-1", "carrier": "sf-express",
        "tracking_number": f"SF10000000{n:03d}", "shipped_at": at.isoformat(),
        "origin": {"country": "CN", "region": "Zhejiang"},
        # The same doorstep, written a little differently by each customer.
        "destination": {**DOORSTEP, "line1": DOORSTEP["line1"].upper() if n % 2 else DOORSTEP["line1"]}})


def test_five_customers_ordering_to_one_doorstep_raise_one_alert(stack):
    settings = settings_module.load(stack.env)
    stack.start("worker")
    stack.wait_ready()
    records = list(simulate.orders(settings, count=7, seed=11, start=datetime.now(UTC) - timedelta(hours=2)))
    created = [r for r in records if r.event_type == "order.created"]
    assert len({r.data["customer"]["id"] for r in created}) == 7
    ring, others = created[:5], created[5:]
    # Only the ring's orders ship, all to the doorstep; the other two customers' do not.
    records += [shipped(order, n) for n, order in enumerate(ring)]
    asyncio.run(simulate.produce(settings, iter(records), progress=False))

    def alerts():
        found = asyncio.run(read_all(settings.kafka_bootstrap, settings.topics.alerts))
        return [r for r in found if dict(r.headers)["ce_type"] == b"alert.suspicious_orders"]

    assert wait_for(lambda: alerts(), timeout=60)
    time.sleep(5)  # a second alert would come within this
    [alert] = alerts()
    data = orjson.loads(alert.value)
    assert sorted(data["figures"]["orders"]) == sorted(r.key for r in ring)
    assert data["figures"]["customers"] == 5 and alert.key.decode() in {r.key for r in ring}
    assert b"Harbour" not in alert.value and b"HARBOUR" not in alert.value and b"200030" not in alert.value
    assert not {r.key for r in others} & set(data["figures"]["orders"])
    log = stack.log("worker")
    assert "Harbour" not in log and "HARBOUR" not in log
