"""Whole order stories through the pure decision code (order stage, then customer stage)."""

from __future__ import annotations

import functools
import random
from datetime import timedelta

import pytest
from hypothesis import given, settings, strategies as st

from tests.unit.stories import (
    RULES, Erase, Fail, Prefs, Tick, at, cancelled, created, paid, returned, run, scan, shipped, story, tick,
)
from worker.domain import order
from worker.domain.clock import stamp

HAPPY = [created(0), paid(0.1), shipped(20), scan(21, "PICKED_UP"), scan(30, "IN_TRANSIT"),
         scan(44, "ARRIVED_AT_DESTINATION"), scan(46, "OUT_FOR_DELIVERY"), scan(49, "DELIVERED")]


@pytest.mark.parametrize("name, steps, expected", [
    ("happy path", HAPPY,
     ["order_confirmed", "shipped", "out_for_delivery", "delivered", "review_request"]),
    ("created alone tells nobody", [created(0)], []),
    ("paid before created still confirms once", [paid(0), created(0.05)],
     ["order_confirmed", "ship_delayed"]),
    ("a label alone: shipped after the grace, a stall when never picked up",
     [created(0), paid(0.1), shipped(20)], ["order_confirmed", "shipped", "tracking_stalled"]),
    ("first news is the delivery: only delivered",
     [created(0), paid(0.1), shipped(20), scan(20.5, "DELIVERED")],
     ["order_confirmed", "delivered", "review_request"]),
    ("out for delivery then delivered within 10 minutes collapses",
     [created(0), paid(0.1), shipped(20), scan(21, "PICKED_UP"), scan(46, "OUT_FOR_DELIVERY"),
      scan(46.1, "DELIVERED")],
     ["order_confirmed", "shipped", "delivered", "review_request"]),
    ("a late IN_TRANSIT after delivery notifies nobody",
     [*HAPPY, scan(30.5, "IN_TRANSIT", ident="late")],
     ["order_confirmed", "shipped", "out_for_delivery", "delivered", "review_request"]),
    ("failed attempt then delivered next day",
     [created(0), paid(0.1), shipped(20), scan(21, "PICKED_UP"), scan(46, "OUT_FOR_DELIVERY"),
      scan(48, "DELIVERY_FAILED"), scan(70, "OUT_FOR_DELIVERY"), scan(72, "DELIVERED")],
     ["order_confirmed", "shipped", "out_for_delivery", "delivery_failed", "out_for_delivery",
      "delivered", "review_request"]),
    ("customs hold on a cross-border parcel",
     [created(0), paid(0.1), shipped(20), scan(21, "PICKED_UP"), scan(40, "CUSTOMS")],
     ["order_confirmed", "shipped", "customs_hold", "tracking_stalled"]),
    ("exception with a reason",
     [created(0), paid(0.1), shipped(20), scan(21, "PICKED_UP"), scan(40, "EXCEPTION", reason="address")],
     ["order_confirmed", "shipped", "delivery_exception"]),
    ("pickup point", [created(0), paid(0.1), shipped(20), scan(21, "PICKED_UP"),
                      scan(45, "AVAILABLE_FOR_PICKUP")],
     ["order_confirmed", "shipped", "available_for_pickup"]),
    ("not shipped by the promise: apology", [created(0), paid(0.1)],
     ["order_confirmed", "ship_delayed"]),
    ("cancelled before shipping: nothing else follows",
     [created(0), paid(0.1), cancelled(5), shipped(20), scan(21, "PICKED_UP")],
     ["order_confirmed", "order_cancelled"]),
    ("cancelled after shipping", [created(0), paid(0.1), shipped(20), scan(21, "PICKED_UP"),
                                  cancelled(25), scan(44, "DELIVERED")],
     ["order_confirmed", "shipped", "order_cancelled"]),
    ("return after delivery: no review request",
     [*HAPPY, returned("return_requested", 60), returned("refunded", 100)],
     ["order_confirmed", "shipped", "out_for_delivery", "delivered", "return_update",
      "return_update"]),
    ("split order: each parcel on its own, review after the last",
     [created(0), paid(0.1), shipped(20, "P1"), shipped(22, "P2"), scan(21, "PICKED_UP", "P1"),
      scan(23, "PICKED_UP", "P2"), scan(40, "DELIVERED", "P1"), scan(90, "DELIVERED", "P2")],
     ["order_confirmed", "shipped", "shipped", "delivered", "tracking_stalled", "delivered",
      "review_request"]),
    ("carrier's own codes", [created(0), paid(0.1), shipped(20),
                             scan(21, {"source": "sf-express", "code": "50"}),
                             scan(45, {"source": "aftership", "tag": "Delivered"})],
     ["order_confirmed", "shipped", "delivered", "review_request"]),
    ("an unknown code moves nothing", [created(0), paid(0.1), shipped(20),
                                       scan(21, {"source": "sf-express", "code": "999"})],
     ["order_confirmed", "shipped", "tracking_stalled"]),
])
def test_order_story(name, steps, expected):
    assert run(*story(*steps), through_customer=False).kinds() == expected


