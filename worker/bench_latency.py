"""``notifier bench latency``: from an input to its dispatch command, at a steady rate.

For each rate, a fresh worker (the wall clock, as in production; topics of its own) is fed
the simulator's stream (whole order lifecycles with their tracking and preferences, placed
over the last day) at that rate: first for ``SETTLING_SECONDS`` (orders of their own), then
for ``seconds``, counted. For every notification an input sets off at once (a payment, a
scan out for delivery, a delivery: ``AT_ONCE``), the time from the input's record to the
dispatch command's record, both as their producers stamped them: queueing in the broker and
behind a backlog counts. The steady rate's figures are the counted inputs'; the first
seconds of a worker that has just started, on topics never written to, are slower (its
acknowledgements take several times as long), and are given apart. A rate the worker
cannot take shows as a growing backlog: the latency grows with the run, and the inputs still
unread when it ends are counted. A first run at the first rate, not counted, warms the
fresh broker up.
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
WARM_UP_SECONDS = 20  # the broker's
SETTLING_SECONDS = 10  # each worker's, at the rate measured
SEEDS = {"settling": 2027, "counted": 2026}  # orders of their own (ids carry the seed)


def run(settings: Settings, rates: list[int], seconds: float) -> int:
    lines = []
    with broker_for(settings, "notifier-bench-latency-") as (workdir, env):
        env.update(NOTIFIER_LOG_LEVEL="warning", NOTIFIER_CLOCK="wall")
        # A fresh broker answers slowly while its JVM compiles its hot paths, which a
        # production broker did long ago: a first run, not counted, warms it (at 200 events
        # a second, p99 364, 246 and 231 ms in three runs in a row on one fresh broker).
        print(f"warming the broker up: {WARM_UP_SECONDS} s at {rates[0]:,} events/s...", flush=True)
        _measure(env, workdir, "warm-up", rates[0], {"counted": WARM_UP_SECONDS})
        for rate in rates:
            got, behind, events = _measure(env, workdir, str(rate), rate,
                                           {"settling": SETTLING_SECONDS, "counted": seconds})
            steady, first = got["counted"], got["settling"]
            line = (f"{rate:,} events/s for {seconds:g} s ({events['counted']:,} events), wall clock: "
                    f"{len(steady):,} notifications set off at once, input to dispatch command "
                    f"p50 {_quantile(steady, 0.5):,.0f} ms, p99 {_quantile(steady, 0.99):,.0f} ms")
            line += (f"; {behind:,} inputs still unread {DRAIN_SECONDS} s after the last" if behind
                     else "; every input read")
            line += (f"; the fresh worker's first {SETTLING_SECONDS:g} s before them (not counted): "
                     f"p50 {_quantile(first, 0.5):,.0f} ms, p99 {_quantile(first, 0.99):,.0f} ms")
            print(line, flush=True)
            lines.append(line)
    write_block(PROJECT_ROOT / "docs" / "performance.md", "bench:latency", "Latency",
                f"`notifier bench latency --rates {','.join(map(str, rates))} --seconds {seconds:g}` "
                f"on {machine()}, {datetime.now(UTC):%Y-%m-%d}:", lines)
    return 0


def _measure(env: dict[str, str], workdir: Path, name: str, rate: int,
             phases: dict[str, float]) -> tuple[dict[str, list[float]], int, dict[str, int]]:
    """One fresh worker fed at ``rate`` for each phase's seconds in turn: each phase's at-once
    latencies (ms, sorted) and inputs, and the inputs still unread at the end."""
    # Each run on topics and a consumer group of its own: nothing left from the last.
    run_env = {**env, "NOTIFIER_APP_ID": f"bench-latency-{name}-{int(time.time())}",
               **{f"NOTIFIER_TOPIC_{f.name.upper()}": f"latency{name}.{f.default}"
                  for f in dataclasses.fields(Topics)}}
    bench = load(run_env)
    asyncio.run(topics.ensure(bench))
    streams = {phase: _stream(bench, rate, seconds, SEEDS[phase]) for phase, seconds in phases.items()}
    worker = WorkerProcess(run_env, workdir, run_env["NOTIFIER_APP_ID"])
    try:
        worker.ready()
        for phase, records in streams.items():
            print(f"{len(records):,} events at {rate:,}/s ({phase})...", flush=True)
            asyncio.run(simulate.produce(bench, iter(records), rate=rate, progress=False))
        inputs = sorted({r.topic for records in streams.values() for r in records})
        try:
            asyncio.run(read_through(bench, run_env["NOTIFIER_APP_ID"], inputs, timeout=DRAIN_SECONDS))
            behind = 0
        except TimeoutError:
            behind = asyncio.run(unread(bench, run_env["NOTIFIER_APP_ID"], inputs))
    finally:
        worker.stop()
    read = asyncio.run(_records(bench))
    inputs_of = {phase: {r.event_id for r in records} for phase, records in streams.items()}
    t = bench.topics
    return ({phase: at_once_latencies(read, {t.orders, t.tracking}, ids) for phase, ids in inputs_of.items()},
            behind, {phase: len(records) for phase, records in streams.items()})


def _stream(settings: Settings, rate: int, seconds: float, seed: int) -> list[simulate.Record]:
    total = int(rate * seconds)
    # A day's orders hold about five events each so far: enough orders for the run.
    return list(itertools.islice(simulate.stories(
        settings, count=max(1, total // 3), seed=seed, start=datetime.now(UTC) - timedelta(days=1),
        days=1), total))


async def _records(settings: Settings) -> list[Any]:
    t = settings.topics
    return [r async for r in each_record(settings, [t.orders, t.tracking, *(t.dispatch(c) for c in CHANNELS)])]


def at_once_latencies(records: list[Any], inputs: set[str], counted: set[str] | None = None) -> list[float]:
    """Milliseconds from each at-once notification's latest cause (a record on one of the
    ``inputs`` topics; only those whose ce_id is ``counted``, if given) to its dispatch
    command (any other record), sorted."""
    produced: dict[str, int] = {}  # input ce_id -> its record's timestamp
    commands: list[tuple[int, dict[str, Any]]] = []
    for record in records:
        if record.topic in inputs:
            ce_id = dict(record.headers).get("ce_id", b"").decode()
            if counted is None or ce_id in counted:
                produced[ce_id] = record.timestamp
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
