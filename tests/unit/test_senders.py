"""Each sender against its sink: the providers' API shapes, answers and failures, over
real HTTP on loopback (no broker)."""

from __future__ import annotations

import dataclasses
import email
import email.policy
from pathlib import Path

import aiohttp
import pytest
from standardwebhooks import Webhook

from worker import sinks
from worker.sinks import read_outbox
from worker.broker import free_port
from worker.domain.sms import segments
from worker.render import for_channel, render
from worker.senders import PermanentFailure, RetryLater
from worker.senders.apns import ApnsSender
from worker.senders.push import FcmSender
from worker.senders.sms import SmsSender
from worker.senders.smtp import EmailSender
from worker.senders.webhook import WebhookSender
from worker.senders.wechat import WechatSender
from worker.settings import Settings

FACTS = {"shop": {"name": "熊猫优选"}, "customer": {"name": "李雷"}, "order_id": "SO-1001",
         "tracking_url": "http://127.0.0.1:6066/t/ZmFrZS1saW5r", "total": {"amount": "88", "currency": "CNY"},
         "items": [], "promised_delivery_by": None,
         "shipment": {"carrier": "sf-express", "tracking_number": "SF1234567890", "carrier_eta": None}}


def command(channel: str, recipient: dict, kind: str = "shipped", locale: str = "zh_CN",
            nid: str = "ntf-1") -> dict:
    content = render(kind, locale, "Asia/Shanghai", FACTS)
    return {"notification_id": nid, "kind": kind, "priority": "transactional",
            "order_id": "SO-1001", "customer_id": "C1", "channel": channel, "locale": "zh-CN",
            "recipient": recipient, "tracking_url": FACTS["tracking_url"],
            "content": for_channel(channel, content, "SO-1001", FACTS["tracking_url"], "tpl-1"),
            "created_at": "2026-11-26T08:00:00+00:00"}


@pytest.fixture
async def sink(tmp_path: Path):
    settings = Settings(
        outbox=tmp_path / "outbox.jsonl", smtp_port=free_port(), sinks_web_port=free_port(),
        sms_url=f"http://127.0.0.1:{free_port()}", push_url=f"http://127.0.0.1:{free_port()}",
        apns_url=f"http://127.0.0.1:{free_port()}",
        wechat_url=f"http://127.0.0.1:{free_port()}",
        webhook_url=f"http://127.0.0.1:{free_port()}/webhooks", provider_timeout_seconds=1,
        email_events_url=f"http://127.0.0.1:{free_port()}",
        sms_per_number_per_second=0)
    servers = await sinks.serve(settings)
    yield settings
    for server in servers:
        await server.cleanup() if hasattr(server, "cleanup") else server.close()


def outbox(settings: Settings) -> list[dict]:
    return read_outbox(settings.outbox)


async def faults(settings: Settings, **shares: float) -> None:
    async with aiohttp.ClientSession() as http:
        await http.post(f"http://127.0.0.1:{settings.sinks_web_port}/_faults", json=shares)


async def test_email_is_multipart_alternative_with_both_parts(sink):
    sender = EmailSender(sink)
    await sender.send(command("email", {"email": "li@example.com"}))
    [entry] = outbox(sink)
    message = email.message_from_string(entry["request"]["data"], policy=email.policy.default)
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert message["Subject"] == "【熊猫优选】您的订单已发货"


async def test_after_a_crash_the_mail_relays_events_api_tells_whether_it_took_a_message(sink):
    sender = EmailSender(sink)
    taken = command("email", {"email": "li@example.com"}, nid="ntf-taken")
    await sender.send(taken)
    never = command("email", {"email": "li@example.com"}, nid="ntf-never")
    since = "2026-01-01T00:00:00+00:00"
    found = await sender.find(taken, since)
    assert found is not None and found.provider_message_id == "<ntf-taken@order-notifier>"
    assert await sender.find(never, since) is None
    # Asked only about what came after the interrupted attempt began.
    assert await sender.find(taken, "2099-01-01T00:00:00+00:00") is None
    # No relay to ask, or one that does not answer: the message goes again.
    unreachable = EmailSender(dataclasses.replace(sink, email_events_url=f"http://127.0.0.1:{free_port()}"))
    assert await unreachable.find(taken, since) is None
    assert await EmailSender(dataclasses.replace(sink, email_events_url="")).find(taken, since) is None
    for s in (sender, unreachable):
        await s.close()


