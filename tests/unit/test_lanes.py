"""Lane statistics: log histograms, lane keys, journeys, thresholds and predictions."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta

from worker.domain import histogram, lanes
from worker.domain.rules import Prediction
from worker.domain.shipment import Shipment

HOUR = 3600
RULES = Prediction()


def test_quantiles_are_within_a_bucket_of_the_truth_at_any_scale():
    rng = random.Random(3)
    for scale in (600, 10 * HOUR, 10 * 24 * HOUR):
        samples = sorted(rng.lognormvariate(0, 0.6) * scale for _ in range(5000))
        h: histogram.Histogram = {}
        for s in samples:
            histogram.add(h, s)
        for q in (0.5, 0.9, 0.95):
            truth = samples[int(q * len(samples)) - 1]
            assert abs(histogram.quantile(h, q) / truth - 1) < 0.06, (scale, q)
        assert len(h) < 120  # compact, whatever the number of samples


def test_merged_days_are_the_sum_of_their_counts_and_stay_json_ready():
    a, b = {}, {}
    histogram.add(a, 5 * HOUR)
    histogram.add(b, 5 * HOUR)
    histogram.add(b, 50 * HOUR)
    merged = lanes.figures([{"gaps": {"IN_TRANSIT": a}}, {"gaps": {"IN_TRANSIT": b}}])["gaps"]["IN_TRANSIT"]
    assert histogram.total(merged) == 3
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in merged.items())
    assert histogram.count_above(merged, 10 * HOUR) == 1
    assert histogram.quantile({}, 0.5) is None


def test_a_tail_is_counted_and_ranked_as_the_samples_beyond_it_alone():
    rng = random.Random(5)
    for _ in range(200):
        h: histogram.Histogram = {}
        for _ in range(rng.randrange(0, 60)):
            histogram.add(h, rng.lognormvariate(0, 1.2) * 6 * HOUR)
        silent = rng.choice([0, 30, 2 * HOUR, 6 * HOUR, 20 * HOUR, 400 * HOUR])
        beyond = {k: c for k, c in h.items() if int(k) > histogram.bucket(silent)}
        assert histogram.count_above(h, silent) == sum(beyond.values())
        for q in (0.0, 0.5, 0.9, 1.0):
            expected = None
            if beyond:  # the first bucket, in order, where the running count reaches q of them
                ranked = sorted((int(k), c) for k, c in beyond.items())
                running = [sum(c for _, c in ranked[: i + 1]) for i in range(len(ranked))]
                first = next(i for i, seen in enumerate(running) if seen >= q * running[-1])
                expected = histogram.bucket_middle(ranked[first][0])
            assert histogram.quantile_above(h, silent, q) == expected, (h, silent, q)
            assert histogram.quantile(beyond, q) == expected


def test_lane_keys_go_from_the_route_to_the_carrier():
    assert lanes.lane_keys("sf-express", {"country": "CN", "region": "ZJ"},
                           {"country": "CN", "region": "SH"}) == [
        "sf-express|CN-ZJ|CN-SH", "sf-express|*|CN", "sf-express"]
    assert lanes.lane_keys("ups", {}, {"country": "US"}) == ["ups|*|US", "ups"]


def test_a_delivered_parcel_teaches_silences_per_leg_and_time_left_per_milestone():
    parcel = Shipment("P1", checkpoints=[
        ["2026-11-02T00:00:00+00:00", "PICKED_UP", None],
        ["2026-11-02T10:00:00+00:00", "IN_TRANSIT", None],
        ["2026-11-03T10:00:00+00:00", "IN_TRANSIT", None],
        ["2026-11-04T00:00:00+00:00", "DELIVERED", None],
    ])
    lesson = lanes.journey(parcel)
    assert lesson["gaps"] == {"PICKED_UP": [10 * HOUR], "IN_TRANSIT": [24 * HOUR, 14 * HOUR]}
    assert lesson["remaining"] == {"PICKED_UP": [48 * HOUR], "IN_TRANSIT": [38 * HOUR]}
    # With its label (order.shipped), also the time left from the hand-over.
    parcel.label_at = "2026-11-01T18:00:00+00:00"
    assert lanes.journey(parcel)["remaining"]["LABEL_CREATED"] == [54 * HOUR]


def figures_with(leg: str, seconds: float, count: int = 40, part: str = "gaps") -> dict:
    day: dict = {}
    lanes.learn(day, {part: {leg: [seconds] * count}})
    return lanes.figures([day])


def test_the_stall_threshold_is_learned_with_a_floor_and_a_default():
    assert lanes.stall_after("IN_TRANSIT", [], RULES) == 48 * HOUR
    slow = figures_with("IN_TRANSIT", 40 * HOUR)
    assert 38 * HOUR < lanes.stall_after("IN_TRANSIT", [slow], RULES) < 42 * HOUR
    fast = figures_with("IN_TRANSIT", 3 * HOUR)
    assert lanes.stall_after("IN_TRANSIT", [fast], RULES) == 24 * HOUR  # the floor
    few = figures_with("IN_TRANSIT", 3 * HOUR, count=5)
    assert lanes.stall_after("IN_TRANSIT", [few, slow], RULES) > 38 * HOUR  # the broader lane


def test_a_carriers_day_off_does_not_count_towards_a_stall():
    # Saturday 2026-11-07 12:00 UTC + 24 h, Sundays off: the deadline is Monday 12:00.
    assert lanes.add_working("2026-11-07T12:00:00+00:00", 24 * HOUR, (6,)) == (
        "2026-11-09T12:00:00+00:00")
    assert lanes.add_working("2026-11-07T12:00:00+00:00", 24 * HOUR, ()) == (
        "2026-11-08T12:00:00+00:00")


def test_working_time_skips_whole_days_off_on_the_stamps_own_calendar():
    # Friday 2026-11-06 20:00 at +08:00, weekends off: 10 h of work end Monday 06:00 there.
    assert lanes.add_working("2026-11-06T20:00:00+08:00", 10 * HOUR, (5, 6)) == (
        "2026-11-08T22:00:00+00:00")
    assert lanes.working_seconds("2026-11-06T20:00:00+08:00", "2026-11-09T06:00:00+08:00",
                                 (5, 6)) == 10 * HOUR
    rng = random.Random(11)
    for _ in range(500):
        days_off = tuple(rng.sample(range(7), rng.randint(1, 3)))
        day, hour = rng.randint(0, 364), rng.randint(0, 23)
        start = f"{date(2026, 1, 1) + timedelta(days=day)}T{hour:02d}:00:00+00:00"
        seconds = float(rng.randint(0, 12 * 24 * HOUR))
        end = lanes.add_working(start, seconds, days_off)
        assert datetime.fromisoformat(end).weekday() not in days_off  # never ends on a day off
        if datetime.fromisoformat(start).weekday() not in days_off:
            assert lanes.working_seconds(start, end, days_off) == seconds


def test_a_silence_over_a_day_off_is_learned_without_it():
    # Scans every 10 h; one silence runs from Saturday 20:00 over Sunday to Monday 06:00.
    parcel = Shipment("P1", checkpoints=[
        ["2026-11-07T10:00:00+00:00", "IN_TRANSIT", None],
        ["2026-11-07T20:00:00+00:00", "IN_TRANSIT", None],
        ["2026-11-09T06:00:00+00:00", "IN_TRANSIT", None],
        ["2026-11-09T16:00:00+00:00", "DELIVERED", None],
    ])
    # Else a carrier resting on Sundays would teach its lane that 34 h of silence is usual,
    # and its stalls would be found days late.
    assert lanes.journey(parcel, (6,))["gaps"] == {"IN_TRANSIT": [10 * HOUR, 10 * HOUR, 10 * HOUR]}
    assert lanes.journey(parcel)["gaps"] == {"IN_TRANSIT": [10 * HOUR, 34 * HOUR, 10 * HOUR]}


def test_prediction_uses_the_lane_median_and_a_later_carrier_estimate():
    lane = figures_with("PICKED_UP", 72 * HOUR, part="remaining")
    [predicted] = lanes.predict("PICKED_UP", "2026-11-02T00:00:00+00:00", [lane], RULES, None, (0.5,))
    assert "2026-11-04T21:00" < predicted < "2026-11-05T03:00"  # 72 h, to within a bucket
    assert lanes.predict("PICKED_UP", "2026-11-02T00:00:00+00:00", [lane], RULES,
                         "2026-11-08T00:00:00+00:00", (0.5,)) == ["2026-11-08T00:00:00+00:00"]
    assert lanes.predict("PICKED_UP", "2026-11-02T00:00:00+00:00", [], RULES, None, (0.5,)) == [None]


def test_an_optimistic_prediction_comes_with_the_median_and_trusts_the_carrier_less():
    day: dict = {}
    lanes.learn(day, {"remaining": {"PICKED_UP": [24 * HOUR] * 15 + [96 * HOUR] * 25}})
    lane = lanes.figures([day])
    median, early = lanes.predict("PICKED_UP", "2026-11-02T00:00:00+00:00", [lane], RULES, None, (0.5, 0.35))
    assert "2026-11-05T18:00" < median < "2026-11-06T06:00"  # 96 h: 25 parcels of 40 took that
    assert "2026-11-02T22:00" < early < "2026-11-03T02:00"  # 24 h: the fastest 15
    # The carrier's later date, as it is for the median and less the margin (5 h) for the early end.
    assert lanes.predict("PICKED_UP", "2026-11-02T00:00:00+00:00", [lane], RULES,
                         "2026-11-09T12:00:00+00:00", (0.5, 0.35)) == [
        "2026-11-09T12:00:00+00:00", "2026-11-09T07:00:00+00:00"]


def _days_with_stalls(*counts: int) -> list[dict]:
    """Day buckets from 2026-11-01 on, with ``counts[i]`` stalls spread over day i."""
    return [{"stalls": [f"2026-11-{d + 1:02d}T{h % 24:02d}:00:00+00:00" for h in range(n)]}
            for d, n in enumerate(counts)]


def test_a_lane_incident_is_many_stalls_far_above_the_lanes_own_baseline():
    rules = Prediction()
    calm = _days_with_stalls(2, 2, 2, 2, 2, 2, 2, 2)
    assert lanes.incident(calm, "2026-11-08T23:59:00+00:00", rules) is None
    storm = _days_with_stalls(2, 2, 2, 2, 2, 2, 2, 12)
    found = lanes.incident(storm, "2026-11-08T23:59:00+00:00", rules)
    assert found["stalls_24h"] == 12 and found["baseline_24h"] == 2
    assert found["since"] == "2026-11-08T00:00:00+00:00"
    # A busy lane needs more: eight stalls are its normal day.
    busy = _days_with_stalls(8, 8, 8, 8, 8, 8, 8, 12)
    assert lanes.incident(busy, "2026-11-08T23:59:00+00:00", rules) is None
    # Without a week of history there is no baseline to be far above.
    assert lanes.incident(_days_with_stalls(0, 0, 0, 20), "2026-11-04T23:59:00+00:00", rules) is None


def test_an_incident_is_judged_alike_however_the_stalls_fall_across_the_days():
    """A day wholly before the last 24 h is only counted: the same answers as counting
    every stall, for stalls told out of order, late or ahead of ``now``."""
    def counted_one_by_one(days, now, rules):
        since = lanes.stamp(datetime.fromisoformat(now) - timedelta(hours=24))
        stalls = [t for day in days for t in day.get("stalls", [])]
        recent = sorted(t for t in stalls if since < t <= now)
        baseline = sum(1 for t in stalls if t <= since) / (len(days) - 1)
        if len(recent) < max(rules.incident_min_stalls, rules.incident_factor * baseline):
            return None
        return {"since": recent[0], "last": now, "stalls_24h": len(recent),
                "baseline_24h": round(baseline, 2)}

    rules, rng = Prediction(incident_min_stalls=3, incident_factor=2), random.Random(7)
    start = datetime(2026, 11, 1)
    for _ in range(500):
        days = [{"stalls": [f"{start + timedelta(days=d, minutes=rng.randrange(1440)):%Y-%m-%dT%H:%M}:00+00:00"
                            for _ in range(rng.choice((0, 1, 2, 6, 20)))]} for d in range(rng.randrange(7, 15))]
        rng.shuffle(days)
        # Now, or 24 h before it, at times of stalls as well: the bounds are in the day's.
        told = [t for day in days for t in day["stalls"]]
        now = rng.choice([*told[:3], f"{start + timedelta(minutes=rng.randrange(15 * 1440)):%Y-%m-%dT%H:%M}:00+00:00"])
        if told and rng.random() < 0.3:
            now = lanes.stamp(datetime.fromisoformat(rng.choice(told)) + timedelta(hours=24))
        assert lanes.incident(days, now, rules) == counted_one_by_one(days, now, rules)


def test_the_lane_incident_alert_names_the_lane_and_fits_its_schema():
    from worker import schemas

    found = lanes.incident(_days_with_stalls(2, 2, 2, 2, 2, 2, 2, 12), "2026-11-08T23:59:00+00:00",
                           Prediction())
    alert = lanes.incident_alert("zto|CN-GD|CN-BJ", found)
    assert alert.type == "alert.lane_delay" and alert.key == "zto|CN-GD|CN-BJ"
    assert "12 parcels stalled" in alert.summary
    assert schemas.problem(alert.type, alert.data()) is None


def test_a_long_silence_is_predicted_from_the_lanes_past_stalls_in_that_leg():
    day: dict = {}
    normal = [8 * HOUR] * 500
    stalls = [h * HOUR for h in range(40, 121, 4)]  # 21 past stalls of 40 to 120 h
    lanes.learn(day, {"gaps": {"IN_TRANSIT": normal + stalls}})
    figures = [lanes.figures([day])]
    rules = Prediction()
    median = lanes.long_silence("IN_TRANSIT", figures, rules, 24 * HOUR, 0.5)
    assert 75 * HOUR < median < 85 * HOUR
    # Too few past stalls (a quiet lane, or a leg that never stalls): no opinion.
    assert lanes.long_silence("IN_TRANSIT", figures, rules, 100 * HOUR, 0.5) is None
    assert lanes.long_silence("CUSTOMS", figures, rules, 24 * HOUR, 0.5) is None
