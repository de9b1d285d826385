"""The memory benchmark's copies of held orders: what a fresh worker recovers must be a
real worker's tables (states packed as it packs them), only more of them."""

from datetime import UTC, datetime, timedelta

from worker.bench_worker import _copies, _partition
from worker.packing import due, pack, unpack

T0 = datetime(2026, 10, 3, 8, tzinfo=UTC)
ORDERS = ("SO20261001-026000001", "SO20261001-026000002")


def held_tables() -> dict[str, dict[bytes, bytes]]:
    orders = {}
    for n, order_id in enumerate(ORDERS):
        wake_at = (T0 + timedelta(minutes=n)).isoformat()
        orders[order_id.encode()] = pack({
            "order_id": order_id, "order": {"customer": {"id": "CU-00007"}}, "wake_at": wake_at},
            due=wake_at)
    customers = {b"CU-00007": pack({"customer_id": "CU-00007", "orders": list(ORDERS)}, due=None)}
    return {"orders": orders, "customers": customers}


def test_copies_rename_orders_and_customers_and_stop_at_the_count():
    rows = list(_copies(held_tables(), 5, partitions=4))
    orders = [(key, unpack(value)) for table, key, value, _ in rows if table == "orders"]
    assert len(orders) == 5
    assert len({key for key, _ in orders}) == 5
    for key, state in orders:
        assert state["order_id"].encode() == key  # the id inside moves with the key
    customers = {key for table, key, _, _ in rows if table == "customers"}
    assert customers == {b"CU-00007", b"CU-00007-1", b"CU-00007-2"}
    copied = dict(orders)
    assert copied[b"SO20261001-026000001-2"]["order"]["customer"]["id"] == "CU-00007-2"


def test_every_row_goes_to_its_keys_partition_and_keeps_its_wake_up_time():
    rows = list(_copies(held_tables(), 6, partitions=4))
    for table, key, value, partition in rows:
        assert partition == _partition(key, 4)
    orders = [value for table, _, value, _ in rows if table == "orders"]
    wake_ups = sorted(unpack(value)["wake_at"] for value in orders)
    assert wake_ups == sorted([(T0 + timedelta(minutes=n)).isoformat() for n in (0, 1)] * 3)
    # and in front, where the copy's index of wake-ups reads it
    assert sorted(due(value, lambda state: None) for value in orders) == sorted(
        [T0 + timedelta(minutes=n) for n in (0, 1)] * 3)
