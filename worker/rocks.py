"""RocksDB's memory: one bound for all of a process's tables.

Faust opens a database for every partition of every table (nine tables, four partitions:
36 of them), each with a block cache of its own (2 GiB by default) and up to three write
buffers of 64 MiB. Those are limits per database, so a worker's memory had no useful
bound. Here every database shares one block cache, and a write buffer manager charges the
memtables to that same cache, with the index and filter blocks kept in it too: what
RocksDB holds is about ``NOTIFIER_ROCKSDB_MEMORY_MB`` however many partitions a worker
takes (the figures: docs/performance.md).
"""

from __future__ import annotations

import functools
from typing import Any

import rocksdict
from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as RocksStore


@functools.cache
def _shared(memory_mb: int) -> tuple[Any, Any]:
    """The process's block cache and write buffer manager, made when first asked."""
    cache = rocksdict.Cache(memory_mb << 20)
    # Memtables charged to the cache, up to half of it; past that RocksDB flushes them.
    buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
        memory_mb << 19, False, cache)
    return cache, buffers


class SharedOptions(RocksDBOptions):
    """Faust's options for one database, with the process's cache and buffers."""

    def __init__(self, memory_mb: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.memory_mb = memory_mb
        # A memtable fills to this before it is flushed, or sooner when the manager asks.
        self.write_buffer_size = min(64 << 20, memory_mb << 17)

    def as_options(self) -> Any:
        cache, buffers = _shared(self.memory_mb)
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        if self.max_open_files is not None:  # Faust's: most of the process's own limit
            options.set_max_open_files(self.max_open_files)
        options.set_target_file_size_base(self.target_file_size_base)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_write_buffer_manager(buffers)
        blocks = rocksdict.BlockBasedOptions()
        blocks.set_bloom_filter(self.bloom_filter_size, True)
        blocks.set_block_cache(cache)
        blocks.set_cache_index_and_filter_blocks(True)
        blocks.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
        options.set_block_based_table_factory(blocks)
        return options


def bound(table: Any, memory_mb: int) -> None:
    """Open the table's RocksDB databases (if it has any) within the shared bound."""
    store = table.data
    if isinstance(store, RocksStore):
        if not store.use_rocksdict:
            raise RuntimeError("rocksdb:// needs the rocksdict driver (pip install rocksdict)")
        store.rocksdb_options = SharedOptions(memory_mb, use_rocksdict=True)
