"""The tracking page and the engagement loop on the real broker, with two workers.

One split order is produced; the page is looked up on both workers (one of them does not
own the order and forwards the request), opened from the notification's signed link, and
probed with wrong, forged, expired and brute-forced lookups. Then 1,000 clicks become
1,000 engagement events and the right figures at ``/stats``. Two page server processes
(``notifier pages``) answer the same lookups on a port of their own, from the workers'
changelogs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from tests.conftest import b64, unb64
from tests.integration.conftest import Stack, wait_for
from tests.integration.kafka_io import produce, read_all
from worker import codec, settings as settings_module
from worker.broker import free_port
from worker.domain import links
from worker.domain.sms import segments, twilio_signature
from worker.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration

ORDER = "SO-TRACK-1"
EMAIL = "Lin.Mei@example.cn"
PHONE = "+8613800138000"
NOW = datetime.now(UTC).replace(microsecond=0)


def at(hours: float) -> str:
    return (NOW + timedelta(hours=hours)).isoformat()


def events() -> list[tuple[str, str, dict[str, Any]]]:
    """(topic name, event type, data): one order in two parcels, the first nearly home."""
    order = {"order_id": ORDER, "shop": {"id": "shop-1", "name": "星河小铺", "support_url": "https://shop.example/help"},
             "customer": {"id": "C-TRACK-1", "name": "林美", "email": EMAIL, "phone": PHONE,
                          "locale": "zh-CN", "timezone": "Asia/Shanghai"},
             "items": [{"sku": "TEA-1", "name": "龙井茶", "quantity": 2, "unit_price": "88.00", "category": "fresh"},
                       {"sku": "CUP-1", "name": "茶杯", "quantity": 1, "unit_price": "60.00", "category": "fragile"}],
             "total": {"amount": "236.00", "currency": "CNY"}, "placed_at": at(-50),
             "promised_delivery_by": at(30)}
    out = [("orders", "order.created", order),
           ("orders", "order.paid", {"order_id": ORDER, "paid_at": at(-49)})]
    for n, number in ((1, "SF1000000001"), (2, "SF1000000002")):
        out.append(("orders", "order.shipped", {
            "order_id": ORDER, "shipment_id": f"{ORDER}-{n}", "carrier": "sf-express",
            "tracking_number": number, "shipped_at": at(-30 + n),
            "origin": {"country": "CN", "region": "Zhejiang", "city": "Hangzhou"},
            "destination": {"country": "CN", "region": "Shanghai", "city": "Shanghai"}}))
    scans = {1: [("PICKED_UP", -28, "Hangzhou"), ("IN_TRANSIT", -20, "Jiaxing"),
                 ("ARRIVED_AT_DESTINATION", -8, "Shanghai"), ("OUT_FOR_DELIVERY", -2, "Shanghai")],
             2: [("PICKED_UP", -26, "Hangzhou")]}
    for n, parcel_scans in scans.items():
        for status, hours, city in parcel_scans:
            out.append(("tracking", "tracking.updated", {
                "order_id": ORDER, "shipment_id": f"{ORDER}-{n}", "carrier": "sf-express",
                "tracking_number": f"SF100000000{n}",
                "checkpoint": {"status": status, "occurred_at": at(hours),
                               "location": {"country": "CN", "city": city}}}))
    return out


class Site:
    def __init__(self, stack: Stack, second_port: int) -> None:
        self.stack, self.settings = stack, settings_module.load(stack.env)
        self.ports = (stack.web_port, second_port)
        self.pages_port = int(stack.env["NOTIFIER_PAGES_WEB_PORT"])

    def get(self, path: str, port: int | None = None) -> tuple[int, str]:
        url = f"http://127.0.0.1:{port or self.ports[0]}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read().decode()

    def owner_and_other(self) -> tuple[int, int]:
        """The web ports of the worker that owns the order's partition and of the other."""
        partitions = self.settings.partitions
        partition = DefaultPartitioner()(ORDER.encode(), list(range(partitions)), list(range(partitions)))
        for port, other in (self.ports, self.ports[::-1]):
            _, body = self.get("/readyz", port)
            if partition in orjson.loads(body)["partitions"].get(self.settings.topics.orders, []):
                return port, other
        raise AssertionError("no worker owns the order's partition")


