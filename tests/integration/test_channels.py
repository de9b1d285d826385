"""Every channel through the real broker, the senders and the sinks, while the providers
fail, throttle and time out: each notification reaches its provider once and has one
final event."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest

from tests.integration.conftest import wait_for
from tests.integration.kafka_io import produce, read_all
from worker import codec, settings as settings_module
from worker.render import for_channel, render

pytestmark = pytest.mark.integration

PER_CHANNEL = 60
FACTS = {"shop": {"name": "熊猫优选"}, "customer": {"name": "李雷"}, "order_id": "SO-1",
         "tracking_url": "http://127.0.0.1:6066/t/x", "total": {"amount": "88", "currency": "CNY"},
         "items": [], "promised_delivery_by": None,
         "shipment": {"carrier": "zto", "tracking_number": "ZTO123", "carrier_eta": None}}


def commands(settings, per_channel: int = PER_CHANNEL) -> list[dict]:
    recipients = {"email": lambda n: {"email": f"c{n}@example.com"},
                  "sms": lambda n: {"phone": f"+861391{n:03d}5678"},
                  "push": lambda n: {"push_token": f"tok-{n}", "platform": ("fcm", "apns")[n % 2]},
                  "wechat": lambda n: {"wechat_openid": f"o-{n}"},
                  "webhook": lambda n: {"url": settings.webhook_url},
                  "in_app": lambda n: {"customer_id": f"C{n}"}}
    made = []
    for channel, recipient in recipients.items():
        for n in range(per_channel):
            locale = ("zh_CN", "zh_TW", "en")[n % 3]
            content = render("shipped", locale, "Asia/Shanghai", {**FACTS, "order_id": f"SO-{n}"})
            made.append({
                "notification_id": f"ntf-{channel}-{n}", "kind": "shipped", "priority": "transactional",
                "order_id": f"SO-{n}", "customer_id": f"C{n}", "channel": channel,
                "locale": locale.replace("_", "-"), "recipient": recipient(n),
                "content": for_channel(channel, content, f"SO-{n}", FACTS["tracking_url"], "tpl"),
                "tracking_url": FACTS["tracking_url"],
                "created_at": datetime.now(UTC).isoformat(), "caused_by": [f"ev-{n}"]})
    return made


def _produce(stack, settings, sent: list[dict]) -> None:
    records = []
    for command in sent:
        value, headers = codec.encode(event_type="notification.requested",
                                      event_id=command["notification_id"], source="urn:test",
                                      time=datetime.now(UTC), data=command, subject=command["order_id"])
        records.append((settings.topics.dispatch(command["channel"]), command["customer_id"].encode(),
                        value, headers))
    asyncio.run(produce(stack.env["NOTIFIER_KAFKA_BOOTSTRAP"], records))


def test_every_channel_delivers_each_notification_once_through_provider_faults(stack):
    stack.env.update(NOTIFIER_SINK_FAULTS="error=0.3,throttle=0.1,timeout=0.05,retry_after=0.5,hang_seconds=5",
                     NOTIFIER_PROVIDER_TIMEOUT_SECONDS="3", NOTIFIER_RETRY_ATTEMPTS="30",
                     NOTIFIER_RETRY_BASE_SECONDS="0.2", NOTIFIER_RETRY_MAX_SECONDS="2")
    settings = settings_module.load(stack.env)
    stack.start("sinks")
    stack.start("senders")
    stack.wait_ready()
    sent = commands(settings)
    _produce(stack, settings, sent)

    def outcomes():
        return asyncio.run(read_all(settings.kafka_servers, settings.topics.sent))

    assert wait_for(lambda: len(outcomes()) >= len(sent), timeout=240)
    records = outcomes()
    finals = [orjson.loads(r.value) for r in records]
    assert Counter(f["notification_id"] for f in finals) == Counter(c["notification_id"] for c in sent)
    assert {(f["channel"], f.get("reason")) for f in finals if f["attempts"] > 1}  # faults struck
    not_sent = [(f["notification_id"], f.get("reason")) for r, f in zip(records, finals)
                if dict(r.headers)["ce_type"] != b"notification.sent"]
    assert not_sent == []

    received = Counter(e["request"]["notification_id"] for e in stack.outbox_entries())
    inbox = Counter(orjson.loads(r.value)["notification_id"]
                    for r in asyncio.run(read_all(settings.kafka_servers, settings.topics.inbox)))
    for command in sent:
        nid, channel = command["notification_id"], command["channel"]
        where = inbox if channel == "in_app" else received
        assert where[nid] == 1, f"{nid} reached its provider {where[nid]} times"
    assert "Traceback" not in stack.log("senders")


def test_a_provider_that_stays_down_dead_letters_each_send_after_its_retry_budget(stack):
    stack.env.update(NOTIFIER_SINK_FAULTS="error=1", NOTIFIER_RETRY_ATTEMPTS="3",
                     NOTIFIER_RETRY_BASE_SECONDS="0.1", NOTIFIER_RETRY_MAX_SECONDS="0.5")
    settings = settings_module.load(stack.env)
    stack.start("sinks")
    stack.start("senders")
    stack.wait_ready()
    sent = [c for c in commands(settings) if c["channel"] == "push"][:5]
    _produce(stack, settings, sent)

    def dead():
        return asyncio.run(read_all(settings.kafka_servers, settings.topics.dlq))

    assert wait_for(lambda: len(dead()) >= 5, timeout=60)
    letters = dead()
    assert sorted(orjson.loads(r.value)["notification_id"] for r in letters) == sorted(
        c["notification_id"] for c in sent)
    for letter in letters:
        headers = dict(letter.headers)
        assert headers["error_type"] == b"retries_exhausted"
        assert headers["original_topic"] == settings.topics.dispatch("push").encode()
        assert headers["error_message"].startswith(b"3 attempts")
    finals = [orjson.loads(r.value) for r in asyncio.run(read_all(settings.kafka_servers,
                                                                   settings.topics.sent))]
    assert sorted((f["reason"], f["attempts"]) for f in finals) == [("retries_exhausted", 3)] * 5
    assert stack.outbox_entries() == []


def test_senders_killed_mid_run_and_restarted_still_deliver_each_notification_once(stack):
    stack.env.update(NOTIFIER_SINK_FAULTS="error=0.3,throttle=0.1,timeout=0.05,retry_after=0.5,hang_seconds=5",
                     NOTIFIER_PROVIDER_TIMEOUT_SECONDS="3", NOTIFIER_RETRY_ATTEMPTS="40",
                     NOTIFIER_RETRY_BASE_SECONDS="0.2", NOTIFIER_RETRY_MAX_SECONDS="2",
                     NOTIFIER_PROVIDER_RATES="twilio=500")
    settings = settings_module.load(stack.env)
    stack.start("sinks")
    senders = stack.start("senders")
    stack.wait_ready()
    sent = commands(settings, per_channel=334)  # 2,004 notifications
    _produce(stack, settings, sent)

    def outcomes():
        return asyncio.run(read_all(settings.kafka_servers, settings.topics.sent))

    assert wait_for(lambda: len(outcomes()) >= len(sent) // 3, timeout=120)
    senders.kill()  # kill -9, in the middle of sends and retries
    senders.wait()
    stack.start("senders")
    assert wait_for(lambda: len(outcomes()) >= len(sent), timeout=300)
    finals = Counter(orjson.loads(r.value)["notification_id"] for r in outcomes())
    assert finals == Counter(c["notification_id"] for c in sent)  # one final event each

    received = Counter(e["request"]["notification_id"] for e in stack.outbox_entries()
                       if not e["request"].get("duplicate"))  # WeChat drops repeats itself
    inbox = Counter(orjson.loads(r.value)["notification_id"]
                    for r in asyncio.run(read_all(settings.kafka_servers, settings.topics.inbox)))
    missing = [c["notification_id"] for c in sent if not (received + inbox)[c["notification_id"]]]
    assert missing == []
    # Twice only where the provider can neither tell whether it took an interrupted send nor
    # drop a repeat (FCM and APNs; the mail relay's events API tells of email): the senders
    # say so, and the repeat carries the same push tag, so the phone shows it once.
    twice = sorted(nid for nid, n in (received + inbox).items() if n > 1)
    lines = [orjson.loads(line) for line in stack.log("senders").splitlines() if line.startswith("{")]
    resent = {line["notification_id"] for line in lines if "cannot tell" in line["message"]}
    assert all(nid in resent and nid.split("-")[1] == "push" for nid in twice), twice
