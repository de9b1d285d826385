"""Restarts, replays and the event clock, on the real broker with real processes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from tests.integration.conftest import wait_for
from tests.integration.kafka_io import read_all
from worker import settings as settings_module, simulate
from worker.broker import free_port, port_open

pytestmark = pytest.mark.integration
START = datetime(2026, 11, 2, 2, tzinfo=UTC)


def feed(settings, records: list[simulate.Record], *tick_times: datetime) -> None:
    ticks = [t for at in tick_times for t in simulate.ticks(settings, at)]
    asyncio.run(simulate.produce(settings, iter(records + ticks), progress=False))


# RocksDB too: a killed worker keeps its store, and the index of wake-ups is read from it,
# here holding three ahead of the time (NOTIFIER_WAKEUPS_HELD), so read again and again.
@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_kill_and_replay_never_sends_twice_nor_loses_what_was_held(stack, store):
    stack.env["NOTIFIER_CLOCK"] = "event"
    stack.env["NOTIFIER_STORE"] = store
    stack.env["NOTIFIER_WAKEUPS_HELD"] = "3"
    settings = settings_module.load(stack.env)
    for command in ("sinks", "worker", "senders"):
        stack.start(command)
    stack.wait_ready()
    orders = list(simulate.orders(settings, count=50, seed=1, start=START))
    last = max(r.time for r in orders)
    # Placed at 02:00 UTC: night in London, so London's confirmations wait for 08:00.
    held = sum(1 for r in orders if r.event_type == "order.created"
               and r.data["customer"]["timezone"] == "Europe/London")
    assert 0 < held < 50
    feed(settings, orders, last)
    assert wait_for(lambda: len(stack.outbox_entries()) >= 50 - held, timeout=120)
    time.sleep(3)
    assert len(stack.outbox_entries()) == 50 - held, "nothing is sent inside the quiet hours"

    commands = asyncio.run(read_all(settings.kafka_bootstrap, settings.topics.dispatch("email")))
    created = [datetime.fromisoformat(orjson.loads(r.value)["created_at"]) for r in commands]
    # Event clock: "now" is the largest event time seen, i.e. simulated November 2026 times.
    assert all(START <= t < START.replace(day=3) for t in created), created[:3]

    for name in ("worker", "senders"):
        stack.processes[name].send_signal(signal.SIGKILL)
        stack.processes[name].wait()
    for name in ("worker", "senders"):
        stack.start(name)
    stack.wait_ready()
    feed(settings, [], last + timedelta(hours=12))  # London's morning: the held ones go
    assert wait_for(lambda: len(stack.outbox_entries()) >= 50, timeout=120)
    feed(settings, orders, last, last + timedelta(hours=12))  # the same 50 orders again
    # and 10 new ones, late: decided at the next tick the clock moves on
    feed(settings, list(simulate.orders(settings, count=10, seed=2, start=START)),
         last + timedelta(hours=13))
    assert wait_for(lambda: len(stack.outbox_entries()) >= 60, timeout=120)
    time.sleep(3)
    ids = [e["request"]["notification_id"] for e in stack.outbox_entries()]
    assert len(ids) == 60 and len(set(ids)) == 60


def test_broker_command_starts_prints_and_stops(tmp_path):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "worker", "broker", "--port", str(port),
                                "--data", str(tmp_path / "broker")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = process.stdout.readline()
        if "ready" not in first:
            process.kill()
            pytest.fail(first + process.communicate(timeout=30)[0])
        assert f"Kafka broker ready at 127.0.0.1:{port}" in first
        assert port_open(port)
    finally:
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=30)[0]
    assert process.returncode == 0
    assert "Kafka broker stopped." in rest
    assert not port_open(port)


def test_a_bad_setting_stops_at_start_with_one_line():
    result = subprocess.run([sys.executable, "-m", "worker", "worker"], capture_output=True,
                            text=True, env={"NOTIFIER_CLOCK": "lunar", "PATH": "/usr/bin"},
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "notifier: bad setting: NOTIFIER_CLOCK='lunar': expected one of wall, event")
