"""``notifier soak``: the whole product at a steady rate for a while, watched over time.

The broker (embedded, unless ``NOTIFIER_KAFKA_BOOTSTRAP`` names a cluster), the sinks,
the worker (event clock) and the senders run as processes; the simulator's event-clock
stream (whole order lifecycles over ``days`` of event time, with their tracking,
preferences and ticks) goes in at ``rate`` events a second for ``minutes``. Every
``every`` seconds: the worker's and the senders' resident memory, the worker's lag on
its inputs, the parcels on their way and the orders forgotten so far, and the latency
from an input's arrival to the provider's acceptance of what its scan or payment set off
at once (``AT_ONCE``; quiet hours off), sent since the last look. Printed as it goes, plotted into ``docs/soak.png``, summed up in
``docs/performance.md``.

The stream spans more event days than the rules keep a finished order (``keep_days``):
memory must stop growing once orders are forgotten as fast as new ones come.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import statistics
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from worker import runtime, simulate, topics
from worker.bench import broker_for, local_providers, machine, unread, without_quiet_hours
from worker.bench_worker import START, WorkerProcess
from worker.figures import write_block
from worker.settings import PROJECT_ROOT, Settings, load

EVENTS_PER_ORDER = 14  # the stories' mix of inputs, preferences included (measured); ticks aside
TICK_MINUTES = 60  # event minutes between two ticks on each partition
# Told as soon as the scan or the payment is read: their latency is the pipeline's own, where
# a stall or a review request waits for event time to pass.
AT_ONCE = frozenset({"order_confirmed", "out_for_delivery", "delivered", "delivery_failed",
                     "available_for_pickup"})
METRIC = re.compile(r"^(notifier_active_shipments|notifier_orders_forgotten_total)\s+(\S+)$", re.M)


@dataclass
class Sample:
    minute: float
    event_day: float  # how far the stream's event time got, in days from its start
    worker_mib: float
    senders_mib: float
    lag: int
    active: int
    forgotten: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass
class Latencies:
    """What the senders reported sent, since the last look."""

    fresh: list[float] = field(default_factory=list)
    total: int = 0

    def take(self) -> list[float]:
        taken, self.fresh = sorted(self.fresh), []
        return taken


def run(settings: Settings, minutes: float, rate: float, days: float, every: float) -> int:
    with broker_for(settings, "notifier-soak-") as (workdir, env):
        app_id = f"soak-{int(time.time())}"
        env.update({**local_providers(workdir), **without_quiet_hours(workdir)},
                   NOTIFIER_CLOCK="event", NOTIFIER_APP_ID=app_id)
        soak = load(env)
        asyncio.run(topics.ensure(soak))
        total = int(rate * minutes * 60)
        ticks = days * 24 * 60 / TICK_MINUTES * soak.partitions
        orders = max(1, int((total - ticks) / EVENTS_PER_ORDER))
        records = list(itertools.islice(
            simulate.stories(soak, count=orders, seed=2026, start=START, days=days,
                             tick_minutes=TICK_MINUTES),
            total))
        print(f"{len(records):,} events ({orders:,} orders over {days:g} event days) at "
              f"{rate:g}/s for {minutes:g} min", flush=True)
        children = [runtime.spawn(name, workdir / f"{name}.log", env=env, cwd=workdir)
                    for name in ("sinks", "senders")]
        worker = WorkerProcess(env, workdir, app_id)
        try:
            worker.ready()
            samples = asyncio.run(_soak(soak, records, rate, every, worker, children[1], app_id))
        finally:
            runtime.stop(worker.process, *children)  # at once: one wait for all three
    plot = PROJECT_ROOT / "docs" / "soak.png"
    _plot(samples, plot, f"notifier soak: {rate:g} events/s for {minutes:g} min, "
                         f"{days:g} event days ({machine()})")
    lines = _summary(samples)
    for line in lines:
        print(line)
    write_block(PROJECT_ROOT / "docs" / "performance.md", "soak", "Soak",
                f"`notifier soak --minutes {minutes:g} --rate {rate:g} --days {days:g}` on "
                f"{machine()}, {datetime.now(UTC):%Y-%m-%d} (plot: [soak.png](soak.png)):", lines)
    return 0


async def _soak(settings: Settings, records: list[simulate.Record], rate: float, every: float,
                worker: WorkerProcess, senders: subprocess.Popen[bytes], app_id: str) -> list[Sample]:
    latencies = Latencies()
    listening = asyncio.create_task(_listen(settings, latencies))
    producing = asyncio.create_task(simulate.produce(settings, iter(records), rate=rate, progress=False))
    inputs = [settings.topics.orders, settings.topics.tracking]
    first, samples, began = records[0].time, [], time.monotonic()
    try:
        while True:
            await asyncio.sleep(every)
            lag = await unread(settings, app_id, inputs)
            scraped = dict(METRIC.findall(_get(f"http://127.0.0.1:{worker.port}/metrics")))
            taken = latencies.take()
            produced = min(len(records) - 1, int((time.monotonic() - began) * rate))
            sample = Sample(
                minute=(time.monotonic() - began) / 60,
                event_day=(records[produced].time - first).total_seconds() / 86400,
                worker_mib=worker.rss() / 2**20, senders_mib=runtime.resident_bytes(senders.pid) / 2**20, lag=lag,
                active=int(float(scraped.get("notifier_active_shipments", 0))),
                forgotten=int(float(scraped.get("notifier_orders_forgotten_total", 0))),
                p50_ms=statistics.median(taken) if taken else None,
                p99_ms=taken[int(0.99 * (len(taken) - 1))] if taken else None)
            samples.append(sample)
            print(f"{sample.minute:5.1f} min  event day {sample.event_day:5.1f}  worker "
                  f"{sample.worker_mib:5.0f} MiB  senders {sample.senders_mib:4.0f} MiB  lag {lag:6,}  "
                  f"on their way {sample.active:6,}  forgotten {sample.forgotten:7,}  sent "
                  f"{latencies.total:7,}  p99 {sample.p99_ms or 0:6.0f} ms", flush=True)
            if producing.done() and lag == 0:
                return samples
    finally:
        producing.cancel()
        listening.cancel()
        await asyncio.gather(producing, listening, return_exceptions=True)


async def _listen(settings: Settings, latencies: Latencies) -> None:
    consumer = AIOKafkaConsumer(settings.topics.sent, bootstrap_servers=settings.kafka_servers,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        async for record in consumer:
            if dict(record.headers).get("ce_type") == b"notification.sent":
                sent = orjson.loads(record.value)
                latencies.total += 1
                if sent["kind"] in AT_ONCE:
                    latencies.fresh.append(sent["latency_ms"])
    finally:
        await consumer.stop()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read().decode()


def _summary(samples: list[Sample]) -> list[str]:
    worker = [s.worker_mib for s in samples]
    late = [s for s in samples if s.p99_ms is not None]
    tail = samples[len(samples) * 3 // 4:]
    return [
        f"{len(samples)} looks over {samples[-1].minute:.1f} min, event days 0 to {samples[-1].event_day:.0f}",
        f"worker resident memory: {worker[0]:,.0f} MiB at the first look, {max(worker):,.0f} MiB at most, "
        f"{worker[-1]:,.0f} MiB at the end; over the last quarter "
        f"{min(s.worker_mib for s in tail):,.0f}–{max(s.worker_mib for s in tail):,.0f} MiB",
        f"senders resident memory: {max(s.senders_mib for s in samples):,.0f} MiB at most",
        f"orders forgotten (kept their keep_days and done): {samples[-1].forgotten:,}; parcels on "
        f"their way at the end: {samples[-1].active:,}",
        f"worker lag on its inputs: {max(s.lag for s in samples):,} records at most",
        f"input arrival to provider acceptance ({', '.join(sorted(AT_ONCE))}), per look: p50 "
        f"{statistics.median(s.p50_ms for s in late):,.0f} ms (median of the looks), p99 at most "
        f"{max(s.p99_ms for s in late):,.0f} ms" if late else "nothing was sent",
    ]


def _plot(samples: list[Sample], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    minutes = [s.minute for s in samples]
    figure, (memory, lag, latency) = pyplot.subplots(3, 1, sharex=True, figsize=(9, 8))
    figure.suptitle(title, fontsize=10)
    memory.plot(minutes, [s.worker_mib for s in samples], label="worker")
    memory.plot(minutes, [s.senders_mib for s in samples], label="senders")
    memory.set_ylabel("resident memory (MiB)")
    memory.legend(loc="upper left")
    held = memory.twinx()
    held.plot(minutes, [s.forgotten for s in samples], color="grey", linestyle=":",
              label="orders forgotten")
    held.set_ylabel("orders forgotten")
    held.legend(loc="lower right")
    lag.plot(minutes, [s.lag for s in samples], color="tab:red")
    lag.set_ylabel("worker lag (records)")
    timed = [s for s in samples if s.p99_ms is not None]
    latency.plot([s.minute for s in timed], [s.p50_ms for s in timed], label="p50")
    latency.plot([s.minute for s in timed], [s.p99_ms for s in timed], label="p99")
    latency.set_ylabel("input to provider (ms)")
    latency.set_xlabel("minutes")
    latency.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
