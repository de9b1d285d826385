"""``notifier bench naive``: what a Faust agent costs before any of the worker's own work.

On the embedded broker (or ``NOTIFIER_KAFKA_BOOTSTRAP``) and the stream of ``notifier bench
worker``, cut at ``--events``: the raw pipe of that benchmark, then one Faust agent over
the same inputs in a process of its own (memory store, raw bytes), timed from its first event
to its last, in three forms: iterating only; writing each event's key to a table; and
sending each event to a topic besides. Each form runs on Faust's compiled stream iterator and
on its Python one (the one the worker uses, ``worker/faust_fixes.py`` fix 9). Prints events a
second; the figures the worker's ratio is read against (docs/performance.md), not written.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time

import faust
import faust.streams

from worker import simulate, topics
from worker.bench import broker_for
from worker.bench_worker import _raw_pipe, stream
from worker.settings import Settings, load

FORMS = ("iterate", "table", "send")


def run(settings: Settings, events: int) -> int:
    with broker_for(settings, "notifier-bench-naive-") as (_, env):
        bench = load(env)
        asyncio.run(topics.ensure(bench))
        records = stream(bench, events)
        inputs = sorted({r.topic for r in records})
        asyncio.run(simulate.produce(bench, iter(records), progress=False))
        print(f"raw aiokafka pipe: {asyncio.run(_raw_pipe(bench, inputs, len(records))):,.0f} events/s", flush=True)
        for form, iterator in itertools.product(FORMS, ("compiled", "python")):
            child = subprocess.run(
                [sys.executable, "-m", "worker.bench_naive", form, iterator, str(len(records)), ",".join(inputs)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
            # Faust's worker sends what the agent prints to its log.
            rate = re.search(r"[\d,]+ events/s", child.stdout)
            print(f"Faust agent, {form}, {iterator} iterator: "
                  f"{rate.group() if rate else 'failed: ' + child.stdout[-500:]}", flush=True)
    return 0


def agent(form: str, iterator: str, total: int, inputs: list[str]) -> None:
    """One naive Faust worker; prints its rate and exits after ``total`` events."""
    if iterator == "python":
        faust.streams._CStreamIterator = None
    settings = load()
    app_id = f"bench-naive-{form}-{iterator}-{int(time.time())}"
    app = faust.App(app_id, broker=[f"kafka://{s}" for s in settings.kafka_servers], store="memory://",
                    topic_partitions=settings.partitions, key_serializer="raw", value_serializer="raw",
                    datadir=tempfile.mkdtemp(prefix=app_id), web_enabled=False, stream_wait_empty=False)
    out = app.topic(f"{app_id}.out", allow_empty=True)
    table = app.Table("naive", partitions=settings.partitions)
    table.key_serializer = table.value_serializer = "raw"
    seen: list[float] = []

    @app.agent(app.topic(*inputs, allow_empty=True))
    async def naive(stream: faust.StreamT) -> None:
        async for event in stream.events():
            seen.append(time.monotonic())
            if form in ("table", "send"):
                table[event.message.key] = event.message.value
            if form == "send":
                await out.send(key=event.message.key, value=event.message.value)
            if len(seen) == total:
                print(f"{total / (seen[-1] - seen[0]):,.0f} events/s", flush=True)
                os._exit(0)

    from faust.worker import Worker

    Worker(app, quiet=True, loglevel="warning").execute_from_commandline()


if __name__ == "__main__":
    agent(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(","))