def test_shipped_waits_for_the_label_grace_without_a_scan():
    told = run(*story(created(0), paid(0.1), shipped(20), until=30), through_customer=False)
    shipped_at = [i.created_at for i in told.intents if i.kind == "shipped"]
    assert shipped_at == ["2026-11-03T02:00:00+00:00"]  # label at 22:00 UTC + 4 h


def test_quiet_hours_hold_transactional_until_morning_in_shanghai():
    # Paid at 23:30 Shanghai (15:30 UTC): the confirmation waits for 08:00 local.
    told = run(*story(created(13.4), paid(13.5), until=30))
    assert told.sent() == [("order_confirmed", "2026-11-03T00:00:00+00:00")]


@pytest.mark.parametrize("zone, paid_hours, released", [
    ("America/Los_Angeles", 7.0, "2026-11-02T16:00:00+00:00"),  # 01:00 PST -> 08:00 PST
    ("Europe/London", 22.5, "2026-11-03T08:00:00+00:00"),  # 00:30 GMT -> 08:00 GMT
])
def test_quiet_hours_in_the_customers_own_zone(zone, paid_hours, released):
    told = run(*story(created(paid_hours - 0.1, timezone=zone), paid(paid_hours), until=40))
    assert told.sent() == [("order_confirmed", released)]


def test_quiet_hours_across_the_end_of_dst_in_los_angeles():
    # 2026-11-01: clocks go back at 02:00 PDT. Paid 23:00 PDT on 31 Oct = 06:00 UTC 1 Nov,
    # 20 hours before the stories' start; the night is nine hours long, not eight.
    steps = [created(-20.1, timezone="America/Los_Angeles"), paid(-20)]
    told = run(*story(*steps, since=-21, until=0))
    assert told.sent() == [("order_confirmed", "2026-11-01T16:00:00+00:00")]  # 08:00 PST


def test_urgent_goes_at_once_inside_quiet_hours():
    steps = [created(0), paid(0.1), shipped(1), scan(2, "PICKED_UP"), scan(15.5, "DELIVERY_FAILED")]
    told = run(*story(*steps, until=20))
    assert ("delivery_failed", "2026-11-02T17:30:00+00:00") in told.sent()  # 01:30 Shanghai


def test_marketing_needs_opt_in():
    assert ("review_request", "opted_out") in run(*story(*HAPPY)).suppressed()
    told = run(*story(*HAPPY), preferences={"marketing_opt_in": True})
    assert "review_request" in told.sent_kinds()


def test_dormant_customers_get_service_messages_only():
    steps = [created(0, segment="dormant"), *HAPPY[1:]]
    told = run(*story(*steps), preferences={"marketing_opt_in": True})
    assert ("review_request", "segment_service_only") in told.suppressed()


def test_opted_out_of_every_channel_is_suppressed():
    prefs = {"channels": {"email": False, "sms": False, "wechat": False, "push": False,
                          "in_app": False}}
    told = run(*story(created(0), paid(0.1), until=5), preferences=prefs)
    assert told.suppressed() == [("order_confirmed", "opted_out")]


def test_high_value_orders_use_two_channels_and_alert_on_exceptions():
    steps = [created(0, total="899.00"), paid(0.1), shipped(20), scan(21, "PICKED_UP"),
             scan(40, "EXCEPTION", reason="damaged")]
    told = run(*story(*steps, until=60))
    exception = [a for _, a in told.actions if getattr(a, "routes", None)
                 and a.intent.kind == "delivery_exception"]
    assert [r.channel for r in exception[0].routes] == ["email", "sms"]
    assert [a.type for a in told.alerts] == ["alert.high_value_exception"]


def test_ship_delay_raises_an_sla_alert():
    told = run(*story(created(0), paid(0.1), until=60), through_customer=False)
    assert [a.type for a in told.alerts] == ["alert.ship_sla_breached"]


def test_delivered_supersedes_a_held_shipped():
    # Picked up 23:00 Shanghai, delivered 07:00: only `delivered` at 08:00.
    steps = [created(0), paid(0.1), shipped(12), scan(13, "PICKED_UP"), scan(21, "DELIVERED")]
    told = run(*story(*steps, until=30))
    assert ("shipped", "superseded") in told.suppressed()
    assert told.sent_kinds() == ["order_confirmed", "delivered"]


def test_vip_customers_also_hear_that_the_parcel_reached_their_city():
    steps = [created(0, segment="vip"), *HAPPY[1:]]
    told = run(*story(*steps), preferences={"quiet_hours": {"start": "03:00", "end": "03:01"}})
    assert "in_transit_update" in told.sent_kinds()


