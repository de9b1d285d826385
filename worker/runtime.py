"""How the worker, the senders and the sinks treat Python's garbage collector once started."""

from __future__ import annotations

import gc

GC_YOUNG_THRESHOLD = 20_000  # allocations between collections of young objects (Python: 700)


def settle() -> None:
    """Call once the process is ready. What start-up built (Faust, aiokafka, aiohttp, rules,
    templates, the senders' ledger) lives as long as the process: frozen, it leaves the
    collector's scans, which otherwise stall the loop for tens of milliseconds at a time
    under load. Requests and events make short-lived objects by the thousand: young ones
    are collected less often. (The senders spent a third of their CPU in the collector.)"""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
