"""``notifier bench latency``: from an input to its dispatch command, and on to the
provider's acceptance, at a steady rate.

For each rate, a fresh worker (the wall clock, as in production; topics of its own; quiet
hours off, so that the hour of the run decides nothing) is fed the simulator's stream
(whole order lifecycles with their tracking and preferences, placed over the last day) at
that rate: first for ``SETTLING_SECONDS`` (orders of their own), then for ``seconds``,
counted. For every notification an input sets off at once (a payment, a scan out for
delivery, a delivery: ``AT_ONCE``), the time from the input's record to the dispatch
command's record, both as their producers stamped them: queueing in the broker and behind
a backlog counts. Then the whole product at one rate: the same, with the senders and the
provider sinks beside the worker as in ``make run``, and on to the senders'
``notification.sent`` record, written once the provider has accepted the message.

The steady rate's figures are the counted inputs'; the first seconds of a worker that has
just started, on topics never written to, are slower (its acknowledgements take several
times as long), and are given apart. A rate the worker cannot take shows as a growing
backlog: the latency grows with the run, and the inputs still unread when it ends are
counted. A first run at the first rate, not counted, warms the fresh broker up.
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

from worker import runtime, simulate, topics
from worker.bench import (broker_for, each_record, local_providers, machine, read_through, unread,
                          without_quiet_hours)
from worker.bench_worker import WorkerProcess
from worker.figures import write_block
from worker.settings import CHANNELS, PROJECT_ROOT, Settings, Topics, load
from worker.soak import AT_ONCE

DRAIN_SECONDS = 30  # after the last input, how long the worker may take to catch up
WARM_UP_SECONDS = 20  # the broker's
SETTLING_SECONDS = 10  # each worker's, at the rate measured
SEEDS = {"settling": 2027, "counted": 2026}  # orders of their own (ids carry the seed)


def run(settings: Settings, rates: list[int], seconds: float, product_rate: int) -> int:
    lines = []
    with broker_for(settings, "notifier-bench-latency-") as (workdir, env):
        env.update(without_quiet_hours(workdir), NOTIFIER_LOG_LEVEL="warning", NOTIFIER_CLOCK="wall")
        # A fresh broker answers slowly while its JVM compiles its hot paths, which a
        # production broker did long ago: a first run, not counted, warms it (at 200 events
        # a second, p99 364, 246 and 231 ms in three runs in a row on one fresh broker).
        warm_up = rates[0] if rates else product_rate
        print(f"warming the broker up: {WARM_UP_SECONDS} s at {warm_up:,} events/s...", flush=True)
        _measure(env, workdir, warm_up, {"counted": WARM_UP_SECONDS}, product=False)
        runs = [(rate, False) for rate in rates] + ([(product_rate, True)] if product_rate else [])
        for rate, product in runs:
            got, behind, events = _measure(env, workdir, rate,
                                           {"settling": SETTLING_SECONDS, "counted": seconds}, product)
            steady, first = got["counted"], got["settling"]
            line = (f"{rate:,} events/s for {seconds:g} s ({events['counted']:,} events), wall clock"
                    f"{', with the senders and sinks' if product else ''}: {len(steady.dispatched):,} "
                    f"notifications set off at once, input to dispatch command {_quantiles(steady.dispatched)}")
            if product:
                line += (f", input to the provider's acceptance {_quantiles(steady.accepted)} "
                         f"({len(steady.accepted):,} accepted)")
            line += (f"; {behind:,} inputs still unread {DRAIN_SECONDS} s after the last" if behind
                     else "; every input read")
            if not product:  # the senders start with the worker: their first seconds are theirs
                line += (f"; the fresh worker's first {SETTLING_SECONDS:g} s before them (not "
                         f"counted): {_quantiles(first.dispatched)}")
            print(line, flush=True)
            lines.append(line)
    write_block(PROJECT_ROOT / "docs" / "performance.md", "bench:latency", "Latency",
                f"`notifier bench latency --rates {','.join(map(str, rates))} --product-rate "
                f"{product_rate} --seconds {seconds:g}` on {machine()}, {datetime.now(UTC):%Y-%m-%d}:", lines)
    return 0


@dataclasses.dataclass
class AtOnce:
    """Milliseconds from the inputs to what they set off at once, sorted."""

    dispatched: list[float]  # to the dispatch command
    accepted: list[float]  # to the provider's acceptance (``notification.sent``)


def _measure(env: dict[str, str], workdir: Path, rate: int, phases: dict[str, float],
             product: bool) -> tuple[dict[str, AtOnce], int, dict[str, int]]:
    """One fresh worker (with ``product``, the senders and sinks beside it) fed at ``rate``
    for each phase's seconds in turn: each phase's at-once latencies and inputs, and the
    inputs still unread at the end."""
    # Each run on topics and consumer groups of its own: nothing left from the last.
    app_id = f"bench-latency-{rate}-{time.time_ns()}"
    run_env = {**env, **local_providers(workdir), "NOTIFIER_APP_ID": app_id,
               **{f"NOTIFIER_TOPIC_{f.name.upper()}": f"{app_id}.{f.default}"
                  for f in dataclasses.fields(Topics)}}
    bench = load(run_env)
    asyncio.run(topics.ensure(bench))
    streams = {phase: _stream(bench, rate, seconds, SEEDS[phase]) for phase, seconds in phases.items()}
    worker = WorkerProcess(run_env, workdir, app_id)
    # The SMS sink calls its delivery receipts back to the worker, as in production.
    run_env["NOTIFIER_PUBLIC_URL"] = f"http://127.0.0.1:{worker.port}"
    beside = [runtime.spawn(part, workdir / f"{app_id}-{part}.log", env=run_env, cwd=workdir)
              for part in ("sinks", "senders") if product]
    try:
        worker.ready()
        for phase, records in streams.items():
            print(f"{len(records):,} events at {rate:,}/s ({phase})...", flush=True)
            asyncio.run(simulate.produce(bench, iter(records), rate=rate, progress=False))
        inputs = sorted({r.topic for records in streams.values() for r in records})
        try:
            asyncio.run(read_through(bench, app_id, inputs, timeout=DRAIN_SECONDS))
            if product:
                asyncio.run(read_through(bench, f"{app_id}-senders",
                                         [bench.topics.dispatch(c) for c in CHANNELS], timeout=DRAIN_SECONDS))
            behind = 0
        except TimeoutError:
            behind = asyncio.run(unread(bench, app_id, inputs))
    finally:
        runtime.stop(worker.process, *beside)
    read = asyncio.run(_records(bench))
    inputs_of = {phase: {r.event_id for r in records} for phase, records in streams.items()}
    t = bench.topics
    return ({phase: at_once_latencies(read, {t.orders, t.tracking}, t.sent, ids) for phase, ids in inputs_of.items()},
            behind, {phase: len(records) for phase, records in streams.items()})


def _stream(settings: Settings, rate: int, seconds: float, seed: int) -> list[simulate.Record]:
    total = int(rate * seconds)
    # A day's orders hold about five events each so far: enough orders for the run.
    return list(itertools.islice(simulate.stories(
        settings, count=max(1, total // 3), seed=seed, start=datetime.now(UTC) - timedelta(days=1),
        days=1), total))


async def _records(settings: Settings) -> list[Any]:
    t = settings.topics
    return [r async for r in each_record(
        settings, [t.orders, t.tracking, t.sent, *(t.dispatch(c) for c in CHANNELS)])]


def at_once_latencies(records: list[Any], inputs: set[str], sent: str,
                      counted: set[str] | None = None) -> AtOnce:
    """From each at-once notification's latest cause (a record on one of the ``inputs``
    topics; only those whose ce_id is ``counted``, if given) to its dispatch command (a
    record on any other topic but ``sent``) and to its ``notification.sent`` record on
    ``sent``, by notification and channel."""
    produced: dict[str, int] = {}  # input ce_id -> its record's timestamp
    commands: list[tuple[int, dict[str, Any]]] = []
    accepted: dict[tuple[str, str], int] = {}  # (notification, channel) -> sent record's timestamp
    for record in records:
        if record.topic in inputs:
            ce_id = dict(record.headers).get("ce_id", b"").decode()
            if counted is None or ce_id in counted:
                produced[ce_id] = record.timestamp
        elif record.topic == sent:
            if dict(record.headers).get("ce_type") == b"notification.sent":
                outcome = orjson.loads(record.value)
                accepted[outcome["notification_id"], outcome["channel"]] = record.timestamp
        else:
            commands.append((record.timestamp, orjson.loads(record.value)))
    at_once = AtOnce([], [])
    for dispatched, command in commands:
        causes = [produced[c] for c in command["caused_by"] if c in produced]
        if command["kind"] in AT_ONCE and causes:
            at_once.dispatched.append(float(dispatched - max(causes)))
            if (sent_at := accepted.get((command["notification_id"], command["channel"]))) is not None:
                at_once.accepted.append(float(sent_at - max(causes)))
    at_once.dispatched.sort()
    at_once.accepted.sort()
    return at_once


def _quantiles(values: list[float]) -> str:
    return f"p50 {_quantile(values, 0.5):,.0f} ms, p99 {_quantile(values, 0.99):,.0f} ms"


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")
