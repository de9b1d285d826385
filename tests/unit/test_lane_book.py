from worker.domain import histogram
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
