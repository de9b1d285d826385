"""A synthetic stream of orders, reproducible from a seed.

:func:`orders` is pure: it yields the records (topic, key, CloudEvent) of each
order in time order. :func:`produce` sends them to Kafka, paced or as fast as it can.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaProducer

from worker import codec
from worker.settings import Settings

SHOPS = [
    {"id": "xinghe", "name": "星河小铺", "support_url": "https://xinghe.example/help",
     "support_phone": "+862158880000", "currency": "CNY"},
    {"id": "taipei-tea", "name": "台北茶舖", "support_url": "https://taipei-tea.example/help",
     "currency": "TWD"},
    {"id": "northwind", "name": "Northwind Goods", "support_url": "https://northwind.example/help",
     "currency": "USD"},
]
CUSTOMERS = {
    "CNY": (("张伟", "王芳", "李娜", "刘洋", "陈静"), "zh-CN", "Asia/Shanghai", "+86138"),
    "TWD": (("林志明", "黃美玲", "陳建宏"), "zh-TW", "Asia/Taipei", "+886912"),
    "USD": (("Alex Kim", "Maria Lopez", "Sam Carter", "Priya Patel"), "en", "America/Los_Angeles", "+1415"),
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


async def produce(settings: Settings, records: Iterator[Record], *, rate: float = 0.0,
                  progress: bool = True) -> int:
    """Send records in order; ``rate`` events per second (0: as fast as possible)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_servers, linger_ms=5,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    sent, began, last_report = 0, time.monotonic(), time.monotonic()
    try:
        for record in records:
            value, headers = record.encoded()
            await producer.send(record.topic, value, key=record.key.encode(), headers=headers)
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
