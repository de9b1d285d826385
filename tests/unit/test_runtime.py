"""How a ready process treats its memory: start-up's garbage freed, not frozen for good."""

import gc
import os
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
