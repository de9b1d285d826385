"""How a ready process treats its memory (start-up's garbage freed, not frozen for good),
and how children are stopped (none left behind)."""

import gc
import os
import signal
import subprocess
import sys
import weakref

from worker import runtime


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_settle_frees_start_up_garbage_before_freezing_the_rest() -> None:
    kept, garbage = _Node(), _Node()
    kept_ref, garbage_ref = weakref.ref(kept), weakref.ref(garbage)
    del garbage
    threshold = gc.get_threshold()
    try:
        runtime.settle()
        assert garbage_ref() is None
        assert kept_ref() is kept
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_releasing_freed_memory_is_safe_to_call_any_time() -> None:
    runtime.release_freed_memory()
    runtime.release_freed_memory()


def test_a_process_memory_and_cpu_as_the_benchmarks_read_them() -> None:
    pid = os.getpid()
    before, ballast = runtime.cpu_seconds(pid), bytearray(64 << 20)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page: now resident
    assert runtime.resident_bytes(pid) > 64 << 20
    sum(range(3_000_000))  # some CPU
    assert runtime.cpu_seconds(pid) > before


DEAF = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"


def test_children_are_stopped_and_one_that_ignores_sigterm_is_killed():
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    deaf = subprocess.Popen([sys.executable, "-c", DEAF], stdout=subprocess.PIPE)
    deaf.stdout.readline()  # its handler is set
    runtime.stop(polite, deaf, timeout=1)
    assert polite.returncode == -signal.SIGTERM
    assert deaf.returncode == -signal.SIGKILL