async def test_sms_goes_as_twilio_would_take_it_in_at_most_two_segments(sink):
    sender = SmsSender(sink)
    delivery = await sender.send(command("sms", {"phone": "+8613812345678"}))
    [entry] = outbox(sink)
    request = entry["request"]
    assert request["path"] == f"/2010-04-01/Accounts/{sink.sms_account_sid}/Messages.json"
    assert request["to"] == "+8613812345678" and request["notification_id"] == "ntf-1"
    assert "SF1234567890" in request["body"] and FACTS["tracking_url"] in request["body"]
    assert request["num_segments"] == segments(request["body"]).count <= 2
    assert delivery.provider_message_id == request["sid"]
    with pytest.raises(PermanentFailure) as opted_out:
        await sender.send(command("sms", {"phone": "+8613800000000"}))
    assert opted_out.value.reason == "blocked_by_user"
    with pytest.raises(PermanentFailure) as invalid:
        await sender.send(command("sms", {"phone": "13812345678"}))
    assert invalid.value.reason == "invalid_recipient"
    await sender.close()


async def test_each_customer_hears_from_one_number_of_the_pool_at_the_number_rate(sink, monkeypatch):
    from worker.senders import sms

    pool = ("+15005550006", "+15005550007", "+15005550008")
    settings = dataclasses.replace(sink, sms_from=",".join(pool), sms_per_number_per_second=1.0)
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:  # no real waiting in a unit test
        pauses.append(seconds)

    monkeypatch.setattr(sms, "sleep", sleep)
    sender = SmsSender(settings)
    phones = [f"+8613812{n:05d}" for n in range(1, 31)]
    for phone in phones + phones[:3]:
        await sender.send(command("sms", {"phone": phone}))
    sent = [(e["request"]["to"], e["request"]["from"]) for e in outbox(settings)]
    number_of = dict(sent[:30])
    assert set(number_of.values()) == set(pool)  # the load spreads over the pool
    assert all(number_of[to] == sender_number for to, sender_number in sent)  # one number each
    # 33 messages at once from 3 numbers at 1 a second each: all but the first of each wait,
    # the last about 10 s.
    assert len(pauses) == 33 - 3 and 8 <= max(pauses) <= 12
    await sender.close()


async def test_a_throttled_or_failing_provider_means_retry_later_with_its_retry_after(sink):
    sender = SmsSender(sink)
    await faults(sink, throttle=1.0, retry_after=7)
    with pytest.raises(RetryLater) as throttled:
        await sender.send(command("sms", {"phone": "+8613812345678"}))
    assert throttled.value.retry_after == 7
    await faults(sink, throttle=0, error=1.0)
    with pytest.raises(RetryLater):
        await sender.send(command("sms", {"phone": "+8613812345678"}))
    await faults(sink, error=0, timeout=1.0, hang_seconds=1.5)
    with pytest.raises(RetryLater):  # the client gives up after provider_timeout_seconds
        await sender.send(command("sms", {"phone": "+8613812345678"}))
    assert outbox(sink) == []
    await sender.close()


async def test_push_goes_to_fcm_v1_and_an_unregistered_token_fails_for_good(sink):
    sender = FcmSender(sink)
    delivery = await sender.send(command("push", {"push_token": "tok-1", "platform": "fcm"}))
    [entry] = outbox(sink)
    message = entry["request"]["message"]
    assert message["token"] == "tok-1" and message["data"]["notification_id"] == "ntf-1"
    assert message["notification"]["title"] == "【熊猫优选】您的订单已发货"
    assert delivery.provider_message_id.startswith(f"projects/{sink.push_project}/messages/")
    with pytest.raises(PermanentFailure) as gone:
        await sender.send(command("push", {"push_token": "unregistered-7", "platform": "fcm"}))
    assert gone.value.reason == "unregistered_token"
    await sender.close()


