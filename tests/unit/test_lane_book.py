import copy
import random

import orjson

from worker.domain import histogram, lanes
from worker.domain.rules import Prediction
from worker.lane_book import LaneBook

HOUR = 3600
JOURNEY = {"gaps": {"IN_TRANSIT": [10 * HOUR]}, "remaining": {"PICKED_UP": [48 * HOUR]}}


def test_a_lane_keeps_only_the_days_of_its_window():
    book = LaneBook({}, Prediction(window_days=14))
    for day in range(1, 31):  # a month of November, three parcels a day
        for _ in range(3):
            figures = book.learn("sf-express", f"2026-11-{day:02d}", JOURNEY)
    assert figures["window"] == ["2026-11-17", "2026-11-30"]
    assert histogram.total(figures["gaps"]["IN_TRANSIT"]) == 14 * 3
    assert len(book.table) == 14 + 1  # the days, and their index: no growth with parcels


def test_a_parcel_older_than_the_window_teaches_nothing():
    book = LaneBook({}, Prediction(window_days=14))
    book.learn("ups", "2026-11-30", JOURNEY)
    figures = book.learn("ups", "2026-11-01", JOURNEY)
    assert histogram.total(figures["remaining"]["PICKED_UP"]) == 1


def test_a_lane_incident_starts_once_and_lasts_while_its_parcels_keep_stalling():
    book = LaneBook({}, Prediction())
    for day in range(1, 9):
        book.stalled("zto|CN-GD|CN-BJ", f"2026-11-{day:02d}T12:00:00+00:00")
    started = [book.stalled("zto|CN-GD|CN-BJ", f"2026-11-09T{h:02d}:00:00+00:00")[1] for h in range(20)]
    assert started.count(True) == 1 and started.index(True) == 6  # the eighth stall in 24 h
    figures, started = book.stalled("zto|CN-GD|CN-BJ", "2026-11-09T21:00:00+00:00")
    assert not started and figures["incident"]["since"] == "2026-11-08T12:00:00+00:00"
    assert figures["incident"]["last"] == "2026-11-09T21:00:00+00:00"
    # The lane calms down: a lone stall two days on neither extends it nor starts another.
    figures, started = book.stalled("zto|CN-GD|CN-BJ", "2026-11-12T10:00:00+00:00")
    assert not started and figures["incident"]["last"] == "2026-11-09T21:00:00+00:00"


def _from_scratch(book: LaneBook, lane: str) -> dict:
    """The lane's figures merged afresh from every day its table holds."""
    days = orjson.loads(book.table[f"{lane}|days".encode()])
    return lanes.figures([orjson.loads(book.table[f"{lane}|{d}".encode()]) for d in days])


def test_a_lane_learning_day_by_day_has_the_figures_of_its_days_merged_afresh():
    rng = random.Random(7)
    book, lane = LaneBook({}, Prediction(window_days=5)), "yto|CN-ZJ|CN-SH"
    legs = ["PICKED_UP", "IN_TRANSIT", "CUSTOMS", "OUT_FOR_DELIVERY"]
    handed_out = []
    for n in range(300):
        day = f"2026-11-{1 + n // 10 + rng.choice([0, 0, 0, -3, -9]):02d}"  # some late, some too old
        # A leg seen on one day only leaves the figures with that day.
        journey = {"gaps": {rng.choice(legs): [rng.uniform(60, 5 * 86400)] for _ in range(2)},
                   "remaining": {"PICKED_UP": [rng.uniform(3600, 9 * 86400)]}}
        if n % 17 == 0:
            figures, _ = book.stalled(lane, f"{day}T08:00:00+00:00")
        else:
            figures = book.learn(lane, day, journey)
        expected = _from_scratch(book, lane)
        assert {k: figures[k] for k in expected} == expected
        handed_out.append((copy.deepcopy(figures), figures))
    assert all(kept == figures for kept, figures in handed_out)  # never changed afterwards


def test_a_day_rewritten_by_another_worker_counts_as_it_now_stands():
    book, lane = LaneBook({}, Prediction(window_days=14)), "ups"
    book.learn(lane, "2026-11-01", JOURNEY)
    book.learn(lane, "2026-11-02", JOURNEY)
    # The lane's partition was away: another worker taught the 1st two parcels more.
    other = LaneBook(book.table, Prediction(window_days=14))
    other.learn(lane, "2026-11-01", JOURNEY)
    other.learn(lane, "2026-11-01", JOURNEY)
    figures = book.learn(lane, "2026-11-02", JOURNEY)
    assert figures["parcels"] == 5 and histogram.total(figures["gaps"]["IN_TRANSIT"]) == 5
