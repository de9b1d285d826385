"""``notifier``: one console script for every process of the product."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from worker import logs, runtime, settings as settings_module, topics
from worker.settings import Settings, SettingsError

log = logging.getLogger("worker.cli")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="notifier", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("worker", help="the stream processor (Faust)")
    commands.add_parser("senders", help="the channel senders")
    commands.add_parser("sinks", help="local stand-ins for the providers (SMTP, HTTP APIs)")
    pages = commands.add_parser("pages", help="tracking-page servers that follow the worker's "
                                "tables, several processes on one port")
    pages.add_argument("--processes", type=int, default=2, help="page server processes")
    broker = commands.add_parser("broker", help="the embedded single-node Apache Kafka broker")
    broker.add_argument("--port", type=int, default=None, help="listener port (default: from "
                        "NOTIFIER_KAFKA_BOOTSTRAP, else 9092)")
    broker.add_argument("--data", type=Path, default=Path("var/broker"), help="data folder")
    dev = commands.add_parser("dev", help="broker, worker, senders, sinks and a simulated stream")
    dev.add_argument("--orders", type=int, default=2_000, help="orders to simulate")
    dev.add_argument("--days", type=float, default=14, help="event days the orders span, ending now")
    dev.add_argument("--rate", type=float, default=20.0, help="input events per second")
    simulate = commands.add_parser("simulate", help="produce a synthetic order stream")
    simulate.add_argument("--orders", type=int, default=1000)
    simulate.add_argument("--seed", type=int, default=1)
    simulate.add_argument("--rate", type=float, default=0.0, help="events per second; 0: max")
    simulate.add_argument("--days", type=float, default=14,
                          help="event-time span of the whole lifecycles (for NOTIFIER_CLOCK=event)")
    simulate.add_argument("--start", type=datetime.fromisoformat, default=None,
                          help="time of the first order (RFC 3339); default now")
    simulate.add_argument("--evaluate", action="store_true",
                          help="no broker: run the stream through the decision code, score stall "
                               "detection and delay prediction against the simulator's ground "
                               "truth, print the figures and write them to docs/prediction.md")
    bench = commands.add_parser("bench", help="throughput and latency figures, written to "
                                "docs/performance.md")
    bench.add_argument("scenario", choices=["senders", "page", "worker", "latency", "naive", "domain"],
                       help="senders: notifications a second; page: tracking-page lookups; "
                            "worker: the stream worker against a raw pipe, and memory an order; "
                            "latency: input to dispatch command at steady rates, wall clock, and on to the provider; "
                            "naive: a bare Faust agent on the same stream, for scale; "
                            "domain: the decision code alone on that stream, without Kafka")
    bench.add_argument("--backlog", type=int, default=20_000, help="senders: notifications queued at once")
    bench.add_argument("--rate", type=float, default=500, help="senders: steady notifications per second")
    bench.add_argument("--seconds", type=float, default=20, help="how long the steady run lasts")
    bench.add_argument("--orders", type=int, default=2_000, help="page: orders to look up")
    bench.add_argument("--concurrency", type=int, default=200, help="page: lookups in flight")
    bench.add_argument("--events", type=int, default=100_000, help="worker, naive, domain: events in the stream")
    bench.add_argument("--active", type=_counts,
                       default=[100_000, 1_000_000], help="worker: active orders to measure memory at")
    bench.add_argument("--rates", type=_counts, default=[20, 200, 2_000],
                       help="latency: input events a second, one run each")
    bench.add_argument("--product-rate", type=int, default=200,
                       help="latency: input events a second for the run with the senders and sinks (0: none)")
    soak = commands.add_parser("soak", help="the whole product at a steady rate for a while: memory, "
                               "lag and latency over time (docs/soak.png, docs/performance.md)")
    soak.add_argument("--minutes", type=float, default=10, help="how long the stream goes in")
    soak.add_argument("--rate", type=float, default=100, help="input events a second")
    soak.add_argument("--days", type=float, default=200,
                      help="event days the stream spans (more than the rules' keep_days)")
    soak.add_argument("--every", type=float, default=10, help="seconds between two looks")
    args = parser.parse_args(argv)

    try:
        settings = settings_module.load()
    except SettingsError as error:
        print(f"notifier: bad setting: {error}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level, settings.log_format)
    runner = {
        "worker": run_worker, "senders": run_senders, "sinks": run_sinks, "pages": run_pages, "broker": run_broker,
        "dev": run_dev, "simulate": run_simulate, "bench": run_bench, "soak": run_soak,
    }[args.command]
    try:
        return runner(settings, args) or 0
    except KeyboardInterrupt:
        return 130


async def _prepare(settings: Settings, what: str, more: dict[str, dict[str, str]] | None = None) -> None:
    await topics.wait_for_broker(settings, what=what)
    created = await topics.ensure(settings, more)
    if created:
        log.info("created topics: %s", ", ".join(created))


def run_worker(settings: Settings, args: argparse.Namespace) -> int:
    from faust.worker import Worker

    from worker.stream import build_app

    (settings.data_dir / "worker").mkdir(parents=True, exist_ok=True)
    app = build_app(settings)
    # The tables' changelogs too. Faust creates them as it starts, sometimes after its
    # first assignment, and a table whose changelog its consumer has not seen refuses
    # every write (PartitionsMismatch) until the next metadata refresh, minutes later.
    changelogs = {t.changelog_topic_name: {"cleanup.policy": "compact"} for t in app.tables.values()}
    asyncio.run(_prepare(settings, "worker", changelogs))

    class BoundedStop(Worker):  # type: ignore[misc]
        """Faust's worker with a deadline on stopping. A stop commits, leaves the group and
        flushes the producer; with the broker gone those wait for ever, and so does whatever
        waits for the process. Past ``stop_seconds``, or when the same signal comes again
        (Ctrl-C twice), the process exits as a kill would: at-least-once reading and
        idempotent effects make that safe (the fault suite kills workers on purpose). A
        different signal joins the stop under way: `notifier dev` sends SIGTERM to the
        worker that the terminal's Ctrl-C has just reached."""

        first_signal: signal.Signals | None = None

        def _schedule_shutdown(self, sig: signal.Signals) -> None:
            if sig == self.first_signal:
                _exit_unstopped(f"{sig.name} again")
            if self.first_signal is not None:
                return
            self.first_signal = sig
            logging.getLogger("worker").info(
                "stopping on %s: a clean stop, %g s at most (%s again exits at once)",
                sig.name, settings.stop_seconds, sig.name)
            super()._schedule_shutdown(sig)
            self.loop.call_later(settings.stop_seconds, _exit_unstopped,
                                 f"{settings.stop_seconds:g} s without stopping")

        def _shutdown_loop(self) -> None:
            try:
                super()._shutdown_loop()
            finally:
                if self.crash_reason:  # which Faust re-raises once its loop is closed
                    _exit_unstopped(f"it crashed ({type(self.crash_reason).__name__}, logged above)")

    worker = BoundedStop(app, quiet=True, loglevel=settings.log_level,
                         logging_config=logs.logging_config(settings.log_level, settings.log_format))
    worker.execute_from_commandline()
    return 0


