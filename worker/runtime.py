"""How the product's processes start, and how they treat Python's garbage collector once
started."""

from __future__ import annotations

import gc
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GC_YOUNG_THRESHOLD = 20_000  # allocations between collections of young objects (Python: 700)


def wall_now() -> datetime:
    """The wall clock. The domain never reads it: the stages pass it in."""
    return datetime.now(UTC)


def settle() -> None:
    """Call once the process is ready. What start-up built (Faust, aiokafka, aiohttp, rules,
    templates, the senders' ledger) lives as long as the process: frozen, it leaves the
    collector's scans, which otherwise stall the loop for tens of milliseconds at a time
    under load. Requests and events make short-lived objects by the thousand: young ones
    are collected less often. (The senders spent a third of their CPU in the collector.)"""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def spawn(command: str, log: Path, *, append: bool = False, **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``notifier <command>`` (with its arguments, space-separated) as a child
    process, its output into ``log``. The child has the file; this process closes its own
    copy at once."""
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "worker", *command.split()], stdout=out,
                                stderr=subprocess.STDOUT, **popen)
