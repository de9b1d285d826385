from dataclasses import replace
from datetime import UTC, datetime

import pytest

from tests.conftest import example
from worker.domain import order
from worker.domain.envelope import Envelope
from worker.domain.notification import notification_id
from worker.stream import load_rules
from worker.settings import Settings

RULES = load_rules(Settings())
NOW = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)


def event(name: str, **changes) -> Envelope:
    e = example(name)
    h = e["headers"]
    envelope = Envelope(id=h["ce_id"], source=h["ce_source"], type=h["ce_type"],
                        time=datetime.fromisoformat(h["ce_time"]), subject=h.get("ce_subject"),
                        data=e["value"])
    return replace(envelope, **changes)


def fold(*events):
    state, intents = None, []
    for e in events:
        outcome = order.apply(state, e, now=NOW, received_at=NOW, rules=RULES)
        state = outcome.state
        intents += outcome.intents
    return state, intents


def test_created_then_paid_confirms_once():
    state, intents = fold(event("order.created"), event("order.paid"))
    assert [i.kind for i in intents] == ["order_confirmed"]
    confirmed = intents[0]
    assert confirmed.customer_id == "CU-88123"
    assert confirmed.caused_by == ["evt-7f3a9c", "evt-7f3a9d"]
    assert confirmed.priority == "transactional"
    assert "email" in confirmed.channels


def test_paid_before_created_still_confirms_once():
    _, intents = fold(event("order.paid"), event("order.created"))
    assert [i.kind for i in intents] == ["order_confirmed"]


def test_created_alone_tells_nobody():
    _, intents = fold(event("order.created"))
    assert intents == []


@pytest.mark.parametrize("repeat", ["order.created", "order.paid"])
def test_a_redelivered_event_has_no_second_effect(repeat):
    state, intents = fold(event("order.created"), event("order.paid"))
    outcome = order.apply(state, event(repeat), now=NOW, received_at=NOW, rules=RULES)
    assert outcome.duplicate and outcome.intents == []


def test_a_second_payment_event_with_a_new_id_does_not_confirm_again():
    _, intents = fold(event("order.created"), event("order.paid"), event("order.paid", id="evt-other"))
    assert len(intents) == 1


def test_cancelled_before_payment_is_never_confirmed():
    cancelled = Envelope(id="c1", source="urn:test", type="order.cancelled", time=NOW, subject=None,
                         data={"order_id": "SO20261102-0001", "cancelled_at": NOW.isoformat()})
    _, intents = fold(event("order.created"), cancelled, event("order.paid"))
    assert intents == []


def test_the_same_facts_give_the_same_notification_id():
    _, first = fold(event("order.created"), event("order.paid"))
    _, again = fold(event("order.paid"), event("order.created"))
    assert first[0].notification_id == again[0].notification_id
    assert notification_id("A", "shipped", "s1") != notification_id("A", "shipped", "s2")


def test_state_round_trips_through_a_dict():
    state, _ = fold(event("order.created"), event("order.paid"))
    assert order.OrderState.from_dict(state.to_dict()) == state


def test_seen_list_stays_bounded():
    state, _ = fold(event("order.created"))
    for n in range(200):
        state = order.apply(state, event("order.paid", id=f"p{n}"), now=NOW, received_at=NOW,
                            rules=RULES).state
    assert len(state.seen) == order.SEEN_LIMIT
