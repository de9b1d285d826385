"""Fuzzing the way in: events generated from ``schemas/`` (valid) and broken on purpose
(near-valid) go through the decoder and then the pure decision code of every stage, as
the worker runs them. Whatever an input says, the decoder answers with an envelope or a
:class:`BadInput` (which the worker dead-letters with its reason), and the decision code
never raises: an exception there would dead-letter a valid event, or stop a partition."""

from __future__ import annotations

import copy
import json
import os
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st


from tests.unit.schema_strategies import from_schema
from worker import codec
from worker.codec import BadInput
from worker.domain import customer, engagement, order
from worker.domain.rules import parse
from worker.settings import PROJECT_ROOT

SCHEMAS = PROJECT_ROOT / "schemas"
FIXTURES = Path(__file__).parents[1] / "fixtures"
RULES = parse(tomllib.loads((PROJECT_ROOT / "worker" / "rules.toml").read_text()))
ORDER_TYPES = ("order.created", "order.paid", "order.packed", "order.shipped", "order.cancelled",
               "order.return_requested", "order.return_received", "order.refunded",
               "tracking.updated", "clock.tick")
CUSTOMER_TYPES = ("customer.preferences_updated", *sorted(engagement.ENGAGEMENT_TYPES))
ACCEPTED = frozenset((*ORDER_TYPES, *CUSTOMER_TYPES))
ORDER_ID, CUSTOMER_ID = "SO-FUZZ", "C-FUZZ"
RECEIVED = datetime(2026, 11, 1, tzinfo=UTC)
MAX_BYTES = 1_000_000
# Derandomized, so that make test is the same run every time; FUZZ_EXAMPLES=2000 digs deeper.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _schema(event_type: str) -> dict[str, Any]:
    return orjson.loads((SCHEMAS / f"{event_type}.json").read_bytes())


def _headers(event_type: str, n: int) -> list[tuple[str, bytes]]:
    return [("ce_specversion", b"1.0"), ("ce_id", f"fuzz-{n}".encode()),
            ("ce_source", b"urn:fuzz"), ("ce_type", event_type.encode()),
            ("ce_time", b"2026-11-01T08:00:00+00:00"), ("content-type", b"application/json")]


def _event(event_type: str) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    return from_schema(_schema(event_type)).map(lambda data: (event_type, data))


def _decide(events: list[tuple[str, Any]]) -> list[str]:
    """What the worker does with these records of one order and its customer: decode each,
    fold it into the order's state or the customer's, decide what is due (a month on, so
    every deadline comes), and judge every intent at the customer stage. Returns why each
    record was rejected ("" when it was taken)."""
    rejected = []
    state: order.OrderState | None = None
    person = customer.CustomerState(CUSTOMER_ID)
    latest = RECEIVED
    for n, (event_type, data) in enumerate(events):
        key = (CUSTOMER_ID if event_type in CUSTOMER_TYPES else ORDER_ID).encode()
        # The standard library writes any JSON (integers past 64 bits too), as a producer may.
        value = json.dumps(data, ensure_ascii=False).encode()
        try:
            envelope = codec.decode(key, value, _headers(event_type, n), accepted_types=ACCEPTED,
                                    max_bytes=MAX_BYTES)
        except BadInput as error:
            rejected.append(f"{error.error_type}: {error.message}")
            continue  # dead-lettered with its reason, as the worker does
        rejected.append("")
        if envelope.type in CUSTOMER_TYPES[1:]:
            customer.engaged(person, envelope.type, envelope.data, RECEIVED, RULES)
        elif envelope.type == "customer.preferences_updated":
            customer.update_preferences(person, envelope.data, RECEIVED)
        elif envelope.type != "clock.tick":
            state = order.apply(state, envelope, received_at=RECEIVED).state
        latest = max(latest, envelope.time or latest)
    if state is None:
        return rejected
    for now in (latest, latest + timedelta(days=3), latest + timedelta(days=30)):
        for intent in order.wake(state, now, RULES).intents:
            customer.decide(person, intent, now, RULES, "http://127.0.0.1/webhooks")
        customer.release(person, now, RULES, "http://127.0.0.1/webhooks")
    return rejected


def _same_parties(pair: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """One order and one customer, so that the events meet in the same state."""
    event_type, data = pair
    data = dict(data)
    if "order_id" in data:
        data["order_id"] = ORDER_ID
    if "customer_id" in data:
        data["customer_id"] = CUSTOMER_ID
    if event_type == "order.created" and isinstance(data.get("customer"), dict):
        data["customer"] = {**data["customer"], "id": CUSTOMER_ID}
    return event_type, data


@pytest.mark.parametrize("event_type", [*ORDER_TYPES, *CUSTOMER_TYPES])
def test_every_event_its_schema_allows_decodes_and_is_decided_without_error(event_type):
    @SETTINGS
    @given(st.data())
    def check(data: st.DataObject) -> None:
        # The event after an order.created and a shipment of the same order, so that the
        # decision code has something to decide on.
        context = [data.draw(_event("order.created").map(_same_parties)),
                   data.draw(_event("order.shipped").map(_same_parties))]
        # What its schema allows, the decoder takes.
        assert _decide([*context, data.draw(_event(event_type).map(_same_parties))]) == ["", "", ""]

    check()


@SETTINGS
@given(st.lists(st.sampled_from(ORDER_TYPES + CUSTOMER_TYPES).flatmap(_event).map(_same_parties),
                min_size=1, max_size=12))
def test_any_valid_story_of_one_order_is_decided_without_error(events):
    _decide(events)


def _fixture(name: str) -> tuple[str, dict[str, Any]]:
    raw = orjson.loads((FIXTURES / name).read_bytes())
    return raw["headers"]["ce_type"], raw["value"]


FIXTURE_NAMES = sorted(p.name for p in FIXTURES.glob("*.json"))
ODD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                       st.text(max_size=50), st.just(""), st.just("9999-12-31T23:59:59+00:00"),
                       st.just("0001-01-01T00:00:00+00:00"), st.just("2026-13-45T25:61:00Z"),
                       st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                           st.integers(), max_size=3))


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    """Every place in a JSON value, as a path of keys and indexes."""
    places = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            places += _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            places += _paths(v, (*path, i))
    return places


@SETTINGS
@given(st.sampled_from(FIXTURE_NAMES), st.data())
def test_near_valid_events_are_rejected_cleanly_or_decided_without_error(name, data):
    """A real event with one part broken: a field dropped, or its value replaced by one
    of another type or out of range."""
    event_type, value = _fixture(name)
    broken = copy.deepcopy(value)
    path = data.draw(st.sampled_from(_paths(broken)[1:]))
    parent = broken
    for step in path[:-1]:
        parent = parent[step]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(ODD_VALUES)
    story = [_fixture("order.created.json"), _fixture("order.shipped.json"), (event_type, broken)]
    _decide([_same_parties(p) for p in story])


@SETTINGS
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_bytes_that_are_not_an_event_are_rejected_cleanly(value):
    for event_type in ("order.created", "tracking.updated", "customer.preferences_updated"):
        with pytest.raises(BadInput):
            codec.decode(ORDER_ID.encode(), value, _headers(event_type, 0), accepted_types=ACCEPTED,
                         max_bytes=MAX_BYTES)
