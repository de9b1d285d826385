"""Many customers ordering to one doorstep: one alert per burst, and no address in it."""

import orjson

from worker import schemas
from worker.address_book import AddressBook
from worker.domain import risk

RULES = risk.Risk(distinct_customers=3, window_hours=24)
DOOR = {"country": "CN", "region": "Shanghai", "city": "Shanghai", "postal_code": "200030",
        "line1": "88 Harbour Street, unit 3"}


def sightings(n: int, *, hours_apart: float = 1, day: int = 1, customer=lambda i: f"C{i}"):
    return [risk.Sighting(risk.fingerprint(DOOR), f"SO-{day}-{i}", customer(i),
                          f"2026-11-{day:02d}T{int(i * hours_apart):02d}:00:00+00:00") for i in range(n)]


def raised(book: AddressBook, told: list[risk.Sighting]) -> list:
    return [a for s in told if (a := book.seen(0, s))]


def test_the_same_doorstep_written_differently_is_one_address_and_a_postal_area_is_none():
    same = {**DOOR, "line1": "88  harbour street unit 3", "city": "SHANGHAI"}
    assert risk.fingerprint(same) == risk.fingerprint(DOOR)
    assert risk.fingerprint({**DOOR, "line1": "90 Harbour Street, unit 3"}) != risk.fingerprint(DOOR)
    assert risk.fingerprint({k: v for k, v in DOOR.items() if k != "line1"}) is None


def test_a_third_customer_in_a_day_raises_one_alert_without_the_address():
    book = AddressBook({}, RULES)
    [alert] = raised(book, sightings(6))
    assert alert.type == "alert.suspicious_orders" and alert.figures["customers"] == 3
    assert alert.figures["orders"] == ["SO-1-0", "SO-1-1", "SO-1-2"]
    assert "Harbour" not in str(alert.data()) and "200030" not in str(alert.data())
    assert schemas.problem("alert.suspicious_orders", alert.data()) is None


def test_one_customer_ordering_often_or_orders_spread_over_days_are_not_suspicious():
    book = AddressBook({}, RULES)
    assert raised(book, sightings(10, customer=lambda i: "C1")) == []
    book = AddressBook({}, RULES)
    assert raised(book, [s for d in (1, 3, 5) for s in sightings(2, day=d)]) == []


def test_parcels_told_out_of_order_or_twice_count_each_order_once():
    book = AddressBook({}, RULES)
    told = sightings(3)
    assert raised(book, [told[2], told[0], told[0], told[1]]) != []
    book = AddressBook({}, RULES)
    assert raised(book, [told[0], told[1], told[1], told[0]]) == []


def test_a_new_burst_after_a_quiet_window_alerts_again():
    book = AddressBook({}, RULES)
    assert len(raised(book, sightings(4, day=1) + sightings(4, day=5))) == 2


def test_addresses_leave_the_table_with_their_window():
    table: dict[bytes, bytes] = {}
    book = AddressBook(table, RULES)
    for day in range(1, 29):
        door = {**DOOR, "line1": f"{day} Garden Road"}
        book.seen(0, risk.Sighting(risk.fingerprint(door), f"SO-{day}", f"C{day}",
                                   f"2026-11-{day:02d}T10:00:00+00:00"))
    addresses = [k for k in table if k.startswith(b"addr-")]
    assert 1 <= len(addresses) <= book.days_kept + 1


def doorsteps(n: int, day: int) -> list[risk.Sighting]:
    return [risk.Sighting(risk.fingerprint({**DOOR, "line1": f"{i} Market Street"}), f"SO-{day}-{i}",
                          f"C{i}", f"2026-11-{day:02d}T10:00:00+00:00") for i in range(n)]


def test_a_sale_day_keeps_its_index_in_small_pieces_and_forgets_it_whole():
    table: dict[bytes, bytes] = {}
    book = AddressBook(table, RULES)
    sale = doorsteps(1_000, day=1)
    for sighting in sale + sale[:300]:  # some told twice: listed once
        book.seen(0, sighting)
    pieces = {k: orjson.loads(v) for k, v in table.items() if k.startswith(b"day|0|2026-11-01")}
    listed = [a for piece in pieces.values() for a in piece]
    assert sorted(listed) == sorted({s.address for s in sale})
    assert len(pieces) == 10 and max(len(table[k]) for k in pieces) < 4_000  # bytes a record
    book.seen(0, doorsteps(1, day=9)[0])  # a week on: the sale day has left the window
    assert not [k for k in table if k.startswith(b"day|0|2026-11-01")]
    assert sum(k.startswith(b"addr-") for k in table) == 1


def test_an_index_written_before_it_came_in_pieces_is_read_and_forgotten():
    old = doorsteps(3, day=1)
    table = {b"days|0": orjson.dumps(["2026-11-01"]),
             b"day|0|2026-11-01": orjson.dumps([s.address for s in old])}
    table |= {s.address.encode(): orjson.dumps(risk.seen(None, s, RULES)[0]) for s in old}
    book = AddressBook(table, RULES)
    book.seen(0, doorsteps(4, day=1)[3])  # the same day goes on in the old piece
    assert orjson.loads(table[b"days|0"]) == {"2026-11-01": 1}
    assert len(orjson.loads(table[b"day|0|2026-11-01"])) == 4
    book.seen(0, doorsteps(5, day=9)[4])
    assert sorted(table) == sorted([b"days|0", b"day|0|2026-11-09", doorsteps(5, day=9)[4].address.encode()])
