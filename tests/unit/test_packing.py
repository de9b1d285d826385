"""States as the tables keep them: what is packed comes back the same, much smaller."""

import zlib

import orjson

from worker.packing import DICTIONARY, inflate, pack, unpack
from worker.settings import PROJECT_ROOT

SAMPLE = (PROJECT_ROOT / "worker" / "state_sample.jsonl").read_bytes().splitlines()


def test_a_state_comes_back_as_it_was_packed():
    for line in SAMPLE:
        state = orjson.loads(line)
        assert unpack(pack(state)) == state


def test_a_packed_order_state_takes_under_a_third_of_its_json():
    state = orjson.loads(SAMPLE[0])
    state["order_id"] = state["order"]["order_id"] = "SO20991231-999999999"  # not in the sample
    raw = orjson.dumps(state)
    assert len(pack(state)) * 3 < len(raw)


def test_a_state_saved_before_packing_reads_as_it_was():
    raw = orjson.dumps({"order_id": "SO-1", "wake_at": None})
    assert inflate(raw) == raw
    assert unpack(raw) == {"order_id": "SO-1", "wake_at": None}


def test_the_dictionary_is_the_frozen_sample():
    # Every saved state was deflated against it, and each names it by this id (zlib's
    # DICTID): an edit to the sample would leave them unreadable.
    assert zlib.adler32(DICTIONARY) == 201479999