def _exit_unstopped(why: str) -> None:
    logging.getLogger("worker").error(
        "stopping the worker: %s; exiting now, without a clean leave (what it had not "
        "committed is read again by the partitions' next owner)", why)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)


def run_senders(settings: Settings, args: argparse.Namespace) -> int:
    import uvloop

    from worker.senders.service import SendersService, serve_web

    async def serve() -> None:
        await _prepare(settings, "senders")
        web = await serve_web(settings)
        try:
            await _until_signalled(SendersService(settings).run())
        finally:
            await web.cleanup()

    uvloop.run(serve())  # its event loop does the same work in about two thirds of the CPU
    return 0


def run_sinks(settings: Settings, args: argparse.Namespace) -> int:
    import uvloop

    from worker import sinks

    async def serve() -> None:
        servers = await sinks.serve(settings)
        runtime.settle()
        try:
            await _until_signalled(None)
        finally:
            for server in servers:
                if hasattr(server, "cleanup"):
                    await server.cleanup()
                else:
                    server.close()

    uvloop.run(serve())
    return 0


def run_pages(settings: Settings, args: argparse.Namespace) -> int:
    from worker import page_server

    if args.processes < 1:
        print("notifier pages: --processes must be 1 or more", file=sys.stderr)
        return 2
    asyncio.run(topics.wait_for_broker(settings, what="pages"))
    return page_server.run(settings, args.processes)


