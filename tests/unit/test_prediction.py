"""Stale tracking and delay prediction in whole order stories (pure decision code)."""

from __future__ import annotations

from tests.unit.stories import at, created, paid, run, scan, shipped, story
from worker.domain import lanes

HOUR = 3600
PICKED = [created(0), paid(0.1), shipped(20), scan(21, "PICKED_UP")]


def lanes_of(**parts) -> "callable":
    """A lane lookup where every lane has 40 samples of each ``part={name: hours}``."""
    day: dict = {}
    for part, values in parts.items():
        lanes.learn(day, {part: {name: [hours * HOUR] * 40 for name, hours in values.items()}})
    figures = lanes.figures([day])
    return lambda keys: [figures]


def stalls(told):
    return [(i.facts["stage"], i.created_at) for i in told.intents if i.kind == "tracking_stalled"]


def test_a_silent_parcel_stalls_once_per_silence_and_twice_at_most():
    steps = [*PICKED, scan(100, "IN_TRANSIT"), scan(200, "IN_TRANSIT")]
    told = run(*story(*steps, until=320), through_customer=False)
    # 48 h without samples: after the pickup, after the first transit scan; not a third time.
    assert stalls(told) == [("PICKED_UP", at(69).isoformat()), ("IN_TRANSIT", at(148).isoformat())]
    assert [a.type for a in told.alerts] == ["alert.tracking_stalled"] * 2
    assert told.alerts[0].figures["silent_since"] == at(21).isoformat()


def test_a_scan_before_the_deadline_means_no_stall():
    steps = [*PICKED, scan(60, "IN_TRANSIT"), scan(100, "ARRIVED_AT_DESTINATION"),
             scan(120, "DELIVERED")]
    assert stalls(run(*story(*steps, until=200), through_customer=False)) == []


def test_a_label_never_picked_up_is_its_own_case():
    told = run(*story(created(0), paid(0.1), shipped(20), until=120), through_customer=False)
    assert stalls(told) == [("before_first_scan", at(92).isoformat())]
    assert told.alerts[-1].summary.startswith("label printed")


def test_the_threshold_comes_from_the_lane():
    quick = lanes_of(gaps={"PICKED_UP": 4})  # this lane scans every 4 h: 24 h is long
    told = run(*story(*PICKED, until=80), through_customer=False, lanes=quick)
    assert stalls(told) == [("PICKED_UP", at(45).isoformat())]


def test_a_predicted_late_delivery_is_told_once_and_again_only_when_it_slips_a_day():
    promise = {"promised_delivery_by": at(72).isoformat()}
    slow = lanes_of(remaining={"PICKED_UP": 100, "IN_TRANSIT": 70, "ARRIVED_AT_DESTINATION": 60})
    steps = [created(0, **promise), paid(0.1), shipped(20), scan(21, "PICKED_UP"),
             scan(40, "IN_TRANSIT"),  # 40 + 70 = 110: no worse than 121
             scan(65, "IN_TRANSIT"),
             scan(90, "ARRIVED_AT_DESTINATION"),  # 90 + 60 = 150: another day late
             scan(120, "ARRIVED_AT_DESTINATION"), scan(148, "OUT_FOR_DELIVERY"),
             scan(150, "DELIVERED")]
    told = run(*story(*steps, until=200), through_customer=False, lanes=slow)
    notices = [i for i in told.intents if i.kind == "delay_notice"]
    assert [(n.created_at, n.facts["days_late"]) for n in notices] == [
        (at(21).isoformat(), 3), (at(90).isoformat(), 4)]
    assert "2026-11-07T00:00" < notices[0].facts["expected_delivery"] < "2026-11-07T04:00"
    assert "coupon" not in notices[0].facts


def test_an_on_time_prediction_says_nothing_and_vip_delays_carry_a_coupon():
    promise = {"promised_delivery_by": at(72).isoformat()}
    fast = lanes_of(remaining={"PICKED_UP": 30})
    steps = [created(0, **promise), paid(0.1), shipped(20), scan(21, "PICKED_UP")]
    told = run(*story(*steps, until=40), through_customer=False, lanes=fast)
    assert "delay_notice" not in told.kinds()
    slow = lanes_of(remaining={"PICKED_UP": 100})
    vip = [created(0, segment="vip", **promise), *steps[1:]]
    told = run(*story(*vip, until=40), through_customer=False, lanes=slow)
    [notice] = [i for i in told.intents if i.kind == "delay_notice"]
    assert notice.facts["coupon"] == {"code": "SORRY10", "percent": 10}


