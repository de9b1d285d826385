"""The memory benchmark's copies of held orders: what a fresh worker recovers must be a
real worker's tables, only more of them."""

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import orjson

from worker.agenda import Agenda
from worker.bench_worker import _copies, _partition

T0 = datetime(2026, 10, 3, 8, tzinfo=UTC)
ORDERS = ("SO20261001-026000001", "SO20261001-026000002")


def held_tables() -> dict[str, dict[bytes, bytes]]:
    agenda_table: dict[bytes, bytes] = {}
    agenda = Agenda(agenda_table, "wake")
    orders = {}
    for n, order_id in enumerate(ORDERS):
        orders[order_id.encode()] = orjson.dumps({"order_id": order_id,
                                                  "order": {"customer": {"id": "CU-00007"}}})
        agenda.add(_partition(order_id.encode(), 4), T0 + timedelta(minutes=n), order_id)
    customers = {b"CU-00007": orjson.dumps({"customer_id": "CU-00007", "orders": list(ORDERS)})}
    return {"orders": orders, "order_agenda": agenda_table, "customers": customers}


def test_copies_rename_orders_and_customers_and_stop_at_the_count():
    rows = list(_copies(held_tables(), 5, partitions=4))
    orders = [(key, orjson.loads(value)) for table, key, value, _ in rows if table == "orders"]
    assert len(orders) == 5
    assert len({key for key, _ in orders}) == 5
    for key, state in orders:
        assert state["order_id"].encode() == key  # the id inside moves with the key
    customers = {key for table, key, _, _ in rows if table == "customers"}
    assert customers == {b"CU-00007", b"CU-00007-1", b"CU-00007-2"}
    copied = dict(orders)
    assert copied[b"SO20261001-026000001-2"]["order"]["customer"]["id"] == "CU-00007-2"


def test_every_row_goes_to_its_keys_partition_and_wake_ups_to_their_partitions_buckets():
    rows = list(_copies(held_tables(), 6, partitions=4))
    wakeups: dict[int, list[str]] = defaultdict(list)
    for table, key, value, partition in rows:
        if table == "order_agenda":
            name, p, minute, *_ = key.decode().split("|")
            assert (name, int(p)) == ("wake", partition)
            if minute.isdigit():
                wakeups[partition] += [order_id for _, order_id in orjson.loads(value)]
        else:
            assert partition == _partition(key, 4)
    copied = [key.decode() for table, key, _, _ in rows if table == "orders"]
    assert sorted(w for ws in wakeups.values() for w in ws) == sorted(copied)
    for partition, order_ids in wakeups.items():
        assert all(_partition(o.encode(), 4) == partition for o in order_ids)
    # The recovered agenda wakes them at the held times, as the worker would.
    table = {key: value for t, key, value, _ in rows if t == "order_agenda"}
    agenda = Agenda(table, "wake")
    due = [key for p in range(4) for _, key in agenda.pop_due(p, T0 + timedelta(minutes=5))]
    assert sorted(due) == sorted(copied)
