"""How a ready process treats its memory: start-up's garbage freed, not frozen for good."""

import gc
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
