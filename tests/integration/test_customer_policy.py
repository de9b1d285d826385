"""The customer stage on the real broker: preferences, erasure and channel fallback."""

from __future__ import annotations

import asyncio
import urllib.request
import dataclasses
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from tests.integration.conftest import promtool_check_metrics, wait_for
from tests.integration.kafka_io import produce, read_all
from worker import codec, settings as settings_module, simulate
from worker.domain.notification import notification_id

pytestmark = pytest.mark.integration


def with_email(record: simulate.Record, address: str) -> simulate.Record:
    data = {**record.data, "customer": {**record.data["customer"], "email": address}}
    return dataclasses.replace(record, data=data)


def preferences(customer_id: str, **update) -> tuple:
    value, headers = codec.encode(event_type="customer.preferences_updated",
                                  event_id=f"pref-{customer_id}", source="urn:test",
                                  time=datetime.now(UTC), data={"customer_id": customer_id, **update})
    return customer_id.encode(), value, headers


def test_opt_outs_erasure_and_a_bounced_email_falling_back(stack):
    stack.without_quiet_hours()
    settings = settings_module.load(stack.env)
    for command in ("sinks", "worker", "senders"):
        stack.start(command)
    stack.wait_ready()

    records = list(simulate.orders(settings, count=12, seed=5,
                                   start=datetime.now(UTC) - timedelta(minutes=6),
                                   spacing=timedelta(0)))
    created = [r for r in records if r.event_type == "order.created"]
    customer = {r.key: r.data["customer"]["id"] for r in created}
    bounced, opted_out, erased = created[0].key, created[1].key, created[2].key
    records = [with_email(r, "nobody@bounce.invalid") if r.key == bounced and r in created else r
               for r in records]
    no_channels = dict.fromkeys(("email", "sms", "push", "wechat", "in_app", "webhook"), False)
    asyncio.run(produce(settings.kafka_bootstrap, [
        (settings.topics.preferences, *preferences(customer[opted_out], channels=no_channels,
                                                   marketing_opt_in=False)),
        (settings.topics.preferences, customer[erased].encode(), None, []),
    ]))
    asyncio.run(asyncio.sleep(3))  # the customer stage reads them before the orders come
    asyncio.run(simulate.produce(settings, iter(records), progress=False))

    def outcomes():
        found = asyncio.run(read_all(settings.kafka_bootstrap, settings.topics.sent))
        return {(orjson.loads(r.value)["order_id"], dict(r.headers)["ce_type"].decode()):
                orjson.loads(r.value) for r in found}

    assert wait_for(lambda: len(outcomes()) >= 12, timeout=120), outcomes()
    seen = outcomes()
    assert seen[(opted_out, "notification.suppressed")]["reason"] == "opted_out"
    assert seen[(erased, "notification.suppressed")]["reason"] == "erased"
    failure = seen[(bounced, "notification.failed")]
    assert (failure["channel"], failure["reason"]) == ("email", "invalid_recipient")
    # The next channel the order's customer can be reached on: the in-app inbox.
    def fallbacks() -> list[dict]:
        inbox = asyncio.run(read_all(settings.kafka_bootstrap, settings.topics.dispatch("in_app")))
        return [orjson.loads(r.value) for r in inbox]

    # The failure has to reach the customer stage first.
    commands = wait_for(fallbacks, timeout=30)
    assert [(c["order_id"], c["notification_id"]) for c in commands] == [
        (bounced, notification_id(bounced, "order_confirmed") + "-fallback")]
    others = set(customer) - {bounced, opted_out, erased}
    emails = {e["request"]["notification_id"] for e in stack.outbox_entries()}
    assert emails == {notification_id(o, "order_confirmed") for o in others}
    # The outcomes are counted in the engagement figures, by kind, channel and variant.

    def figures() -> tuple[int, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.web_port}/stats", timeout=5) as answer:
            rows = [r for r in orjson.loads(answer.read())["figures"]
                    if (r["kind"], r["channel"]) == ("order_confirmed", "email")]
        return sum(r["sent"] for r in rows), sum(r["failed"] for r in rows)

    assert wait_for(lambda: figures() == (len(others), 1), timeout=30), figures()
    # Both scrapes, after real traffic, pass Prometheus' own linter.
    assert promtool_check_metrics(stack.web_port) == ""
    assert promtool_check_metrics(int(stack.env["NOTIFIER_SENDERS_WEB_PORT"])) == ""
