"""`make run` (``notifier dev``) as a new user meets it: the whole journeys of a simulated
shop told within seconds, one line each, and Ctrl-C stopping everything it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from tests.integration.conftest import wait_for


def test_make_run_tells_payments_and_shipping_at_once_and_stops_on_ctrl_c(stack):
    # The session's broker and this test's topics and ports: `notifier dev` starts no broker
    # of its own when one is named, as with an existing cluster.
    dev = subprocess.Popen([sys.executable, "-m", "worker", "dev", "--orders", "40", "--rate", "50"],
                           cwd=stack.workdir, env=stack.env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line) for line in dev.stdout))
    reader.start()

    def first(*words: str) -> float | None:
        return next((at for at, line in list(lines) if all(w in line.split() for w in words)), None)

    def said() -> str:
        return "".join(line for _, line in lines)

    try:
        assert wait_for(lambda: first("sent", "shipped") or dev.poll() is not None, timeout=120), said()
        fed, confirmed = first("replaying"), first("sent", "order_confirmed")
        assert fed and confirmed and first("sent", "shipped"), said()
        assert confirmed - fed < 30  # issue 1: a confirmation within 30 s
        assert not any("@" in line for _, line in lines)  # ids and kinds, never an address
    finally:
        os.killpg(dev.pid, signal.SIGINT)  # the terminal's Ctrl-C reaches the whole group
        code = dev.wait(90)
        reader.join(10)
    assert code == 0
    # A stop, not a crash, and said once (a child done first had it said twice).
    assert said().count("stopping...") == 1 and "exited with code" not in said()
    assert wait_for(lambda: not _alive(dev.pid), timeout=30)  # no child left behind


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False