def test_the_daily_cap_stops_capped_kinds_but_never_key_moments():
    from tests.unit.stories import RULES, at
    from worker.domain import customer
    from worker.domain.notification import Intent

    person = customer.CustomerState("CU-1")
    def intent(n: int, kind: str) -> Intent:
        return Intent(f"ntf-{n}", kind, "transactional", f"O-{n}", "CU-1", at(1).isoformat(), [],
                      at(1).isoformat(), {"customer": {"email": "a@b.c", "timezone": "UTC"}},
                      channels=["email"])
    kinds = ["delivered", "delivered", "delivered", "customs_hold", "delivered"]
    actions = [customer.decide(person, intent(n, k), at(8 + n), RULES)[-1]  # 10:00 UTC on
               for n, k in enumerate(kinds)]
    assert [type(a).__name__ for a in actions] == ["Send", "Send", "Send", "Suppress", "Send"]
    assert actions[3].reason == "frequency_capped"


def test_replay_gives_the_same_ids():
    first = run(*story(*HAPPY), through_customer=False)
    again = run(*story(*HAPPY), through_customer=False)
    assert [i.notification_id for i in first.intents] == [i.notification_id for i in again.intents]


@functools.cache
def happy_ids() -> list[str]:
    return [i.notification_id for i in run(*story(*HAPPY), through_customer=False).intents]


@settings(max_examples=10, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, 3))
def test_shuffled_and_duplicated_checkpoints_tell_the_same(rnd: random.Random, copies: int):
    """Checkpoints arriving between two decisions, in any order and any number of times,
    give the same notifications."""
    steps = story(*HAPPY)
    groups: list[list] = [[]]
    for s in steps:
        if isinstance(s, Tick):
            groups.append([s])
            groups.append([])
        else:
            groups[-1].append(s)
    shuffled = []
    for group in groups:
        events = [s for s in group if not isinstance(s, Tick)]
        events += [rnd.choice(events) for _ in range(copies)] if events else []
        rnd.shuffle(events)
        shuffled += events + [s for s in group if isinstance(s, Tick)]
    told = run(*shuffled, through_customer=False)
    assert [i.notification_id for i in told.intents] == happy_ids()


def test_late_scans_after_delivery_never_move_a_parcel_backwards():
    steps = [created(0), paid(0.1), shipped(20), scan(20.5, "DELIVERED")]
    before = run(*story(*steps, until=30), through_customer=False)
    late = [scan(20.2, "PICKED_UP", ident="late1"), scan(20.3, "ARRIVED_AT_DESTINATION", ident="late2")]
    after = run(*story(*steps, until=30), *late, Tick(31), through_customer=False)
    assert after.state.shipment("P1").milestone == "DELIVERED"
    assert after.kinds() == before.kinds() == ["order_confirmed", "delivered"]


# -- the customer changes their mind, or leaves ---------------------------------------------

NO_CHANNELS = {"channels": dict.fromkeys(("email", "sms", "wechat", "push", "in_app"), False)}


def test_opting_out_of_every_channel_mid_flight_silences_the_rest():
    told = run(*story(*HAPPY, Prefs(47, NO_CHANNELS), until=60))
    assert told.sent_kinds() == ["order_confirmed", "shipped", "out_for_delivery"]
    assert ("delivered", "opted_out") in told.suppressed()


def test_switching_from_email_to_sms_mid_flight_moves_the_next_message():
    sms_only = {"channels": {**NO_CHANNELS["channels"], "sms": True}}
    told = run(*story(*HAPPY, Prefs(25, sms_only), until=60))
    assert told.channels("shipped") == ["email"]
    assert told.channels("delivered") == ["sms"]


def test_withdrawing_marketing_consent_stops_the_review_request():
    told = run(*story(*HAPPY, Prefs(60, {"marketing_opt_in": False})),
               preferences={"marketing_opt_in": True})
    assert ("review_request", "opted_out") in told.suppressed()
    assert "review_request" not in told.sent_kinds()


def test_erasure_mid_flight_sends_nothing_more_about_earlier_orders():
    told = run(*story(*HAPPY, Erase(46.5), until=80))
    assert told.sent_kinds() == ["order_confirmed", "shipped", "out_for_delivery"]
    assert ("delivered", "erased") in told.suppressed()


def test_erasure_cancels_a_notification_held_for_the_morning():
    # Picked up 23:00 in Shanghai: `shipped` waits for 08:00, the customer leaves at 01:00.
    steps = [created(0), paid(0.1), shipped(12), scan(13, "PICKED_UP"), Erase(15)]
    told = run(*story(*steps, until=30))
    assert told.sent_kinds() == ["order_confirmed"]
    assert told.suppressed() == [("shipped", "erased")]


