from datetime import UTC, datetime, timedelta

from worker.domain.clock import Clock

T0 = datetime(2026, 11, 5, tzinfo=UTC)
WALL = datetime(2030, 1, 1, tzinfo=UTC)


def test_wall_clock_is_the_time_passed_in():
    clock = Clock(event_mode=False)
    clock.observe(0, T0)
    assert clock.now(0, WALL) == WALL


def test_event_clock_is_the_largest_event_time_per_partition():
    clock = Clock(event_mode=True)
    clock.observe(0, T0)
    clock.observe(0, T0 - timedelta(hours=3))  # a late event does not move it back
    clock.observe(1, T0 + timedelta(days=2))
    assert clock.now(0, WALL) == T0
    assert clock.now(1, WALL) == T0 + timedelta(days=2)


def test_event_clock_before_any_event_falls_back_to_wall_time():
    assert Clock(event_mode=True).now(3, WALL) == WALL
