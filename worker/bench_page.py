"""``notifier bench page``: the tracking page under 200 concurrent lookups.

Starts the embedded broker (or uses ``NOTIFIER_KAFKA_BOOTSTRAP``), writes ``--orders``
simulated orders with their tracking, then measures two setups in turn, each a worker and
two page servers (``notifier pages``) following its tables: one answers every lookup with a
page made for it (filled in from the outline its order's first lookup drew), the other
keeps the pages of unchanged orders. Once the worker has committed the orders and the page
servers have read them, ``--concurrency`` lookups (order number and email, over
keep-alive connections) are kept in flight against the worker and then against the page
servers, cycling over the orders: 5 s of earlier lookups (the emails in capitals: the
outlines drawn, the pages of the runs' own requests not kept), then ``--seconds`` from a
cold page cache and ``--seconds`` more with the connections open (where pages are kept, the
pages drawn: customers refreshing). Reports the latency of each lookup (p50, p99) and
lookups per second. The client runs on the same machine and takes its share of the two
cores."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import urllib.request
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
    processes = []
    with broker_for(settings, "notifier-bench-page-") as (workdir, env):
        try:
            env.update({"NOTIFIER_LOG_LEVEL": "warning",
                        # The benchmark is one client address asking for many orders.
                        "NOTIFIER_LOOKUPS_PER_MINUTE": "100000000"})
            bench = load(env)
            asyncio.run(topics.ensure(bench))
            records = list(simulate.stories(bench, count=orders, seed=2026, days=3,
                                            start=datetime.now(UTC) - timedelta(days=4)))
            emails = {r.key: r.data["customer"]["email"] for r in records
                      if r.event_type == "order.created" and r.data["customer"].get("email")}
            paths = [f"/track?{urlencode({'order': order, 'email': email})}" for order, email in emails.items()]
            # The same lookups, the emails in capitals: found alike, but not the pages kept for
            # the runs' own requests.
            earlier = [f"/track?{urlencode({'order': order, 'email': email.upper()})}"
                       for order, email in emails.items()]
            asyncio.run(simulate.produce(bench, iter(records), progress=False))
            print(f"{len(records):,} events of {orders:,} orders written", flush=True)
            figures, warm = {}, {}
            # One setup after the other, each a worker in a consumer group of its own (so it
            # reads every order) and two page servers (notifier pages) following its tables:
            # one makes a page for every lookup, the other keeps the pages of unchanged orders.
            for cache in ("0", str(settings.page_cache_size)):
                group = f"bench-page-{cache}-{int(time.time())}"
                ports = {"worker": free_port(), "pages": free_port()}
                setup = {**env, "NOTIFIER_APP_ID": group, "NOTIFIER_PAGE_CACHE_SIZE": cache}
                processes.append(runtime.spawn(
                    "worker", workdir / f"worker-{cache}.log", cwd=workdir,
                    env={**setup, "NOTIFIER_WEB_PORT": str(ports["worker"]),
                         "NOTIFIER_DATA_DIR": str(workdir / cache)}))
                print(f"page cache {cache}: waiting for the worker...", flush=True)
                asyncio.run(_caught_up(bench, group))
                processes.append(runtime.spawn(
                    f"pages --processes {PAGE_SERVERS}", workdir / f"pages-{cache}.log", cwd=workdir,
                    env={**setup, "NOTIFIER_PAGES_WEB_PORT": str(ports["pages"])}))
                _wait_for_page_servers(ports["pages"], PAGE_SERVERS)
                for who, port in ports.items():
                    print(f"{concurrency} lookups in flight for {seconds:g} s, twice, {who}, "
                          f"page cache {cache}...", flush=True)
                    # Customers' earlier lookups: each process draws an order's page outline at
                    # its first lookup there, and keeps it for the next.
                    _wrk(f"http://127.0.0.1:{port}", earlier, concurrency, WARM_UP_SECONDS, workdir)
                    figures[who, cache] = _wrk(f"http://127.0.0.1:{port}", paths, concurrency, seconds, workdir)
                    # And on, the connections open: with pages kept, customers refreshing.
                    warm[who, cache] = _wrk(f"http://127.0.0.1:{port}", paths, concurrency, seconds, workdir)
                runtime.stop(*processes)
                processes.clear()
        finally:
            runtime.stop(*processes)
    lines = []
    for (who, cache), got in figures.items():
        served = "one worker" if who == "worker" else f"{PAGE_SERVERS} page servers (notifier pages)"
        what = "pages of unchanged orders from memory (the default)" if cache != "0" else \
            "every page filled in from its outline (NOTIFIER_PAGE_CACHE_SIZE=0)"
        line = (f"{served}, {what}, {concurrency} lookups in flight: p50 {got['p50']:.1f} ms, "
                f"p99 {got['p99']:.1f} ms, {got['rate']:,.0f} lookups/s")
        if then := warm.get((who, cache)):
            drawn = ", the pages drawn" if cache != "0" else ""
            line += (f"; the next {seconds:g} s{drawn}: p50 {then['p50']:.1f} ms, "
                     f"p99 {then['p99']:.1f} ms, {then['rate']:,.0f} lookups/s")
        lines.append(line)
    runs = [*figures.values(), *warm.values()]
    lines.append(f"{len(paths):,} orders looked up by order number and email, {seconds:g} s each run, "
                 f"each setup from a cold page cache after {WARM_UP_SECONDS} s of earlier lookups; "
                 f"lookups not answered 200: "
                 f"{sum(f['failed'] for f in runs)} of {sum(f['count'] for f in runs):,}")
    for line in lines:
        print(line)
    write_block(PROJECT_ROOT / "docs" / "performance.md", "bench:page", "Tracking page",
                f"`notifier bench page --orders {orders} --concurrency {concurrency} --seconds {seconds:g}` "
                f"on {machine()}, {datetime.now(UTC):%Y-%m-%d}:", lines)
    return 0


PAGE_SERVERS = 2  # one a core
WARM_UP_SECONDS = 5


def _wait_for_page_servers(port: int, processes: int, timeout: float = 120) -> None:
    """Until every page server process has caught up and listens: each answers /readyz
    with its pid, and the kernel spreads new connections over those listening."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = {}
        for _ in range(10 * processes):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                    ready = orjson.loads(answer.read())
                    seen[ready["pid"]] = ready["ready"]
            except OSError:
                break
        if len(seen) == processes and all(seen.values()):
            return
        time.sleep(0.5)
    raise TimeoutError(f"the page servers on port {port} did not all come up")


LOOKUPS_LUA = """
local paths = {}
for line in io.lines(os.getenv("LOOKUP_PATHS")) do paths[#paths + 1] = line end
local counter = 0
function setup(thread) thread:set("offset", counter); counter = counter + 1 end
local prepared = {}  -- each request formatted once, not on every send
function init(args)
  position = offset * 7919
  for i, path in ipairs(paths) do prepared[i] = wrk.format("GET", path) end
end
function request()
  position = position % #prepared + 1
  return prepared[position]
end
function done(summary, latency, requests)
  io.write(string.format('{"p50": %f, "p90": %f, "p99": %f, "count": %d, "seconds": %f, "failed": %d}\\n',
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, summary.requests,
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