async def test_wechat_caches_its_token_renews_it_when_expired_and_never_doubles(sink):
    sender = WechatSender(sink)
    await sender.send(command("wechat", {"wechat_openid": "o-abc"}, nid="ntf-1"))
    first_token = sender.token
    await sender.send(command("wechat", {"wechat_openid": "o-abc"}, nid="ntf-2"))
    assert sender.token == first_token  # cached, not fetched per message
    async with aiohttp.ClientSession() as http:
        await http.post(f"{sink.wechat_url}/_expire_tokens")
    await sender.send(command("wechat", {"wechat_openid": "o-abc"}, nid="ntf-3"))  # 42001, renewed
    assert sender.token != first_token
    await sender.send(command("wechat", {"wechat_openid": "o-abc"}, nid="ntf-3"))  # a repeat
    entries = [e["request"] for e in outbox(sink)]
    assert [(e["notification_id"], e["duplicate"]) for e in entries] == [
        ("ntf-1", False), ("ntf-2", False), ("ntf-3", False), ("ntf-3", True)]
    sent = entries[0]["message"]
    assert sent["template_id"] == "tpl-1" and sent["client_msg_id"] == "ntf-1"
    assert sent["data"]["keyword1"]["value"] == "SO-1001"
    with pytest.raises(PermanentFailure) as blocked:
        await sender.send(command("wechat", {"wechat_openid": "blocked-9"}, nid="ntf-4"))
    assert blocked.value.reason == "blocked_by_user"
    await sender.close()


async def test_webhooks_verify_with_the_standard_webhooks_package_and_keep_their_id(sink):
    sender = WebhookSender(sink)
    await faults(sink, error=1.0)
    with pytest.raises(RetryLater):
        await sender.send(command("webhook", {"url": sink.webhook_url}))
    await faults(sink, error=0)
    await sender.send(command("webhook", {"url": sink.webhook_url}))
    [entry] = outbox(sink)
    request = entry["request"]
    headers = {"webhook-id": request["webhook_id"], "webhook-timestamp": request["timestamp"],
               "webhook-signature": request["signature"]}
    event = Webhook(sink.webhook_secret).verify(request["body"], headers)
    assert request["webhook_id"] == "ntf-1"  # the notification id, the same on every attempt
    assert event["type"] == "notification.shipped" and event["data"]["order_id"] == "SO-1001"
    # A forged body does not verify.
    with pytest.raises(Exception):
        Webhook(sink.webhook_secret).verify(request["body"].replace("SO-1001", "SO-9999"), headers)
    # The receiver refuses a signature made with another secret.
    forger = WebhookSender(dataclasses.replace(sink, webhook_secret="whsec_" + "QUJD" * 8))
    with pytest.raises(PermanentFailure):
        await forger.send(command("webhook", {"url": sink.webhook_url}, nid="ntf-2"))
    assert len(outbox(sink)) == 1
    await forger.close()
    await sender.close()


async def test_apple_devices_get_apns_over_http2_with_a_signed_provider_token(sink):
    sender = ApnsSender(sink)
    delivery = await sender.send(command("push", {"push_token": "a1b2c3", "platform": "apns"}))
    [entry] = outbox(sink)
    request = entry["request"]
    assert request["provider"] == "apns" and request["http_version"] == "2"
    assert request["path"] == "/3/device/a1b2c3" and request["collapse_id"] == "ntf-1"
    assert request["payload"]["aps"]["alert"]["title"] == "【熊猫优选】您的订单已发货"
    assert delivery.provider_message_id == request["apns_id"]
    with pytest.raises(PermanentFailure) as gone:
        await sender.send(command("push", {"push_token": "unregistered-3", "platform": "apns"}))
    assert gone.value.reason == "unregistered_token"
    sender.token = sender.token[:-4] + "AAAA"  # a token the sink cannot verify
    with pytest.raises(PermanentFailure):
        await sender.send(command("push", {"push_token": "a1b2c3", "platform": "apns"}, nid="ntf-2"))
    await sender.close()