def test_the_carriers_first_estimate_is_the_promise_when_the_order_made_none():
    late_eta = shipped(20)
    late_eta.data["carrier_estimated_delivery"] = at(60).isoformat()
    slow = lanes_of(remaining={"PICKED_UP": 100})
    told = run(*story(created(0), paid(0.1), late_eta, scan(21, "PICKED_UP"), until=40),
               through_customer=False, lanes=slow)
    assert [i.facts["days_late"] for i in told.intents if i.kind == "delay_notice"] == [3]


def test_stall_alerts_follow_their_published_schema():
    import jsonschema

    from worker import schemas

    told = run(*story(*PICKED, until=80), through_customer=False)
    for alert in told.alerts:
        jsonschema.validate(alert.data(), schemas.load(alert.type))


def test_a_parcel_handed_over_late_is_warned_at_its_label_before_any_scan():
    # The lane takes 40 h from the label: a label at 60 h cannot make a promise of 72 h.
    promise = {"promised_delivery_by": at(72).isoformat()}
    lane = lanes_of(remaining={"LABEL_CREATED": 40, "PICKED_UP": 36})
    steps = [created(0, **promise), paid(0.1), shipped(60), scan(66, "PICKED_UP")]
    told = run(*story(*steps, until=70), through_customer=False, lanes=lane)
    [notice] = [i for i in told.intents if i.kind == "delay_notice"]
    assert notice.created_at == at(60).isoformat()
    assert at(96).isoformat() <= notice.facts["expected_delivery"] <= at(104).isoformat()  # 60 + 40 h
    # Handed over in time: no notice from the label.
    steps = [created(0, **promise), paid(0.1), shipped(20)]
    told = run(*story(*steps, until=24), through_customer=False, lanes=lane)
    assert "delay_notice" not in told.kinds()


def test_a_long_silence_slides_the_prediction_past_the_promise():
    # On time at the pickup (21 + 30 = 51 h, promise 72 h); then silence. At the stall
    # (48 h later) everything ahead has slid by 48 h: expected at 99 h, two days late.
    promise = {"promised_delivery_by": at(72).isoformat()}
    lane = lanes_of(remaining={"PICKED_UP": 30})
    steps = [created(0, **promise), paid(0.1), shipped(20), scan(21, "PICKED_UP")]
    told = run(*story(*steps, until=100), through_customer=False, lanes=lane)
    [notice] = [i for i in told.intents if i.kind == "delay_notice"]
    assert (notice.created_at, notice.facts["days_late"]) == (at(69).isoformat(), 2)


def test_in_a_lane_incident_a_stalled_parcel_gets_one_cohort_delay_notice_and_no_stall_message():
    promise = {"promised_delivery_by": at(120).isoformat()}
    fast = lanes_of(remaining={"PICKED_UP": 30})  # on time, were it not for the hold-up
    day: dict = {}
    lanes.learn(day, {"remaining": {"PICKED_UP": [30 * HOUR] * 40}})
    incident = {**lanes.figures([day]),
                "incident": {"since": at(30).isoformat(), "last": at(60).isoformat()}}
    steps = [created(0, **promise), paid(0.1), shipped(20), scan(21, "PICKED_UP")]
    told = run(*story(*steps, until=80), through_customer=False, lanes=lambda keys: [incident])
    assert stalls(told) == [] and told.alerts == []
    [notice] = [i for i in told.intents if i.kind == "delay_notice"]
    assert notice.created_at == at(69).isoformat()  # when the silence became a stall
    assert notice.facts["lane_incident"] is True and notice.facts["days_late"] == 1
    # The same silence on a lane without an incident: a stall message, no delay notice.
    told = run(*story(*steps, until=80), through_customer=False, lanes=fast)
    assert [k for k in told.kinds() if k in ("tracking_stalled", "delay_notice")] == ["tracking_stalled"]
