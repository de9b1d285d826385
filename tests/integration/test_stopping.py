"""A worker asked to stop does stop: cleanly with its broker there, within
``NOTIFIER_STOP_SECONDS`` (or at Ctrl-C twice) with its broker gone, where a clean stop
would wait for ever."""

from __future__ import annotations

import signal
import time

from tests.integration.conftest import Stack, wait_for
from worker.broker import EmbeddedBroker
from worker.settings import PROJECT_ROOT

UNCLEAN = "without a clean leave"
# How a worker finds its broker gone: a produce request in flight fails, or a connection does.
GONE = ("Got error produce response", "Unable connect to node")


def test_a_worker_told_to_stop_leaves_cleanly(stack):
    worker = stack.start("worker")
    stack.wait_ready()
    worker.terminate()
    assert worker.wait(60) == 0
    assert UNCLEAN not in stack.log("worker")


def test_a_worker_whose_broker_is_gone_still_stops(tmp_path):
    broker = EmbeddedBroker(PROJECT_ROOT / ".cache" / "kafka-libs", tmp_path / "kafka")
    stack = Stack(broker.start(), tmp_path)
    try:
        worker = stack.start("worker", NOTIFIER_STOP_SECONDS="3")
        stack.wait_ready()
        broker.process.kill()  # not a clean broker stop: gone
        broker.process.wait()
        assert wait_for(lambda: any(gone in stack.log("worker") for gone in GONE), timeout=60)
        # Its clock ticks once a second: now it has records it cannot send, and its
        # producer's flush in a clean stop would wait for them for ever.
        time.sleep(2)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 1  # 3 s, and then at once
        # Mostly the 3 s run out; now and then a part of Faust crashes on its way out first.
        assert UNCLEAN in stack.log("worker"), stack.noticed("worker")[-4000:]
    finally:
        stack.stop()
        broker.stop()


def test_ctrl_c_twice_stops_a_worker_at_once(stack):
    worker = stack.start("worker", NOTIFIER_STOP_SECONDS="600")
    stack.wait_ready()
    worker.send_signal(signal.SIGINT)
    assert wait_for(lambda: "stopping on SIGINT" in stack.log("worker"), timeout=30)
    worker.send_signal(signal.SIGTERM)  # as `notifier dev` stops its children: the same stop
    worker.send_signal(signal.SIGINT)  # Ctrl-C again, before the clean stop is done
    assert worker.wait(30) == 1
    assert "SIGINT again" in stack.log("worker")


def test_a_stop_signal_during_a_ctrl_c_stop_lets_it_end_cleanly(stack):
    worker = stack.start("worker")
    stack.wait_ready()
    worker.send_signal(signal.SIGINT)  # the terminal's Ctrl-C
    assert wait_for(lambda: "stopping on SIGINT" in stack.log("worker"), timeout=30)
    worker.send_signal(signal.SIGTERM)  # and `notifier dev` stopping its children
    assert worker.wait(60) == 0
    assert UNCLEAN not in stack.log("worker")
