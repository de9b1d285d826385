"""RocksDB tables share one bound on their memory, whatever the count of partitions."""

import os

import faust
from faust.types import TP

from worker import rocks
from worker.settings import load
from worker.stream import build_app

STATE = 600  # bytes: about a packed order state


def test_every_partition_of_every_table_caches_in_the_one_shared_bound(tmp_path):
    app = faust.App("rocks-bound", broker="kafka://127.0.0.1:1", store="rocksdb://",
                    datadir=str(tmp_path))
    tables = [app.Table(name, partitions=4) for name in ("orders", "customers")]
    for table in tables:
        rocks.bound(table, 16)
    cache, buffers = rocks._shared(16)
    databases = [table.data._db_for_partition(p) for table in tables for p in range(4)]
    payload = os.urandom(STATE * 1024)  # random bytes: RocksDB cannot compress them away

    for n in range(40_000):  # 24 MB of states over 8 databases, half again the bound
        start = n % 1000 * STATE
        databases[n % 8][b"SO-%08d" % n] = payload[start:start + STATE]
    assert buffers.get_usage() > 0  # the memtables, charged to the cache
    for db in databases:
        db.flush()
        assert sum(len(v) for _, v in db.items()) == 5_000 * STATE

    # Flushed and read again, through the one cache (Faust's default gives each database
    # its own 2 GiB), which kept no more than its size.
    assert 1 << 20 < cache.get_usage() <= 16 << 20
    for db in databases:
        db.close()


def test_a_workers_tables_on_rocksdb_read_back_the_bytes_they_were_given(tmp_path):
    settings = load({"NOTIFIER_STORE": "rocksdb://", "NOTIFIER_DATA_DIR": str(tmp_path),
                     "NOTIFIER_ROCKSDB_MEMORY_MB": "16"})
    app = build_app(settings)
    for name in ("orders", "customers"):
        table = app.tables[name]
        store = table.data
        # Partition 0 is this worker's (Faust reads a RocksDB table's assigned partitions).
        app.assignor.assigned_actives = lambda table=table: {TP(table.changelog_topic_name, 0)}
        assert isinstance(store.rocksdb_options, rocks.SharedOptions)
        db = store._db_for_partition(0)
        db[b"SO-1"] = b"\x00a packed state"
        # Keys and values as they were written, not through Faust's JSON codec (the index
        # of wake-ups is built from them).
        assert list(store.items()) == [(b"SO-1", b"\x00a packed state")]
        db.close()
