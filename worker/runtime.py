"""How the product's processes start, how they treat Python's garbage collector once
started, and what the benchmarks read of a process (Linux's /proc)."""

from __future__ import annotations

import ctypes
import gc
import os
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
    are collected less often. (The senders spent a third of their CPU in the collector.)
    Start-up's garbage is collected first: frozen, it would stay for good."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    release_freed_memory()


def release_freed_memory() -> None:
    """Give the pages malloc holds free back to the system. A table's recovery reads its
    changelog in fetches of megabytes; once they are freed, glibc keeps most of that memory
    in the process, where it counts as resident (some 15 of a worker's 250 MiB after it
    recovered 100,000 orders, docs/performance.md). Not glibc: nothing to do."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _libc_malloc_trim() -> Any:
    """glibc's ``malloc_trim``, where the process has one (not musl, not macOS)."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):
        return None


_malloc_trim = _libc_malloc_trim()


def spawn(command: str, log: Path, *, append: bool = False, **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``notifier <command>`` (with its arguments, space-separated) as a child
    process, its output into ``log``. The child has the file; this process closes its own
    copy at once."""
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "worker", *command.split()], stdout=out,
                                stderr=subprocess.STDOUT, **popen)


def stop(*children: subprocess.Popen[bytes], timeout: float = 45.0) -> None:
    """Ask ``children`` to stop (SIGTERM), and kill those still running after ``timeout``
    seconds: longer than a worker's own bound on stopping (``NOTIFIER_STOP_SECONDS``), and
    never leaving one behind, as a wait that gave up did."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def resident_bytes(pid: int) -> int:
    """A process's resident memory; 0 once it has ended (and is not yet reaped)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used, its own and the kernel's on its behalf."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