@pytest.fixture(scope="module")
def site(kafka, tmp_path_factory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("tracking")
    stack = Stack(kafka, workdir)
    stack.without_quiet_hours()
    second_port = free_port()
    stack.env["NOTIFIER_PAGES_WEB_PORT"] = str(free_port())
    stack.start("sinks")
    stack.start("worker")
    stack.start("worker", name="worker-b", NOTIFIER_WEB_PORT=str(second_port),
                NOTIFIER_ADVERTISED_URL=f"http://127.0.0.1:{second_port}",
                NOTIFIER_DATA_DIR=str(workdir / "data-b"))
    try:
        stack.wait_ready()
        s = Site(stack, second_port)
        orders = s.settings.partitions
        assert wait_for(lambda: all(
            orjson.loads(s.get("/readyz", p)[1]).get("ready") for p in s.ports) and sum(
            len(orjson.loads(s.get("/readyz", p)[1])["partitions"].get(s.settings.topics.orders, []))
            for p in s.ports) == orders, timeout=90)
        topics = {"orders": s.settings.topics.orders, "tracking": s.settings.topics.tracking}
        # The customer would rather hear by SMS where a kind allows it (the parcels' news).
        value, headers = codec.encode(
            event_type="customer.preferences_updated", event_id="pref-C-TRACK-1", source="urn:test",
            time=NOW, data={"customer_id": "C-TRACK-1", "marketing_opt_in": False,
                            "channels": {"sms": True, "email": True, "in_app": True},
                            "channel_order": ["sms", "email", "in_app"]})
        records = [(s.settings.topics.preferences, b"C-TRACK-1", value, headers)]
        for topic, event_type, data in events():
            value, headers = codec.encode(event_type=event_type, event_id=f"{event_type}-{len(records)}",
                                          source="urn:test", time=NOW, data=data)
            records.append((topics[topic], ORDER.encode(), value, headers))
        # An in-app message about the order, as the senders write it to the customer's inbox.
        message = {"notification_id": "ntf-inbox-1", "kind": "out_for_delivery", "order_id": ORDER,
                   "customer_id": "C-TRACK-1", "title": "Your parcel is out for delivery",
                   "text": "Parcel 1 of 2 arrives today.", "url": "", "created_at": at(-2)}
        value, headers = codec.encode(event_type="inbox.message", event_id="ntf-inbox-1",
                                      source="urn:order-notifier:inbox", time=NOW, data=message)
        records.append((s.settings.topics.inbox, b"C-TRACK-1", value, headers))
        asyncio.run(produce(s.settings.kafka_bootstrap, records))
        # Every event read: both parcels as far as their last scans, and the in-app message.
        assert wait_for(lambda: (lambda html: 'id="inbox-title"' in html and sections(html) == {
            f"{ORDER}-1": "out_for_delivery", f"{ORDER}-2": "in_transit"})(
            s.get(f"/track?order={ORDER}&email={EMAIL}")[1]), timeout=60)
        stack.start("pages")
        yield s
    finally:
        stack.stop()


def sections(html: str) -> dict[str, str]:
    """Each parcel's section of the page, by shipment id, with its progress step."""
    return dict(re.findall(r'<section class="shipment" data-shipment="([^"]+)" data-step="([^"]+)"', html))


def test_the_order_is_found_by_email_or_phone_digits_on_either_worker(site):
    owner, other = site.owner_and_other()
    pages = {port: site.get(f"/track?order={ORDER}&email={EMAIL.upper()}", port) for port in (owner, other)}
    for status, html in pages.values():
        assert status == 200
        assert sections(html) == {f"{ORDER}-1": "out_for_delivery", f"{ORDER}-2": "in_transit"}
        assert "星河小铺" in html and "SF1000000001" in html and "SF1000000002" in html
    # The other worker answered from the owner: the same page.
    assert pages[owner][1] == pages[other][1]
    # The order's in-app messages, from whichever worker holds the customer's inbox.
    inbox = pages[other][1].split('id="inbox-title"')[-1]
    assert "Your parcel is out for delivery" in inbox and "Parcel 1 of 2 arrives today." in inbox
    _, metrics = site.get("/metrics", other)
    assert re.search(r'notifier_tracking_lookups_total\{outcome="forwarded"\} [1-9]', metrics)
    # Two parcels on their way, counted by the worker that owns the order's partition.
    assert wait_for(lambda: sum(float(re.search(r"^notifier_active_shipments (\S+)$", site.get("/metrics", port)[1],
                                                re.M).group(1)) for port in site.ports) == 2, timeout=10)
    status, html = site.get(f"/track?order={ORDER}&phone4=8000&lang=en", other)
    assert status == 200 and "Out for delivery" in html and "Parcel 2 of 2" in html


def dispatched(site: Site, channel: str, kind: str) -> dict:
    """The first dispatch command of ``kind`` on ``channel``, once there is one."""
    def first() -> dict | None:
        found = asyncio.run(read_all(site.settings.kafka_bootstrap, site.settings.topics.dispatch(channel)))
        return next((orjson.loads(r.value) for r in found if orjson.loads(r.value)["kind"] == kind), None)

    command = wait_for(first, timeout=60)
    assert command, f"no {kind} was dispatched by {channel}"
    return command


def clicks_on(site: Site, notification_id: str) -> list[dict]:
    found = asyncio.run(read_all(site.settings.kafka_bootstrap, site.settings.topics.engagement))
    return [orjson.loads(r.value) for r in found
            if dict(r.headers)["ce_type"] == b"notification.clicked"
            and orjson.loads(r.value)["notification_id"] == notification_id]


def confirmation_link(site: Site) -> tuple[str, dict]:
    """The path of the signed link in the order's confirmation email, and the command."""
    command = dispatched(site, "email", "order_confirmed")
    return command["tracking_url"].removeprefix(site.settings.public_url.rstrip("/")), command


def test_the_notification_link_opens_the_page_and_counts_a_click(site):
    path, command = confirmation_link(site)
    url = command["tracking_url"]
    assert ORDER not in url and EMAIL not in url  # the link names no order and no address
    assert f'src="{url.replace("/c/", "/o/")}.gif"' in command["content"]["html"]  # the open pixel
    for port in site.ports:
        status, html = site.get(path, port)  # /c/… answers 303 to the page, which urllib follows
        assert status == 200 and sections(html)[f"{ORDER}-1"] == "out_for_delivery"

    assert wait_for(lambda: len(clicks_on(site, command["notification_id"])) == 2, timeout=30)
    clicks = clicks_on(site, command["notification_id"])
    assert {c["kind"] for c in clicks} == {"order_confirmed"} and EMAIL not in str(clicks)


def test_an_sms_carries_the_parcel_news_and_a_short_link_that_opens_the_page(site):
    public = site.settings.public_url.rstrip("/")

    command = dispatched(site, "sms", "out_for_delivery")
    url, text = command["tracking_url"], command["content"]["text"]
    assert re.fullmatch(re.escape(public) + r"/s/[A-Za-z0-9_-]{12}", url)
    # Carrier, number and link in two segments, where the whole link took three.
    assert "顺丰速运" in text and "SF1000000001" in text and text.endswith(url)
    assert segments(text).count == 2
    for port in site.ports:  # every worker knows every code
        status, html = site.get(url.removeprefix(public), port)  # 303 to the page, followed
        assert status == 200 and sections(html)[f"{ORDER}-1"] == "out_for_delivery"

    assert wait_for(lambda: len(clicks_on(site, command["notification_id"])) == 2, timeout=30)
    clicks = clicks_on(site, command["notification_id"])
    assert {(c["kind"], c["channel"]) for c in clicks} == {("out_for_delivery", "sms")}
    # A code nobody was sent opens nothing and counts nothing.
    made_up = "A" * 12 if not url.endswith("A" * 12) else "B" * 12
    status, html = site.get(f"/s/{made_up}")
    assert status == 200 and "SF1000000001" not in html and not sections(html)


def test_a_customer_follows_the_split_order_in_a_browser(site):
    """Headless Chromium (Debian's) on the real page: the form, both parcels' progress and
    timelines, the language switch, the signed link; screenshots kept in tests/artifacts/."""
    from babel.dates import format_date, format_time
    from playwright.sync_api import sync_playwright
    from zoneinfo import ZoneInfo

    artifacts = PROJECT_ROOT / "tests" / "artifacts"
    artifacts.mkdir(exist_ok=True)
    owner, other = site.owner_and_other()
    link_path, _ = confirmation_link(site)
    shanghai = ZoneInfo("Asia/Shanghai")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page(locale="zh-CN", java_script_enabled=False)
            # The worker that does not own the order: it asks the owner.
            page.goto(f"http://127.0.0.1:{other}/track")
            page.get_by_label("订单号").fill(ORDER)
            page.get_by_label("邮箱").fill(EMAIL)
            page.get_by_role("button", name="查询").click()
            assert page.locator("section.shipment").count() == 2
            first, second = (page.locator(f'section[data-shipment="{ORDER}-{n}"]') for n in (1, 2))
            assert first.locator("ol.progress li.done").count() == 4
            assert first.locator('[aria-current="step"]').inner_text() == "派送中"
            assert second.locator('[aria-current="step"]').inner_text() == "运输中"
            scans = [("OUT_FOR_DELIVERY", -2), ("ARRIVED_AT_DESTINATION", -8), ("IN_TRANSIT", -20), ("PICKED_UP", -28),
                 ("LABEL_CREATED", -29)]
            timeline = first.locator("ol.timeline li")
            assert [li.get_attribute("data-milestone") for li in timeline.all()] == [m for m, _ in scans]
            for li, (_, hours) in zip(timeline.all(), scans):
                at = (NOW + timedelta(hours=hours)).astimezone(shanghai)  # the customer's own timezone
                local = f'{format_date(at, "medium", locale="zh_CN")} {format_time(at, "short", locale="zh_CN")}'
                assert li.locator("time").inner_text() == local  # to the minute
            assert "上海" in first.inner_text() or "Shanghai" in first.inner_text()
            assert "包裹 2 / 2" in second.inner_text()
            assert "预计送达" in first.locator("p.expected").inner_text()
            # Styled: the page's own stylesheet passed its Content-Security-Policy (by hash).
            done = first.locator("ol.progress li.done").first
            assert done.evaluate("e => getComputedStyle(e).borderTopColor") == "rgb(26, 127, 55)"
            page.screenshot(path=str(artifacts / "tracking-page-zh-CN.png"), full_page=True)

            page.get_by_role("link", name="繁體中文").click()
            assert page.locator("html").get_attribute("lang") == "zh-TW"
            assert first.locator('[aria-current="step"]').inner_text() == "配送中"
            page.get_by_role("link", name="English").click()
            assert first.locator('[aria-current="step"]').inner_text() == "Out for delivery"
            assert "Parcel 1 of 2" in first.inner_text()
            # Out for delivery, nothing learned of the lane: expected today, as its message said.
            expected = first.locator("p.expected").inner_text()
            assert any(format_date(t.astimezone(shanghai), "long", locale="en") in expected
                       for t in (NOW, datetime.now(UTC))), expected  # the page may be read after midnight
            page.screenshot(path=str(artifacts / "tracking-page-en.png"), full_page=True)

            # The confirmation email's link opens the page already verified.
            opened = browser.new_page(locale="en-US")
            opened.goto(f"http://127.0.0.1:{owner}{link_path}")
            assert "/track?t=" in opened.url
            assert opened.locator("section.shipment").count() == 2
            assert opened.locator("html").get_attribute("lang") == "zh-CN"  # the order's own language
        finally:
            browser.close()
    assert (artifacts / "tracking-page-en.png").stat().st_size > 10_000


def test_wrong_unknown_forged_and_expired_lookups_reveal_nothing(site):
    wrong = site.get(f"/track?order={ORDER}&email=someone@example.cn")
    unknown = site.get(f"/track?order=SO-NOT-THERE&email={EMAIL}")
    wrong_digits = site.get(f"/track?order={ORDER}&phone4=1234")
    assert wrong == unknown == wrong_digits  # the same status and the same page, word for word
    assert wrong[0] == 404
    secret = site.settings.link_secret
    link = links.Link(ORDER, "C-TRACK-1", "ntf-x", "shipped", "email", "", int((NOW + timedelta(days=1)).timestamp()))
    genuine = links.sign(link, secret)
    facts, mac = unb64(genuine)[:-links.MAC_BYTES], unb64(genuine)[-links.MAC_BYTES:]
    forged_facts = unb64(links.sign(links.Link(ORDER, "C-OTHER", "ntf-x", "shipped", "email", "", link.expires),
                                    "guessed-secret-of-16+"))[:-links.MAC_BYTES]
    for token in (b64(forged_facts + mac), links.sign(link, "another-secret-entirely"), b64(facts), "x.y", ""):
        assert site.get(f"/track?t={token}") == wrong or token == "", token
    expired = links.sign(links.Link(ORDER, "C-TRACK-1", "ntf-x", "shipped", "email", "",
                                    int((NOW - timedelta(seconds=1)).timestamp())), secret)
    status, html = site.get(f"/track?t={expired}")
    assert status == 410
    for secret_fact in (ORDER, "SF1000000001", "星河小铺", EMAIL, "8000"):
        assert secret_fact not in wrong[1] and secret_fact not in html
    assert site.get(f"/track?t={genuine}")[0] == 200


def test_guessing_is_rate_limited_and_then_even_the_right_pair_reveals_nothing(site):
    answers = Counter(site.get(f"/track?order={ORDER}&phone4={n:04d}")[0] for n in range(30))
    assert answers[429] >= 20 and answers[200] == 0, answers
    status, html = site.get(f"/track?order={ORDER}&email={EMAIL}")
    assert status == 429 and "SF1000000001" not in html


def test_a_thousand_clicks_become_a_thousand_engagement_events_and_the_figures(site):
    secret, expires = site.settings.link_secret, int((NOW + timedelta(days=30)).timestamp())
    tokens = {("shipped", "email", "A"): 600, ("delivered", "sms", "B"): 400}
    run = f"ntf-bulk-{NOW.timestamp():.0f}"

    async def click_all() -> list[int]:
        async with aiohttp.ClientSession() as http:
            async def click(n: int, kind: str, channel: str, variant: str) -> int:
                token = links.sign(links.Link(ORDER, "C-TRACK-1", f"{run}-{kind}-{n % 7}", kind, channel,
                                              variant, expires), secret)
                port = site.ports[n % 2]
                async with http.get(f"http://127.0.0.1:{port}/c/{token}", allow_redirects=False) as answer:
                    return answer.status
            jobs = [click(n, *key) for key, count in tokens.items() for n in range(count)]
            return list(await asyncio.gather(*jobs))

    assert Counter(asyncio.run(click_all())) == {303: 1000}

    def bulk_clicks() -> list:
        found = asyncio.run(read_all(site.settings.kafka_bootstrap, site.settings.topics.engagement))
        return [r for r in found if orjson.loads(r.value)["notification_id"].startswith(run)]

    assert wait_for(lambda: len(bulk_clicks()) == 1000, timeout=60), len(bulk_clicks())
    assert len({dict(r.headers)["ce_id"] for r in bulk_clicks()}) == 1000

    def figures(port: int) -> dict:
        rows = orjson.loads(site.get("/stats", port)[1])["figures"]
        return {(r["kind"], r["channel"], r["variant"]): r["clicked"] for r in rows
                if (r["kind"], r["channel"]) in {("shipped", "email"), ("delivered", "sms")}}

    expected = {("shipped", "email", "A"): 600, ("delivered", "sms", "B"): 400}
    for port in site.ports:  # every worker answers for the whole stream
        assert wait_for(lambda: figures(port) == expected, timeout=60), figures(port)


def test_an_sms_delivery_receipt_counts_and_a_forged_one_is_refused(site):
    settings, public = site.settings, site.settings.public_url.rstrip("/")
    token = links.sign(links.Link(ORDER, "C-TRACK-1", "ntf-sms-receipt", "out_for_delivery", "sms", "",
                                  int((NOW + timedelta(days=1)).timestamp())), settings.link_secret)
    account = f"{settings.sms_account_sid}:{settings.sms_auth_token}".encode()

    async def send_sms() -> int:
        # What the SMS sender does: the message, with a StatusCallback to the worker.
        async with aiohttp.ClientSession() as http:
            async with http.post(
                    f"{settings.sms_url}/2010-04-01/Accounts/{settings.sms_account_sid}/Messages.json",
                    data={"To": PHONE, "From": settings.sms_from, "Body": "Out for delivery",
                          "StatusCallback": f"{public}/callbacks/sms?n=ntf-sms-receipt&l={token}"},
                    headers={"Authorization": "Basic " + base64.b64encode(account).decode()}) as answer:
                return answer.status

    assert asyncio.run(send_sms()) == 201

    def receipts() -> list[dict]:
        found = asyncio.run(read_all(settings.kafka_bootstrap, settings.topics.engagement))
        return [orjson.loads(r.value) for r in found if orjson.loads(r.value)["notification_id"] == "ntf-sms-receipt"]

    assert wait_for(lambda: receipts(), timeout=30)
    [receipt] = receipts()
    assert (receipt["provider_status"], receipt["channel"], receipt["kind"]) == ("delivered", "sms", "out_for_delivery")
    assert PHONE not in str(receipt)

    async def forged() -> int:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{public}/callbacks/sms?n=ntf-sms-receipt&l={token}",
                                 data={"MessageSid": "SMx", "MessageStatus": "undelivered"},
                                 headers={"X-Twilio-Signature": "bm90IHNpZ25lZA=="}) as answer:
                return answer.status

    assert asyncio.run(forged()) == 403
    time.sleep(2)
    assert len(receipts()) == 1

    def delivered() -> int:
        rows = orjson.loads(site.get("/stats")[1])["figures"]
        return sum(r["delivered"] for r in rows if (r["kind"], r["channel"]) == ("out_for_delivery", "sms"))

    assert wait_for(lambda: delivered() == 1, timeout=30)

    # Twilio calls a status back again when it is not sure it was heard: the same receipt,
    # signed again, is taken (200) and counted once.
    engagement = asyncio.run(read_all(settings.kafka_bootstrap, settings.topics.engagement))
    [record] = [r for r in engagement
                if orjson.loads(r.value)["notification_id"] == "ntf-sms-receipt"]
    sid = dict(record.headers)["ce_id"].decode().removeprefix("twilio-").removesuffix("-delivered")
    url = f"{public}/callbacks/sms?n=ntf-sms-receipt&l={token}"
    form = {"MessageSid": sid, "MessageStatus": "delivered"}

    async def repeated() -> int:
        async with aiohttp.ClientSession() as http:
            signed = {"X-Twilio-Signature": twilio_signature(settings.sms_auth_token, url, form)}
            async with http.post(url, data=form, headers=signed) as answer:
                return answer.status

    def repeats_recognised() -> float:  # by whichever worker holds the customer
        pattern = (r'notifier_duplicate_events_total\{topic="' + re.escape(settings.topics.engagement)
                   + r'"\} (\S+)')
        found = [re.search(pattern, site.get("/metrics", port)[1]) for port in site.ports]
        return sum(float(f.group(1)) for f in found if f)

    before = repeats_recognised()
    assert asyncio.run(repeated()) in (200, 204)
    assert wait_for(lambda: len(receipts()) == 2, timeout=30)
    assert wait_for(lambda: repeats_recognised() > before, timeout=30)
    assert delivered() == 1