def _counts(value: str) -> list[int]:
    """``--active 100000,1000000``: positive whole numbers, comma-separated."""
    try:
        counts = [int(n) for n in value.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected positive counts, such as 1000,10000")
    return counts


def run_bench(settings: Settings, args: argparse.Namespace) -> int:
    from worker import bench

    if args.scenario == "page":
        from worker import bench_page

        return bench_page.run(settings, args.orders, args.concurrency, args.seconds)
    if args.scenario == "worker":
        from worker import bench_worker

        return bench_worker.run(settings, args.events, args.active)
    if args.scenario == "latency":
        from worker import bench_latency

        return bench_latency.run(settings, args.rates, args.seconds, args.product_rate)
    if args.scenario == "naive":
        from worker import bench_naive

        return bench_naive.run(settings, args.events)
    if args.scenario == "domain":
        from worker import bench_domain

        return bench_domain.run(settings, args.events)
    return bench.run(settings, args.backlog, args.rate, args.seconds)


def run_soak(settings: Settings, args: argparse.Namespace) -> int:
    from worker import soak

    return soak.run(settings, args.minutes, args.rate, args.days, args.every)


def run_broker(settings: Settings, args: argparse.Namespace) -> int:
    import threading

    from worker.broker import BrokerError, EmbeddedBroker

    # Handlers first, so a signal that arrives at any moment still stops the broker cleanly.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    port = args.port or int(settings.kafka_servers[0].rpartition(":")[2])
    broker = EmbeddedBroker(settings.kafka_libs, args.data, port=port)
    try:
        bootstrap = broker.start()
        print(f"Kafka broker ready at {bootstrap} (data in {args.data}); Ctrl-C stops it.",
              flush=True)
        while not stop.wait(0.5):
            pass
    except BrokerError as error:
        print(f"notifier broker: {error}", file=sys.stderr)
        return 1
    finally:
        broker.stop()
    print("Kafka broker stopped.", flush=True)
    return 0


def run_dev(settings: Settings, args: argparse.Namespace) -> int:
    from worker.dev import run

    return run(settings, orders=args.orders, days=args.days, rate=args.rate)


def evaluate(settings: Settings, args: argparse.Namespace, start: datetime) -> int:
    from worker import evaluate as scoring
    from worker.settings import PROJECT_ROOT

    how = (f"notifier simulate --evaluate --orders {args.orders} --days {args.days:g} "
           f"--seed {args.seed} --start {start.isoformat()}")
    print(f"evaluating {args.orders} orders over {args.days:g} simulated days...", flush=True)
    scores = scoring.run(settings, orders=args.orders, days=args.days, seed=args.seed, start=start)
    for line in scores.lines():
        print(line)
    page = PROJECT_ROOT / "docs" / "prediction.md"
    if page.is_file():
        scoring.write_doc(page, scores, how)
        print(f"written to {page}")
    return 0


def run_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from worker import simulate

    start = args.start or datetime.now(UTC)
    if args.evaluate:
        return evaluate(settings, args, start)
    records = simulate.stories(settings, count=args.orders, seed=args.seed, start=start,
                               days=args.days)

    async def feed() -> int:
        await _prepare(settings, "simulate")
        return await simulate.produce(settings, records, rate=args.rate)

    sent = asyncio.run(feed())
    print(f"simulate: {sent} events produced to {settings.kafka_bootstrap}", flush=True)
    return 0


async def _until_signalled(task: object) -> None:
    """Run ``task`` (a coroutine, or nothing) until it ends or SIGINT/SIGTERM arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiters = [asyncio.ensure_future(stop.wait())]
    if task is not None:
        waiters.append(asyncio.ensure_future(task))  # type: ignore[arg-type]
    done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for future in pending:
        future.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for future in done:
        future.result()


if __name__ == "__main__":
    sys.exit(main())
