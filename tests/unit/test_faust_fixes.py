"""The faust-streaming fixes the worker's at-least-once guarantee depends on."""

from types import SimpleNamespace

from worker import faust_fixes


def consumer(generation: int, flowing: bool = True) -> SimpleNamespace:
    flow = SimpleNamespace(is_active=lambda: flowing)
    return SimpleNamespace(app=SimpleNamespace(consumer_generation_id=generation, flow_control=flow))


def test_only_messages_of_the_current_generation_with_the_flow_on_are_acknowledged(monkeypatch):
    acked = []
    monkeypatch.setattr(faust_fixes, "_faust_ack", lambda self, message: acked.append(message) or True)
    old, current = SimpleNamespace(generation_id=1), SimpleNamespace(generation_id=2)
    assert faust_fixes._ack(consumer(2), old) is False  # fetched before the rebalance: read again
    assert faust_fixes._ack(consumer(2, flowing=False), current) is False  # mid-rebalance
    assert faust_fixes._ack(consumer(2), current) is True
    assert acked == [current]


def test_the_fetch_loop_never_sees_a_read_mark_so_drops_nothing():
    marks = faust_fixes._NoReadMark()
    marks["orders-0"] = 41
    assert marks["orders-0"] is None


async def test_a_flush_waits_for_the_whole_buffer(monkeypatch):
    buffer = SimpleNamespace(size=3)

    async def one_slow_round(self, limit):  # Faust's gives up after one slow message
        self.size -= 1
        return 1

    monkeypatch.setattr(faust_fixes, "_faust_flush_atmost", one_slow_round)
    await faust_fixes._flush(buffer)
    assert buffer.size == 0
