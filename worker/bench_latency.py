"""``notifier bench latency``: from an input to its dispatch command, at a steady rate.

For each rate, a fresh worker (the wall clock, as in production; topics of its own) is fed
the simulator's stream (whole order lifecycles with their tracking and preferences, placed
over the last day) at that rate for ``seconds``. Then, for every notification an input sets
off at once (a payment, a scan out for delivery, a delivery: ``AT_ONCE``), the time from the
input's record to the dispatch command's record, both as their producers stamped them:
queueing in the broker and behind a backlog counts. A rate the worker cannot take shows as
a growing backlog: the latency grows with the run, and the inputs still unread when it
ends are counted. A first run at the first rate, not counted, warms the fresh broker up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from worker import simulate, topics
from worker.bench import broker_for, each_record, machine, read_through, unread
from worker.bench_worker import WorkerProcess
from worker.figures import write_block
from worker.settings import CHANNELS, PROJECT_ROOT, Settings, Topics, load
from worker.soak import AT_ONCE

DRAIN_SECONDS = 30  # after the last input, how long the worker may take to catch up
WARM_UP_SECONDS = 20


def run(settings: Settings, rates: list[int], seconds: float) -> int:
    lines = []
    with broker_for(settings, "notifier-bench-latency-") as (workdir, env):
        env.update(NOTIFIER_LOG_LEVEL="warning", NOTIFIER_CLOCK="wall")
        # A fresh broker answers slowly while its JVM compiles its hot paths, which a
        # production broker did long ago: a first run, not counted, warms it (at 200 events
        # a second, p99 364, 246 and 231 ms in three runs in a row on one fresh broker).
        print(f"warming the broker up: {WARM_UP_SECONDS} s at {rates[0]:,} events/s...", flush=True)
        _measure(env, workdir, "warm-up", rates[0], WARM_UP_SECONDS)
        for rate in rates:
            got, behind, events = _measure(env, workdir, str(rate), rate, seconds)
            line = (f"{rate:,} events/s for {seconds:g} s ({events:,} events), wall clock: "
                    f"{len(got):,} notifications set off at once, input to dispatch command "
                    f"p50 {_quantile(got, 0.5):,.0f} ms, p99 {_quantile(got, 0.99):,.0f} ms")
            line += (f"; {behind:,} inputs still unread {DRAIN_SECONDS} s after the last" if behind
                     else "; every input read")
            print(line, flush=True)
            lines.append(line)
    write_block(PROJECT_ROOT / "docs" / "performance.md", "bench:latency", "Latency",
                f"`notifier bench latency --rates {','.join(map(str, rates))} --seconds {seconds:g}` "
                f"on {machine()}, {datetime.now(UTC):%Y-%m-%d}:", lines)
    return 0


def _measure(env: dict[str, str], workdir: Path, name: str, rate: int,
             seconds: float) -> tuple[list[float], int, int]:
    """One run of a fresh worker at ``rate``: the at-once latencies (ms, sorted), the inputs
    still unread at the end, the inputs."""
    # Each run on topics and a consumer group of its own: nothing left from the last.
    run_env = {**env, "NOTIFIER_APP_ID": f"bench-latency-{name}-{int(time.time())}",
               **{f"NOTIFIER_TOPIC_{f.name.upper()}": f"latency{name}.{f.default}"
                  for f in dataclasses.fields(Topics)}}
    bench = load(run_env)
    asyncio.run(topics.ensure(bench))
    total = int(rate * seconds)
    # A day's orders hold about five events each so far: enough orders for the run.
    records = list(itertools.islice(simulate.stories(
        bench, count=max(1, total // 3), seed=2026, start=datetime.now(UTC) - timedelta(days=1),
        days=1), total))
    worker = WorkerProcess(run_env, workdir, run_env["NOTIFIER_APP_ID"])
    try:
        worker.ready()
        print(f"{len(records):,} events at {rate:,}/s...", flush=True)
        asyncio.run(simulate.produce(bench, iter(records), rate=rate, progress=False))
        inputs = sorted({r.topic for r in records})
        try:
            asyncio.run(read_through(bench, run_env["NOTIFIER_APP_ID"], inputs, timeout=DRAIN_SECONDS))
            behind = 0
        except TimeoutError:
            behind = asyncio.run(unread(bench, run_env["NOTIFIER_APP_ID"], inputs))
    finally:
        worker.stop()
    return asyncio.run(_latencies(bench)), behind, len(records)


async def _latencies(settings: Settings) -> list[float]:
    t = settings.topics
    names = [t.orders, t.tracking, *(t.dispatch(c) for c in CHANNELS)]
    return at_once_latencies([r async for r in each_record(settings, names)], inputs={t.orders, t.tracking})


def at_once_latencies(records: list[Any], inputs: set[str]) -> list[float]:
    """Milliseconds from each at-once notification's latest cause (a record on one of the
    ``inputs`` topics) to its dispatch command (any other record), sorted."""
    produced: dict[str, int] = {}  # input ce_id -> its record's timestamp
    commands: list[tuple[int, dict[str, Any]]] = []
    for record in records:
        if record.topic in inputs:
            produced[dict(record.headers).get("ce_id", b"").decode()] = record.timestamp
        else:
            commands.append((record.timestamp, orjson.loads(record.value)))
    latencies = []
    for dispatched, command in commands:
        causes = [produced[c] for c in command["caused_by"] if c in produced]
        if command["kind"] in AT_ONCE and causes:
            latencies.append(float(dispatched - max(causes)))
    return sorted(latencies)


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")