def test_wechat_receipts_and_email_bounces_count_and_unsigned_ones_are_refused(site):
    settings, public = site.settings, site.settings.public_url.rstrip("/")
    expires = int((NOW + timedelta(days=1)).timestamp())
    wechat = links.sign(links.Link(ORDER, "C-TRACK-1", "ntf-wx-receipt", "shipped", "wechat", "", expires),
                        settings.link_secret)
    email = links.sign(links.Link(ORDER, "C-TRACK-1", "ntf-mail-bounce", "shipped", "email", "", expires),
                       settings.link_secret)
    timestamp, nonce = "1764180000", "4711"
    signature = hashlib.sha1("".join(sorted((settings.wechat_callback_token, timestamp, nonce))).encode()).hexdigest()
    event = ("<xml><ToUserName>gh_shop</ToUserName><FromUserName>o-customer</FromUserName>"
             "<MsgType>event</MsgType><Event>TEMPLATESENDJOBFINISH</Event><MsgID>200163836</MsgID>"
             "<Status>failed:user block</Status></xml>")

    async def post(path: str, **kwargs) -> int:
        async with aiohttp.ClientSession() as http:
            async with http.post(public + path, **kwargs) as answer:
                return answer.status

    query = f"signature={signature}&timestamp={timestamp}&nonce={nonce}&l={wechat}"
    assert asyncio.run(post(f"/callbacks/wechat?{query}", data=event)) == 200
    assert asyncio.run(post(f"/callbacks/wechat?{query.replace(signature, 'f' * 40)}", data=event)) == 403
    assert asyncio.run(post("/callbacks/email", json={"link": email, "type": "hard"})) == 202
    assert asyncio.run(post("/callbacks/email", json={"link": email[:-3] + "AAA", "type": "hard"})) == 404

    def received() -> dict[str, dict]:
        found = asyncio.run(read_all(settings.kafka_bootstrap, settings.topics.engagement))
        values = [orjson.loads(r.value) | {"type": dict(r.headers)["ce_type"].decode()} for r in found]
        return {v["notification_id"]: v for v in values if v["notification_id"] in ("ntf-wx-receipt", "ntf-mail-bounce")}

    assert wait_for(lambda: len(received()) == 2, timeout=30)
    got = received()
    assert (got["ntf-wx-receipt"]["type"], got["ntf-wx-receipt"]["provider_status"]) == (
        "notification.bounced", "failed:user block")
    assert (got["ntf-mail-bounce"]["type"], got["ntf-mail-bounce"]["bounce_type"]) == ("notification.bounced", "hard")