def test_an_order_placed_after_erasure_is_a_new_relationship():
    told = run(*story(Erase(0), *HAPPY[1:], created(0.01), until=60))
    assert told.sent_kinds()[:2] == ["order_confirmed", "shipped"]


# -- a channel fails for good -----------------------------------------------------------------


def test_a_bounced_email_falls_back_to_sms():
    told = run(*story(*HAPPY, Fail(22.5, "shipped", "email"), until=60))
    assert told.channels("shipped") == ["email", "sms"]
    fallback = [a for _, a in told.actions if a.intent.kind == "shipped"][-1]
    assert fallback.routes[0].notification_id.endswith("-fallback")


def test_a_fallback_inside_quiet_hours_waits_for_the_morning():
    # The email bounces at 23:30 in Shanghai: the SMS goes at 08:00.
    told = run(*story(*HAPPY, Fail(37.5, "shipped", "email"), until=60))
    assert ("shipped", at(46).isoformat()) in told.sent()
    assert told.channels("shipped") == ["email", "sms"]


def test_each_failure_moves_one_channel_on_until_the_inbox():
    steps = [*HAPPY, Fail(22.5, "shipped", "email"), Fail(23, "shipped", "sms")]
    assert run(*story(*steps, until=60)).channels("shipped") == ["email", "sms", "in_app"]


def test_a_redelivered_failure_falls_back_once():
    steps = [*HAPPY, Fail(22.5, "shipped", "email"), Fail(22.75, "shipped", "email")]
    assert run(*story(*steps, until=60)).channels("shipped") == ["email", "sms"]


def test_a_failure_reported_after_the_fallback_window_is_left_alone():
    told = run(*story(*HAPPY, Fail(22 + 25, "shipped", "email"), until=60))
    assert told.channels("shipped") == ["email"]


def test_without_another_accepted_channel_nothing_falls_back():
    email_only = {"channels": {**NO_CHANNELS["channels"], "email": True}}
    told = run(*story(*HAPPY, Fail(22.5, "shipped", "email"), until=60), preferences=email_only)
    assert told.channels("shipped") == ["email"]
    assert ("shipped", "opted_out") in told.suppressed()


def test_an_order_with_nothing_left_to_decide_is_forgotten_after_keep_days():
    state = None
    for event in (created(), paid(), shipped(2), scan(3, "PICKED_UP"), scan(30, "DELIVERED")):
        state = order.apply(state, event, received_at=event.time).state
    settled = order.wake(state, at(24 * 10), RULES)  # the review request is long decided
    keep = timedelta(days=RULES.policy.keep_days)
    assert not settled.forget and settled.next_wake == stamp(at(30) + keep)
    assert not order.wake(settled.state, at(30) + keep - timedelta(hours=1), RULES).forget

    # A return asked for later is a fact: the order is kept that much longer.
    late = order.apply(settled.state, returned("return_requested", 24 * 20), received_at=at(24 * 20)).state
    assert not order.wake(late, at(30) + keep, RULES).forget
    assert order.wake(late, at(24 * 20) + keep, RULES).forget


def test_a_scan_read_before_its_parcel_was_shipped_does_not_hide_the_missed_ship_date():
    # The orders and tracking topics are read apart: after a restart a parcel's first scan
    # can come before its order.shipped, both days after the promised ship date (48 h).
    in_order = run(created(0), paid(0.1), tick(50), shipped(70), scan(71, "PICKED_UP"), tick(72),
                   through_customer=False)
    scan_first = run(created(0), paid(0.1), scan(71, "PICKED_UP"), tick(50), shipped(70), tick(72),
                     through_customer=False)
    assert in_order.kinds() == ["order_confirmed", "ship_delayed", "shipped"]
    assert scan_first.kinds() == in_order.kinds()


def test_a_scan_told_late_and_read_ahead_does_not_change_a_decision_due_before_it_was_told():
    # Arrival in the city happened at 20 h but was told at 26.5 h, after out-for-delivery.
    # The tracking topic may be read ahead of a decision due at 24 h (the orders topic
    # lagging, or a restart): made late, it must still be the decision made at 24 h.
    head = [created(0, segment="vip"), paid(0.1), shipped(2), scan(2.2, "PICKED_UP")]
    out, arrived = scan(25.7, "OUT_FOR_DELIVERY", told=25.9), scan(20, "ARRIVED_AT_DESTINATION", told=26.5)
    in_time = run(*head, tick(24), out, tick(26), arrived, tick(27), through_customer=False)
    read_ahead = run(*head, out, arrived, tick(24), tick(26), tick(27), through_customer=False)
    assert in_time.kinds() == ["order_confirmed", "shipped", "out_for_delivery"]
    assert read_ahead.kinds() == in_time.kinds()
