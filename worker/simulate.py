"""A synthetic stream of orders, reproducible from a seed.

:func:`orders` is pure: it yields the records (topic, key, CloudEvent) of each
order in time order. :func:`produce` sends them to Kafka, paced or as fast as it can.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaProducer

from worker import codec, journeys
from worker.settings import Settings

SHOPS = [
    {"id": "xinghe", "name": "星河小铺", "support_url": "https://xinghe.example/help",
     "support_phone": "+862158880000", "currency": "CNY"},
    {"id": "taipei-tea", "name": "台北茶舖", "support_url": "https://taipei-tea.example/help",
     "currency": "TWD"},
    {"id": "northwind", "name": "Northwind Goods", "support_url": "https://northwind.example/help",
     "currency": "USD"},
    {"id": "london-tea", "name": "London Tea Co", "support_url": "https://london-tea.example/help",
     "currency": "GBP"},
]
RING_ADDRESS = {"line1": "88 Harbour Street, unit 3", "postal_code": "20001"}
RATE = {"CNY": Decimal(1), "TWD": Decimal("4.5"), "USD": Decimal("0.14"), "GBP": Decimal("0.11")}
CUSTOMERS = {
    "CNY": (("张伟", "王芳", "李娜", "刘洋", "陈静"), "zh-CN", "Asia/Shanghai", "+86138"),
    "TWD": (("林志明", "黃美玲", "陳建宏"), "zh-TW", "Asia/Taipei", "+886912"),
    "USD": (("Alex Kim", "Maria Lopez", "Sam Carter", "Priya Patel"), "en", "America/Los_Angeles", "+1415"),
    "GBP": (("Oliver Smith", "Amelia Jones", "Harry Brown"), "en-GB", "Europe/London", "+447700"),
}
ITEMS = [
    ("TEA-LJ-250", "明前龙井 250g", "168.00", "general"), ("CUP-GL-01", "玻璃茶杯", "59.00", "fragile"),
    ("FRT-MG-5", "Fresh mangoes 5 kg", "25.00", "fresh"), ("TSH-BL-M", "Linen shirt", "39.00", "apparel"),
    ("SRM-HY-30", "Hyaluronic serum 30 ml", "29.00", "beauty"), ("BK-PY-01", "Python cookbook", "45.00", "general"),
]


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    key: str
    event_type: str
    event_id: str
    source: str
    time: datetime
    data: dict[str, Any]
    partition: int | None = None

    def encoded(self) -> tuple[bytes, list[tuple[str, bytes]]]:
        return codec.encode(event_type=self.event_type, event_id=self.event_id, source=self.source,
                            time=self.time, data=self.data, subject=self.key)


def orders(settings: Settings, *, count: int, seed: int, start: datetime,
           spacing: timedelta = timedelta(seconds=20)) -> Iterator[Record]:
    """Yield ``order.created`` then ``order.paid`` for ``count`` orders, in time order."""
    rng = random.Random(seed)
    topic = settings.topics.orders
    for n in range(count):
        shop = SHOPS[rng.randrange(len(SHOPS))]
        names, locale, zone, phone_prefix = CUSTOMERS[shop["currency"]]
        placed = start + spacing * n
        order_id = f"SO{placed:%Y%m%d}-{seed % 1000:03d}{n:06d}"
        customer_no = rng.randrange(100_000)
        lines = rng.sample(ITEMS, rng.randint(1, 3))
        items = [{"sku": sku, "name": name, "quantity": rng.randint(1, 3), "unit_price": price,
                  "category": category} for sku, name, price, category in lines]
        total = sum(Decimal(i["unit_price"]) * i["quantity"] for i in items)
        created = {
            "order_id": order_id,
            "shop": {k: v for k, v in shop.items() if k != "currency"},
            "customer": {
                "id": f"CU-{customer_no:05d}", "name": rng.choice(names),
                "email": f"customer{customer_no:05d}@example.com",
                "phone": f"{phone_prefix}{rng.randrange(10**7, 10**8)}",
                "locale": locale, "timezone": zone,
                "segment": rng.choice(["regular", "regular", "new", "vip"]),
            },
            "items": items,
            "total": {"amount": f"{total:.2f}", "currency": shop["currency"]},
            "placed_at": placed.isoformat(),
            "promised_ship_by": (placed + timedelta(days=1)).isoformat(),
            "promised_delivery_by": (placed + timedelta(days=4)).isoformat(),
            "sales_channel": rng.choice(["web", "app", "wechat"]),
        }
        source = f"urn:shop:{shop['id']}:orders"
        yield Record(topic, order_id, "order.created", f"evt-{order_id}-c", source, placed, created)
        paid = placed + timedelta(seconds=rng.randint(5, 300))
        yield Record(topic, order_id, "order.paid", f"evt-{order_id}-p", source, paid,
                     {"order_id": order_id, "paid_at": paid.isoformat()})


RAW = {  # a canonical milestone as each aggregator or carrier would report it
    "PICKED_UP": [{"source": "aftership", "tag": "InTransit", "subtag": "InTransit_002"},
                  {"source": "sf-express", "code": "50"}, {"source": "zto", "code": "收件"}],
    "IN_TRANSIT": [{"source": "17track", "status": "InTransit", "sub_status": "InTransit_Other"},
                   {"source": "easypost", "status": "in_transit"}],
    "ARRIVED_AT_DESTINATION": [{"source": "aftership", "tag": "InTransit", "subtag": "InTransit_004"}],
    "OUT_FOR_DELIVERY": [{"source": "sf-express", "code": "44"},
                         {"source": "17track", "status": "OutForDelivery"}],
    "DELIVERED": [{"source": "aftership", "tag": "Delivered", "subtag": "Delivered_001"},
                  {"source": "zto", "code": "签收"}],
    "DELIVERY_FAILED": [{"source": "aftership", "tag": "AttemptFail"}],
}


def stories(settings: Settings, *, count: int, seed: int, start: datetime,
            days: float = 14, tick_minutes: float = 10, customers: int = 0,
            truths: list[journeys.Truth] | None = None,
            incidents: tuple[journeys.Incident, ...] = (),
            ring: tuple[datetime, int] | None = None) -> Iterator[Record]:
    """Whole order lifecycles over ``days`` of event time, in arrival order, with
    ``clock.tick`` on every partition every ``tick_minutes``: the event-clock stream.

    Shipping on realistic lanes (:mod:`worker.journeys`), scans (canonical and carriers'
    own codes, a few unknown), stalls, lost parcels, lane ``incidents``, a ``ring`` (from
    when, how many orders: different customers ordering to one doorstep), failed attempts,
    exceptions, split parcels, late and duplicate scans, cancellations, returns, and
    preference updates (quiet hours, opt-ins and opt-outs, erasure). ``truths`` (a list)
    receives what really happened to each parcel.
    """
    rng = random.Random(seed)
    pool = customers or max(1, count * 2 // 5)
    arrivals: list[tuple[datetime, int, Record]] = []
    spacing = timedelta(days=days * 0.7) / max(count, 1)
    sequence = 0

    def add(arrive: datetime, record: Record) -> None:
        nonlocal sequence
        sequence += 1
        arrivals.append((arrive, sequence, record))

    ring_orders = range(int((ring[0] - start) / spacing), int((ring[0] - start) / spacing) + ring[1]) if ring else ()
    for n in range(count):
        placed = start + spacing * n + timedelta(seconds=rng.randint(0, 59))
        # A ring's orders come from customers of their own, all to one doorstep.
        who = (pool + n) * len(SHOPS) if n in ring_orders else None  # one shop, new customers
        for record in _story(settings, rng, n, placed, pool, seed, truths, incidents, who,
                             RING_ADDRESS if n in ring_orders else None):
            add(record.time, record)
    # Preferences: some customers set quiet hours, opt in to marketing or out of email.
    for customer_no in rng.sample(range(pool), k=pool // 5):
        when = start + timedelta(hours=rng.uniform(0, days * 24 * 0.8))
        add(when, _preferences(settings, rng, customer_no, when))
    for t in range(int(days * 24 * 60 / tick_minutes) + 1):
        for tick in ticks(settings, start + timedelta(minutes=t * tick_minutes)):
            add(tick.time, tick)
    arrivals.sort(key=lambda a: (a[0], a[1]))
    horizon = start + timedelta(days=days)
    yield from (record for arrive, _, record in arrivals if arrive <= horizon)


def ticks(settings: Settings, now: datetime) -> list[Record]:
    """One ``clock.tick`` for every partition of the tracking topic."""
    return [Record(settings.topics.tracking, f"tick-{p}", "clock.tick",
                   f"tick-{now.isoformat()}-{p}", "urn:simulate:clock", now,
                   {"now": now.isoformat()}, partition=p) for p in range(settings.partitions)]


def _customer(customer_no: int, rng_seed: int) -> dict[str, Any]:
    shop = SHOPS[customer_no % len(SHOPS)]
    names, locale, zone, phone_prefix = CUSTOMERS[shop["currency"]]
    return {
        "id": f"CU-{customer_no:05d}", "name": names[customer_no % len(names)],
        "email": f"customer{customer_no:05d}@example.com",
        "phone": f"{phone_prefix}{customer_no:06d}",
        "locale": locale, "timezone": zone,
        "segment": ("regular", "regular", "new", "vip", "dormant")[(customer_no * 31 + rng_seed) % 5],
    }


def _story(settings: Settings, rng: random.Random, n: int, placed: datetime, pool: int,
           seed: int, truths: list[journeys.Truth] | None,
           incidents: tuple[journeys.Incident, ...], customer: int | None = None,
           doorstep: dict[str, str] | None = None) -> Iterator[Record]:
    orders_topic, tracking = settings.topics.orders, settings.topics.tracking
    customer_no = rng.randrange(pool)
    customer_no = customer_no if customer is None else customer
    person = _customer(customer_no, seed)
    shop = SHOPS[customer_no % len(SHOPS)]
    currency = shop["currency"]
    order_id = f"SO{placed:%Y%m%d}-{seed % 1000:03d}{n:06d}"
    source = f"urn:shop:{shop['id']}:orders"
    lines = rng.sample(ITEMS, rng.randint(1, 3))
    items = [{"sku": sku, "name": name, "quantity": rng.randint(1, 3), "unit_price": price,
              "category": category} for sku, name, price, category in lines]
    total = sum(Decimal(i["unit_price"]) * i["quantity"] for i in items) * RATE[currency]
    ship_by = placed + timedelta(hours=48)
    lanes = journeys.LANES[currency]
    lane = lanes[rng.randrange(len(lanes))]
    lane = lanes[0] if doorstep else lane  # one doorstep: one lane
    # The shop promises a day to ship, the lane's usual time and a day's margin.
    promise = placed + timedelta(hours=48 + lane.typical_hours * 1.2)

    def order_event(kind: str, at: datetime, data: dict[str, Any], suffix: str) -> Record:
        return Record(orders_topic, order_id, kind, f"evt-{order_id}-{suffix}", source, at,
                      {"order_id": order_id, **data})

    yield order_event("order.created", placed, {
        "shop": {k: v for k, v in shop.items() if k != "currency"}, "customer": person,
        "items": items, "total": {"amount": f"{total:.2f}", "currency": currency},
        "placed_at": placed.isoformat(), "promised_ship_by": ship_by.isoformat(),
        "promised_delivery_by": promise.isoformat(),
        "sales_channel": rng.choice(["web", "app", "wechat"]),
    }, "c")
    if rng.random() < 0.03:  # never paid, cancelled by the shop
        at = placed + timedelta(hours=rng.uniform(1, 30))
        yield order_event("order.cancelled", at, {"cancelled_at": at.isoformat(),
                                                  "reason": "unpaid"}, "x")
        return
    paid = placed + timedelta(seconds=rng.randint(5, 900))
    yield order_event("order.paid", paid, {"paid_at": paid.isoformat()}, "p")
    if rng.random() < 0.03:  # the customer changed their mind before shipping
        at = paid + timedelta(hours=rng.uniform(0.5, 20))
        yield order_event("order.cancelled", at, {"cancelled_at": at.isoformat(),
                                                  "reason": "customer_request"}, "x")
        return
    late = rng.random() < 0.06
    ship_at = paid + timedelta(hours=rng.uniform(50, 80) if late else rng.uniform(2, 40))
    yield order_event("order.packed", ship_at - timedelta(hours=1),
                      {"packed_at": (ship_at - timedelta(hours=1)).isoformat()}, "k")
    parcels = 2 if rng.random() < 0.1 else 1
    cancel_after_ship = rng.random() < 0.02
    last_delivery = None
    for p in range(1, parcels + 1):
        sid = f"{order_id}-{p}"
        carrier = lane.carrier
        number = f"{carrier[:2].upper()}{rng.randrange(10**11, 10**12)}"
        label_at = ship_at + timedelta(minutes=rng.randint(0, 90) * (p - 1))
        yield order_event("order.shipped", label_at, {
            "shipment_id": sid, "carrier": carrier, "tracking_number": number,
            "shipped_at": label_at.isoformat(),
            "origin": lane.origin,
            "destination": {**lane.destination, **(doorstep or _doorstep(customer_no))},
        }, f"s{p}")
        truth = journeys.Truth(sid, order_id, lane.key, promise.isoformat(), ring=doorstep is not None,
                               shipped_late=late)
        if truths is not None:
            truths.append(truth)
        for scan_no, (status, occurred, reason, eta) in enumerate(
                journeys.journey(rng, lane, label_at, truth, incidents)):
            checkpoint: dict[str, Any] = {"occurred_at": occurred.isoformat()}
            if status in RAW and rng.random() < 0.3:
                checkpoint["raw_status"] = rng.choice(RAW[status])
            elif status == "UNKNOWN":
                checkpoint["raw_status"] = {"source": "sf-express", "code": "999"}
            else:
                checkpoint["status"] = status
            if reason:
                checkpoint["exception_reason"] = reason
            arrive = occurred + timedelta(minutes=rng.uniform(0, 20))
            if rng.random() < 0.05:  # reported late, after later scans
                arrive += timedelta(hours=rng.uniform(2, 12))
            update = {"order_id": order_id, "shipment_id": sid, "carrier": carrier,
                      "tracking_number": number, "checkpoint": checkpoint}
            if eta:
                update["estimated_delivery"] = eta.isoformat()
            record = Record(tracking, order_id, "tracking.updated", f"trk-{sid}-{scan_no}",
                            "urn:tracking:aggregator", arrive, update)
            yield record
            if rng.random() < 0.05:  # delivered twice by the aggregator
                yield dataclasses.replace(record, time=arrive + timedelta(minutes=3))
            if status == "DELIVERED":
                last_delivery = max(last_delivery or occurred, occurred)
        if cancel_after_ship and p == 1:
            at = label_at + timedelta(hours=rng.uniform(1, 10))
            yield order_event("order.cancelled", at, {"cancelled_at": at.isoformat(),
                                                      "reason": "intercepted"}, "x")
    if last_delivery and rng.random() < 0.05:
        for step, hours, suffix in (("order.return_requested", 30, "rq"),
                                    ("order.return_received", 100, "rv"),
                                    ("order.refunded", 110, "rf")):
            at = last_delivery + timedelta(hours=hours + rng.uniform(0, 5))
            yield order_event(step, at, {"at": at.isoformat()}, suffix)


def _doorstep(customer_no: int) -> dict[str, str]:
    return {"line1": f"{customer_no % 400 + 1} Garden Road, block {customer_no // 400 + 1}",
            "postal_code": f"{(customer_no * 7919) % 90000 + 10000}"}


def _preferences(settings: Settings, rng: random.Random, customer_no: int, at: datetime) -> Record:
    customer_id = f"CU-{customer_no:05d}"
    draw = rng.random()
    data: dict[str, Any] = {
        "customer_id": customer_id,
        "channels": {"email": draw >= 0.1, "sms": True, "push": False, "wechat": False,
                     "in_app": True, "webhook": False},
        "marketing_opt_in": rng.random() < 0.5,
    }
    if rng.random() < 0.5:
        data["quiet_hours"] = rng.choice([{"start": "21:00", "end": "09:00"},
                                          {"start": "23:00", "end": "07:00"}])
    return Record(settings.topics.preferences, customer_id, "customer.preferences_updated",
                  f"pref-{customer_id}-{at.timestamp():.0f}", "urn:shop:accounts", at, data)


async def produce(settings: Settings, records: Iterator[Record], *, rate: float = 0.0,
                  live: bool = False, progress: bool = True) -> int:
    """Send records in order; ``rate`` events per second (0: as fast as possible), or
    ``live``: each at its own event time on this machine's clock."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_servers, linger_ms=5,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    sent, began, last_report = 0, time.monotonic(), time.monotonic()
    try:
        for record in records:
            if live and (wait := (record.time - datetime.now(UTC)).total_seconds()) > 0:
                await asyncio.sleep(wait)
            value, headers = record.encoded()
            await producer.send(record.topic, value, key=record.key.encode(), headers=headers,
                                partition=record.partition)
            sent += 1
            if rate:
                delay = began + sent / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if progress and time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                print(f"simulate: {sent} events produced", file=sys.stderr, flush=True)
        await producer.flush()
    finally:
        await producer.stop()
    return sent
