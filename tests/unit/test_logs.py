"""Logs: one JSON object a line, and a library's same complaint not a thousand times over."""

import logging

import orjson

from worker.logs import JsonFormatter, Repeats, TextFormatter


def record(logger: str, message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.ERROR, __file__, 1, message, args, None)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_library_repeating_itself_is_heard_once_a_window_with_how_often_it_was_held_back():
    clock = Clock()
    repeats = Repeats(window=10, clock=clock)
    unreachable = "Unable connect to node with id %s: %s"
    let_through = []
    for attempt in range(1800):  # 180 a second for 10 s, as with the broker gone
        clock.now = attempt / 180
        r = record("aiokafka", unreachable, 1, f"attempt {attempt}")
        if repeats.filter(r):
            let_through.append(r)
    assert [r.getMessage() for r in let_through] == ["Unable connect to node with id 1: attempt 0"]
    clock.now = 10.0
    later = record("aiokafka", unreachable, 1, "attempt 1800")
    assert repeats.filter(later) and later.repeated == 1799
    assert orjson.loads(JsonFormatter().format(later))["repeated"] == 1799
    assert TextFormatter("%(message)s").format(later).endswith("(and 1799 more like it held back)")
    # Another complaint is heard at once, and says nothing of the first one's repeats.
    other = record("aiokafka.consumer.fetcher", "Failed fetch messages from %s: %s", 1, "x")
    assert repeats.filter(other) and not hasattr(other, "repeated")


def test_our_own_lines_all_go_through():
    repeats = Repeats(window=10, clock=Clock())
    lines = [record("worker.senders", "cannot tell whether %s reached its provider", f"ntf-{n}")
             for n in range(50)]
    assert all(repeats.filter(r) for r in lines)


def test_what_it_remembers_stays_bounded_when_each_message_is_new():
    clock = Clock()
    repeats = Repeats(window=10, clock=clock)
    for n in range(5000):  # text written out before logging: every message new
        clock.now = n / 100
        assert repeats.filter(record("faust", f"partition {n} moved"))
    assert len(repeats._last) <= Repeats.KEPT
