"""States as the tables keep them: what is packed comes back the same, much smaller."""

import zlib
from datetime import UTC, datetime

import orjson

from worker.packing import DICTIONARY, deflate, due, inflate, pack, renamed, unpack
from worker.settings import PROJECT_ROOT

SAMPLE = (PROJECT_ROOT / "worker" / "state_sample.jsonl").read_bytes().splitlines()


def test_a_state_comes_back_as_it_was_packed():
    for line in SAMPLE:
        state = orjson.loads(line)
        assert unpack(pack(state, due=state.get("wake_at"))) == state


def test_a_packed_order_state_takes_under_a_third_of_its_json():
    state = orjson.loads(SAMPLE[0])
    state["order_id"] = state["order"]["order_id"] = "SO20991231-999999999"  # not in the sample
    raw = orjson.dumps(state)
    assert len(pack(state, due=state.get("wake_at"))) * 3 < len(raw)


def test_a_state_saved_before_packing_reads_as_it_was():
    raw = orjson.dumps({"order_id": "SO-1", "wake_at": None})
    assert inflate(raw) == raw
    assert unpack(raw) == {"order_id": "SO-1", "wake_at": None}


def test_when_a_state_is_next_due_reads_from_its_front_without_inflating_it():
    saved = pack({"order_id": "SO-1", "wake_at": "2026-11-09T08:00:00+00:00"},
                 due="2026-11-09T08:00:00+00:00")
    never = pack({"order_id": "SO-2", "wake_at": None}, due=None)

    def unread(state):
        raise AssertionError("inflated")

    assert due(saved, unread) == datetime(2026, 11, 9, 8, tzinfo=UTC)
    assert due(never, unread) is None


def test_states_saved_by_earlier_versions_say_when_they_are_due_from_inside():
    state = {"order_id": "SO-1", "wake_at": "2026-11-09T08:00:00+00:00"}
    for saved in (orjson.dumps(state), deflate(orjson.dumps(state))):  # plain, deflated alone
        assert due(saved, lambda s: s["wake_at"]) == "2026-11-09T08:00:00+00:00"
        assert unpack(saved) == state


def test_a_renamed_copy_keeps_its_form_and_its_due_time():
    state = {"order_id": "SO-1", "wake_at": "2026-11-09T08:00:00+00:00"}
    for saved in (pack(state, due=state["wake_at"]), deflate(orjson.dumps(state)), orjson.dumps(state)):
        copy = renamed(saved, lambda raw: raw.replace(b"SO-1", b"SO-1-2"))
        assert unpack(copy) == {**state, "order_id": "SO-1-2"}
        assert copy[:1] == saved[:1]
        assert due(copy, lambda s: s["wake_at"]) == due(saved, lambda s: s["wake_at"])


def test_the_dictionary_is_the_frozen_sample():
    # Every saved state was deflated against it, and each names it by this id (zlib's
    # DICTID): an edit to the sample would leave them unreadable.
    assert zlib.adler32(DICTIONARY) == 201479999


def test_a_state_deflated_at_any_level_or_without_the_dictionary_reads_as_it_was():
    raw = orjson.dumps(orjson.loads(SAMPLE[-1]))
    for level in (1, 6, 9):
        packer = zlib.compressobj(level, zdict=DICTIONARY)
        assert inflate(packer.compress(raw) + packer.flush()) == raw
    assert inflate(zlib.compress(raw)) == raw
