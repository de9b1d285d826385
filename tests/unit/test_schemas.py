import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from worker import schemas, topics
from worker.settings import Settings

SHARED_EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "examples"
CONTRACT_TYPES = {
    "order.created", "order.paid", "order.packed", "order.shipped", "order.cancelled",
    "order.return_requested", "order.return_received", "order.refunded", "tracking.updated",
    "clock.tick", "customer.preferences_updated", "notification.delivered", "notification.opened",
    "notification.clicked", "notification.bounced", "notification.unsubscribed",
    "notification.requested", "notification.sent", "notification.failed", "notification.suppressed",
    "alert.tracking_stalled", "alert.lane_delay", "alert.ship_sla_breached",
    "alert.high_value_exception", "alert.suspicious_orders",
}


def test_every_contract_event_type_has_a_schema():
    assert CONTRACT_TYPES <= set(schemas.event_types())


@pytest.mark.parametrize("event_type", schemas.event_types())
def test_schema_is_valid_draft_2020_12_with_an_id(event_type):
    schema = schemas.load(event_type)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{event_type}.json")
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("path", sorted(SHARED_EXAMPLES.glob("*.json")) or [None], ids=str)
def test_contract_examples_validate(path):
    if path is None:
        pytest.skip("../shared/examples is not beside this checkout")
    event = json.loads(path.read_text())
    assert schemas.problem(event["headers"]["ce_type"], event["value"]) is None


def test_asyncapi_lists_every_topic_and_message():
    doc = yaml.safe_load((schemas.SCHEMA_DIR / "asyncapi.yaml").read_text())
    assert doc["asyncapi"].startswith("3.0")
    addresses = {c["address"] for c in doc["channels"].values()}
    assert set(topics.specs(Settings())) == addresses  # every topic the program creates, no other
    messages = {m["name"] for m in doc["components"]["messages"].values()}
    assert CONTRACT_TYPES <= messages
