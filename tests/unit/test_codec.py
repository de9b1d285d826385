import orjson
import pytest

from tests.conftest import example, record
from worker import codec, schemas
from worker.codec import BadInput

ALL = frozenset(schemas.event_types())


def decode(key, value, headers, max_bytes=1024 * 1024):
    return codec.decode(key, value, headers, accepted_types=ALL, max_bytes=max_bytes)


def test_binary_mode_event_is_decoded():
    envelope = decode(*record("order.paid"))
    assert envelope.type == "order.paid"
    assert envelope.identity == "urn:shop:xinghe:orders evt-7f3a9d"
    assert envelope.data["order_id"] == "SO20261102-0001"
    assert envelope.time.utcoffset().total_seconds() == 8 * 3600


def test_structured_mode_event_is_decoded_the_same():
    e = example("order.paid")
    attributes = {k.removeprefix("ce_"): v for k, v in e["headers"].items() if k.startswith("ce_")}
    value = orjson.dumps({**attributes, "datacontenttype": "application/json", "data": e["value"]})
    structured = decode(e["key"].encode(), value, [("content-type", b"application/cloudevents+json")])
    assert structured == decode(*record("order.paid"))


@pytest.mark.parametrize(
    ("mutate", "error_type"),
    [
        (lambda k, v, h: (k, b"{not json", h), "malformed_json"),
        (lambda k, v, h: (None, v, h), "missing_key"),
        (lambda k, v, h: (k, None, h), "tombstone"),
        (lambda k, v, h: (k, v + b" " * (2 * 1024 * 1024), h), "too_large"),
        (lambda k, v, h: (k, v, {**h, "ce_type": b"order.teleported"}), "unknown_type"),
        (lambda k, v, h: (k, v, {x: y for x, y in h.items() if x != "ce_id"}), "malformed_envelope"),
        (lambda k, v, h: (k, v, {**h, "ce_specversion": b"0.3"}), "malformed_envelope"),
        (lambda k, v, h: (k, v, {**h, "ce_time": b"yesterday"}), "malformed_envelope"),
        (lambda k, v, h: (k, orjson.dumps({"order_id": "A"}), h), "schema_violation"),
        (lambda k, v, h: (k, orjson.dumps({"order_id": "A", "paid_at": "2026-11-02"}), h),
         "schema_violation"),
        (lambda k, v, h: (k, b"[1, 2]", h), "schema_violation"),
    ],
)
def test_bad_input_is_named(mutate, error_type):
    with pytest.raises(BadInput) as caught:
        decode(*mutate(*record("order.paid")))
    assert caught.value.error_type == error_type
    assert caught.value.message


def test_type_not_accepted_on_the_topic_is_rejected():
    key, value, headers = record("tracking.updated")
    with pytest.raises(BadInput, match="not accepted") as caught:
        codec.decode(key, value, headers, accepted_types=frozenset({"order.paid"}), max_bytes=1 << 20)
    assert caught.value.error_type == "unknown_type"


def test_schema_violation_says_which_field():
    key, value, headers = record("order.created")
    data = orjson.loads(value)
    data["customer"]["phone"] = "13800138000"  # not E.164
    with pytest.raises(BadInput, match="phone"):
        decode(key, orjson.dumps(data), headers)


def test_encode_is_binary_mode_and_round_trips():
    from datetime import UTC, datetime

    value, headers = codec.encode(event_type="order.paid", event_id="x-1", source="urn:test",
                                  time=datetime(2026, 1, 1, tzinfo=UTC),
                                  data={"order_id": "A-1", "paid_at": "2026-01-01T00:00:00+00:00"},
                                  subject="A-1")
    h = dict(headers)
    assert h["ce_subject"] == b"A-1" and h["content-type"] == b"application/json"
    assert decode(b"A-1", value, headers).data["order_id"] == "A-1"


def test_dlq_headers_keep_the_original_and_add_the_reason():
    headers = codec.dlq_headers([("ce_id", b"e1")], BadInput("malformed_json", "value is not JSON"),
                                topic="orders.events", partition=2, offset=41)
    assert headers[0] == ("ce_id", b"e1")
    assert dict(headers) | {} == {
        "ce_id": b"e1", "error_type": b"malformed_json", "error_message": b"value is not JSON",
        "original_topic": b"orders.events", "original_partition": b"2", "original_offset": b"41",
    }