def test_page_servers_answer_lookups_from_the_changelogs_on_every_process(site):
    """Two ``notifier pages`` processes on one port: the page the workers show, the
    same refusals, guesses limited across both, and a new scan shown without a worker."""
    def pids() -> set[int]:
        seen = set()
        for _ in range(40):  # a connection each: the kernel spreads them over the processes
            seen.add(orjson.loads(site.get("/healthz", site.pages_port)[1])["pid"])
        return seen

    def readiness() -> dict[int, dict]:
        return {ready["pid"]: ready for ready in (
            orjson.loads(site.get("/readyz", site.pages_port)[1]) for _ in range(40))}

    assert wait_for(lambda: _answers(site) and len(pids()) == 2, timeout=60), \
        site.stack.log("pages")[-2000:]
    # A lookup draws the outline of the order's page, which the next ones fill in with the
    # links, the expected delivery and the messages: the same page.
    pages = [site.get(f"/track?order={ORDER}&email={EMAIL.upper()}", site.pages_port)
             for _ in range(6)]  # on both processes, most likely: a connection each
    assert all(status == 200 for status, _ in pages)
    html = pages[-1][1]
    assert all(sections(other) == sections(html) for _, other in pages)
    assert any(r["outlines"] == 1 for r in readiness().values())
    assert sections(html) == {f"{ORDER}-1": "out_for_delivery", f"{ORDER}-2": "in_transit"}
    assert "星河小铺" in html and "SF1000000002" in html
    assert "Parcel 1 of 2 arrives today." in html.split('id="inbox-title"')[-1]  # the inbox too
    link_path, _ = confirmation_link(site)
    token = link_path.rpartition("/")[2]
    assert sections(site.get(f"/track?t={token}", site.pages_port)[1])[f"{ORDER}-1"] == "out_for_delivery"

    wrong = site.get(f"/track?order={ORDER}&email=someone@example.cn", site.pages_port)
    unknown = site.get(f"/track?order=SO-NOT-THERE&email={EMAIL}", site.pages_port)
    assert wrong == unknown and wrong[0] == 404 and "SF1000000001" not in wrong[1]

    # A later scan: the page servers show it, read from the orders' changelog.
    value, headers = codec.encode(event_type="tracking.updated", event_id="tracking.updated-pages",
                                  source="urn:test", time=NOW, data={
        "order_id": ORDER, "shipment_id": f"{ORDER}-2", "carrier": "sf-express",
        "tracking_number": "SF1000000002", "checkpoint": {
            "status": "IN_TRANSIT", "occurred_at": at(-1), "location": {"country": "CN", "city": "Suzhou"}}})
    asyncio.run(produce(site.settings.kafka_bootstrap,
                        [(site.settings.topics.tracking, ORDER.encode(), value, headers)]))
    assert wait_for(lambda: all("Suzhou" in site.get(f"/track?order={ORDER}&email={EMAIL}&lang=en",
                                                     site.pages_port)[1] for _ in range(6)), timeout=30)

    # NOTIFIER_LOOKUPS_PER_MINUTE (10) is shared out: 5 guesses a process, 10 in all.
    answers = Counter(site.get(f"/track?order={ORDER}&phone4={n:04d}", site.pages_port)[0] for n in range(30))
    assert answers[404] <= 10 and answers[429] >= 20 and answers[200] == 0, answers


def _answers(site: Site) -> bool:
    try:
        return site.get("/readyz", site.pages_port)[0] == 200
    except OSError:
        return False
