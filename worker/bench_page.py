"""``notifier bench page``: the tracking page under 200 concurrent lookups.

Starts the embedded broker (or uses ``NOTIFIER_KAFKA_BOOTSTRAP``) and one worker, writes
``--orders`` simulated orders with their tracking, waits until the worker has committed
them, then keeps ``--concurrency`` lookups (order number and email, over keep-alive
connections) in flight: first each order once (nothing cached), then the same orders over
and over for ``--seconds`` (customers refreshing: the page of an order that has not changed
comes from memory). Reports the latency of each lookup (p50, p99) and lookups per second.
The client runs on the same machine and takes its share of the two cores.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
import orjson

from worker import runtime, simulate, topics
from worker.bench import broker_for, machine
from worker.broker import free_port
from worker.figures import write_block
from worker.settings import PROJECT_ROOT, Settings, load


def run(settings: Settings, orders: int, concurrency: int, seconds: float) -> int:
    if not shutil.which("wrk"):
        print("notifier bench page needs wrk (Debian package wrk; make bench installs it)")
        return 2
    workers = []
    with broker_for(settings, "notifier-bench-page-") as (workdir, env):
        try:
            env.update({"NOTIFIER_LOG_LEVEL": "warning",
                        # The benchmark is one client address asking for many orders.
                        "NOTIFIER_LOOKUPS_PER_MINUTE": "100000000"})
            bench = load(env)
            asyncio.run(topics.ensure(bench))
            # Two workers, each in a consumer group of its own (so each reads every order): one
            # renders every page, the other keeps the rendered pages of unchanged orders.
            ports, groups = {}, {}
            for cache in ("0", str(settings.page_cache_size)):
                ports[cache], groups[cache] = free_port(), f"bench-page-{cache}-{int(time.time())}"
                workers.append(runtime.spawn(
                    "worker", workdir / f"worker-{cache}.log", cwd=workdir,
                    env={**env, "NOTIFIER_APP_ID": groups[cache], "NOTIFIER_WEB_PORT": str(ports[cache]),
                         "NOTIFIER_PAGE_CACHE_SIZE": cache, "NOTIFIER_DATA_DIR": str(workdir / cache)}))
            records = list(simulate.stories(bench, count=orders, seed=2026, days=3,
                                            start=datetime.now(UTC) - timedelta(days=4)))
            emails = {r.key: r.data["customer"]["email"] for r in records
                      if r.event_type == "order.created" and r.data["customer"].get("email")}
            paths = [f"/track?{urlencode({'order': order, 'email': email})}" for order, email in emails.items()]
            asyncio.run(simulate.produce(bench, iter(records), progress=False))
            print(f"{len(records):,} events of {orders:,} orders written; waiting for the workers...", flush=True)
            for group in groups.values():
                asyncio.run(_caught_up(bench, group))
            figures = {}
            for cache, port in ports.items():
                print(f"{concurrency} lookups in flight for {seconds:g} s, page cache {cache}...", flush=True)
                figures[cache] = _wrk(f"http://127.0.0.1:{port}", paths, concurrency, seconds, workdir)
        finally:
            for worker in workers:
                worker.terminate()
                worker.wait(20)
    rendered, cached = figures["0"], figures[str(settings.page_cache_size)]
    lines = [
        f"every page rendered (NOTIFIER_PAGE_CACHE_SIZE=0), {concurrency} lookups in flight: "
        f"p50 {rendered['p50']:.1f} ms, p99 {rendered['p99']:.1f} ms, {rendered['rate']:,.0f} lookups/s",
        f"pages of unchanged orders from memory (the default), {concurrency} lookups in flight: "
        f"p50 {cached['p50']:.1f} ms, p99 {cached['p99']:.1f} ms, {cached['rate']:,.0f} lookups/s",
        f"{len(paths):,} orders looked up by order number and email, {seconds:g} s each; "
        f"lookups not answered 200: {rendered['failed'] + cached['failed']} of "
        f"{rendered['count'] + cached['count']:,}",
    ]
    for line in lines:
        print(line)
    write_block(PROJECT_ROOT / "docs" / "performance.md", "bench:page", "Tracking page",
                f"`notifier bench page --orders {orders} --concurrency {concurrency} --seconds {seconds:g}` "
                f"on {machine()}, {datetime.now(UTC):%Y-%m-%d}:", lines)
    return 0


LOOKUPS_LUA = """
local paths = {}
for line in io.lines(os.getenv("LOOKUP_PATHS")) do paths[#paths + 1] = line end
local counter = 0
function setup(thread) thread:set("offset", counter); counter = counter + 1 end
function init(args) position = offset * 7919 end
function request()
  position = position % #paths + 1
  return wrk.format("GET", paths[position])
end
function done(summary, latency, requests)
  io.write(string.format('{"p50": %f, "p99": %f, "count": %d, "seconds": %f, "failed": %d}\\n',
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.requests,
    summary.duration / 1e6, summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout))
end
"""


def _wrk(base: str, paths: list[str], concurrency: int, seconds: float, workdir: Path) -> dict[str, float]:
    """``concurrency`` lookups in flight for ``seconds``, by wrk (a C load generator, so the
    client takes little of the CPU the worker is measured on)."""
    (workdir / "paths.txt").write_text("\n".join(paths) + "\n")
    (workdir / "lookups.lua").write_text(LOOKUPS_LUA)
    run = subprocess.run(["wrk", "-t2", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "10s",
                          "-s", str(workdir / "lookups.lua"), base + paths[0]],
                         env={**os.environ, "LOOKUP_PATHS": str(workdir / "paths.txt")},
                         capture_output=True, text=True, check=True)
    figures = orjson.loads(run.stdout.strip().splitlines()[-1])
    figures["rate"] = figures["count"] / figures["seconds"]
    return figures


async def _caught_up(settings: Settings, group: str, timeout: float = 600) -> None:
    """Wait until the worker's group has read every topic it reads (the orders, and what
    they set off: intents, lanes, outcomes) to the end, twice in a row."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_servers)
    await admin.start()
    await consumer.start()
    try:
        inputs = {settings.topics.orders, settings.topics.tracking}
        deadline, quiet = time.monotonic() + timeout, 0
        while time.monotonic() < deadline and quiet < 2:
            await asyncio.sleep(2)
            try:
                committed = await admin.list_consumer_group_offsets(group)
            except KafkaError:  # the group is not there yet: the worker is starting
                continue
            ends = await consumer.end_offsets(list(committed))
            # The clock's ticks come every second: a few records behind is caught up.
            done = inputs <= {tp.topic for tp in committed} and all(
                ends[tp] - meta.offset <= 50 for tp, meta in committed.items())
            quiet = quiet + 1 if done else 0
        if quiet < 2:
            raise TimeoutError("the worker did not catch up in time")
    finally:
        await consumer.stop()
        await admin.close()
