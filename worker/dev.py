"""``notifier dev``: everything on one machine, for `make run`.

Starts the embedded broker (unless ``NOTIFIER_KAFKA_BOOTSTRAP`` names a cluster), the
sinks, the worker and the senders as child processes, feeds the simulator's whole order
journeys of the last days (payments, shipping scans, failed attempts, deliveries, stalls,
delays, returns) at a steady rate, and prints one line per notification outcome as it
happens. The worker runs on the event clock, as in a replay: the stream's ticks move its
time, so two weeks of a shop pass in about 24 minutes, nights and quiet hours included.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from worker import runtime, simulate, topics
from worker.broker import BrokerError, EmbeddedBroker, port_open
from worker.settings import Settings

DEV_DIR = Path("var/dev")
MARKS = {"notification.sent": "sent", "notification.failed": "FAILED",
         "notification.suppressed": "suppressed"}


def run(settings: Settings, *, orders: int, days: float, rate: float) -> int:
    # Our own clients' transient "not leader yet" complaints would drown the live lines;
    # the child processes keep their full logs under var/dev/logs.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    shutil.rmtree(DEV_DIR, ignore_errors=True)
    (DEV_DIR / "logs").mkdir(parents=True)
    broker = None
    env = dict(os.environ, NOTIFIER_OUTBOX=str(DEV_DIR / "outbox.jsonl"), NOTIFIER_CLOCK="event")
    if "NOTIFIER_KAFKA_BOOTSTRAP" not in os.environ:
        port = 9092 if not port_open(9092) else None
        broker = EmbeddedBroker(settings.kafka_libs, DEV_DIR / "broker", port=port)
        say("starting the embedded Apache Kafka broker...")
        try:
            env["NOTIFIER_KAFKA_BOOTSTRAP"] = broker.start()
        except BrokerError as error:
            say(f"cannot start the local broker: {error}")
            return 1
        say(f"broker ready at {broker.bootstrap}")
    settings = Settings(**{**settings.__dict__, "kafka_bootstrap": env["NOTIFIER_KAFKA_BOOTSTRAP"],
                           "outbox": Path(env["NOTIFIER_OUTBOX"])})
    children: list[subprocess.Popen[bytes]] = []
    try:
        asyncio.run(topics.ensure(settings))
        for command in ("sinks", "worker", "senders"):
            children.append(runtime.spawn(command, DEV_DIR / "logs" / f"{command}.log", env=env))
        say(f"sinks inbox:  http://127.0.0.1:{settings.sinks_web_port}/  "
            f"(outbox file {settings.outbox})")
        say(f"tracking:     {settings.public_url.rstrip('/')}/track (every message links to its order's "
            f"page; engagement figures at /stats)")
        say(f"metrics:      http://127.0.0.1:{settings.web_port}/metrics (worker), "
            f"http://127.0.0.1:{settings.senders_web_port}/metrics (senders)")
        say(f"process logs: {DEV_DIR / 'logs'}/   Ctrl-C stops everything.")
        asyncio.run(_feed_and_watch(settings, orders=orders, days=days, rate=rate, children=children))
    except KeyboardInterrupt:
        pass  # Ctrl-C: a stop, said once below
    finally:
        say("stopping...")
        runtime.stop(*children)
        if broker:
            broker.stop()
    return 0


async def _feed_and_watch(settings: Settings, *, orders: int, days: float, rate: float,
                          children: list[subprocess.Popen[bytes]]) -> None:
    # The stream ends about now, so the tracking page's times and the links' expiry read
    # as they would in a shop; its order ids change with the seed.
    records = list(simulate.stories(settings, count=orders, seed=int(time.time()) % 1000,
                                    start=datetime.now(UTC) - timedelta(days=days), days=days,
                                    tick_minutes=60))
    say(f"replaying {orders:,} simulated orders over the last {days:g} days, whole journeys "
        f"(payments, shipping scans, deliveries, delays, returns): {len(records):,} events at "
        f"{rate:g}/s, about {len(records) / rate / 60:.0f} min; notifications appear below")
    tasks = [
        asyncio.create_task(_feed(settings, records, rate)),
        asyncio.create_task(_print_outcomes(settings)),
        asyncio.create_task(_watch(children)),
    ]
    try:
        await asyncio.wait(tasks[1:], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _feed(settings: Settings, records: list[simulate.Record], rate: float) -> None:
    await simulate.produce(settings, iter(records), rate=rate, progress=False)
    # Time moves with the stream: nothing further falls due once it ends.
    say(f"all {len(records):,} events fed; the stream's time stops here. Ctrl-C stops everything.")


async def _print_outcomes(settings: Settings) -> None:
    """One line per notification outcome, with ids and kinds only (no addresses)."""
    consumer = AIOKafkaConsumer(settings.topics.sent, bootstrap_servers=settings.kafka_servers,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        async for record in consumer:
            headers = {k: v.decode() for k, v in record.headers}
            n = orjson.loads(record.value)
            mark = MARKS.get(headers.get("ce_type", ""), "?")
            # The stream's moment (the worker and senders run on its clock), and how long the
            # pipeline took in this machine's time: a notice held through the customer's
            # night waits for the stream's morning.
            moment = n.get("occurred_at", "")[:16].replace("T", " ")
            detail = n.get("reason") or (
                f"{moment} in the stream, {n.get('latency_ms', 0)} ms after its input")
            say(f"{mark:<10} {n['kind']:<16} {n['channel']:<7} order {n['order_id']}  "
                f"customer {n['customer_id']}  ({detail})")
    finally:
        await consumer.stop()


async def _watch(children: list[subprocess.Popen[bytes]]) -> None:
    while all(child.poll() is None for child in children):
        await asyncio.sleep(1)
    dead = next(c for c in children if c.poll() is not None)
    # A clean exit is a stop: Ctrl-C reaches the children too, and one may be done first.
    if dead.returncode != 0:
        say(f"`notifier {dead.args[-1]}` exited with code {dead.returncode}; see {DEV_DIR / 'logs'}")


def say(line: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {line}", flush=True)
