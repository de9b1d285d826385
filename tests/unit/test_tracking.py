"""The tracking page's pure parts: who may see an order, what the page shows, signed links,
the guess limiter, and the engagement figures."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from babel.messages.pofile import read_po

from tests.conftest import b64, unb64
from tests.unit.stories import RULES, at, created, paid, scan, shipped
from worker.domain import engagement, links, order, tracking
from worker.domain.clock import stamp
from worker.domain.customer import CustomerState, engaged, route
from worker.domain.limiter import Buckets
from worker.domain.notification import Intent

SECRET = "test-secret-of-some-length"


def state(*events) -> order.OrderState:
    s = None
    for event in events:
        s = order.apply(s, event, received_at=event.time).state
    assert s is not None
    return s


SPLIT = (created(promised_delivery_by=at(72).isoformat()), paid(), shipped(5, "P1"), shipped(6, "P2"),
         scan(8, "PICKED_UP", "P1"), scan(20, "IN_TRANSIT", "P1"), scan(30, "OUT_FOR_DELIVERY", "P1"),
         scan(9, "PICKED_UP", "P2"), scan(33, "DELIVERED", "P2"))


@pytest.mark.parametrize(("email", "phone4", "ok"), [
    ("zw@example.cn", "", True),
    ("  ZW@Example.CN ", "", True),  # as people type it
    ("", "0000", True),
    ("other@example.cn", "", False),
    ("", "1234", False),
    ("", "000", False),  # not four digits
    ("", "", False),
    ("zw@example.cn".replace("zw", ""), "", False),
])
def test_an_order_opens_with_its_email_or_its_phone_digits_only(email, phone4, ok):
    assert tracking.matches(tracking.credentials(state(*SPLIT)), email, phone4) is ok


def test_an_unknown_order_is_never_verified():
    assert not tracking.matches(tracking.credentials(None), "zw@example.cn", "0000")
    no_contact = state(created(customer={"id": "CU-9", "locale": "en", "timezone": "UTC"}))
    assert not tracking.matches(tracking.credentials(no_contact), "", "")


def test_the_view_shows_each_parcel_progress_and_timeline_newest_first():
    view = tracking.view(state(*SPLIT), at(34), RULES)
    first, second = view["shipments"]
    assert (first["shipment_id"], first["step"], second["step"]) == ("P1", "out_for_delivery", "delivered")
    assert [s["name"] for s in first["steps"] if s["done"]] == ["ordered", "shipped", "in_transit",
                                                               "out_for_delivery"]
    assert [c["milestone"] for c in first["timeline"]] == ["OUT_FOR_DELIVERY", "IN_TRANSIT", "PICKED_UP",
                                                           "LABEL_CREATED"]
    assert second["delivered_at"] and second["window"] is None
    # Nothing learned of the lane yet, but out for delivery: today, not the promise.
    assert first["window"] == [stamp(at(34))] * 2 and first["days_late"] == 0
    assert view["shop"] == "星河小铺" and view["timezone"] == "Asia/Shanghai"


def test_with_nothing_learned_of_its_lane_a_parcel_is_expected_by_the_shops_promise():
    moving = state(*SPLIT[:-3])  # P1 in transit, P2 labelled
    first, second = tracking.view(moving, at(24), RULES)["shipments"]
    assert first["window"] == second["window"] == [stamp(at(72))] * 2


def test_with_nothing_learned_a_promise_gone_by_is_no_expected_date_and_the_page_says_how_late():
    moving = state(created(promised_delivery_by=at(24).isoformat()), paid(), shipped(5), scan(8, "PICKED_UP"))
    [parcel] = tracking.view(moving, at(100), RULES)["shipments"]
    assert parcel["window"][0] >= stamp(at(100)) and parcel["days_late"] == 4  # 76 h past the promise


def test_a_parcel_running_late_says_by_how_much():
    late = state(created(promised_delivery_by=at(24).isoformat()), paid(), shipped(5),
                 scan(8, "PICKED_UP"))
    late.delays["P1"] = 2  # a delay notice told two days
    [parcel] = tracking.view(late, at(30), RULES)["shipments"]
    assert parcel["days_late"] == 2 and parcel["window"][0] >= stamp(at(24) + timedelta(days=2))


def test_a_signed_link_reads_back_and_cannot_be_altered_or_forged():
    link = links.Link("SO-1", "CU-1", "ntf-3f42f08652494ed54fba-sms", "shipped", "sms", "B", int(at(24).timestamp()))
    token = links.sign(link, SECRET)
    assert links.read(token, SECRET) == link
    assert not link.expired(at(23)) and link.expired(at(24))
    facts, mac = unb64(token)[:-links.MAC_BYTES], unb64(token)[-links.MAC_BYTES:]
    altered = unb64(links.sign(dataclasses.replace(link, order_id="SO-2"), SECRET))[:-links.MAC_BYTES]
    for bad in (b64(altered + mac), links.sign(link, "another-secret-entirely"), b64(facts), b64(mac),
                "", ".", "a.b", token + "x", token[:-2]):
        with pytest.raises(links.Forged):
            links.read(bad, SECRET)
    assert "SO-1" not in token and "@" not in token


def test_a_link_is_short_enough_for_an_sms_and_reads_back_whatever_its_ids():
    sent = links.Link("SO20261124-713000163", "CU-00327", "ntf-3f42f08652494ed54fba-sms", "shipped", "sms", "A",
                      1800770862)
    assert len(links.sign(sent, SECRET)) <= 96  # as JSON, its facts made it 153 characters
    for odd in (links.Link("订单" * 100, "CU-1", "not-one-of-ours", "a_kind_of_its_own", "fax", "", 0),
                links.Link("SO-1", "", "ntf-3f42f08652494ed54fba", "delivered", "email", "", 2**32 - 1)):
        assert links.read(links.sign(odd, SECRET), SECRET) == odd


def test_a_link_signed_before_tokens_were_packed_still_opens_until_it_expires():
    link = links.Link("SO-1", "CU-1", "ntf-1", "shipped", "email", "B", int(at(24).timestamp()))
    facts = b64(orjson.dumps(dataclasses.astuple(link)))
    mac = b64(hmac.new(SECRET.encode(), facts.encode(), hashlib.sha256).digest()[:links.MAC_BYTES])
    assert links.read(f"{facts}.{mac}", SECRET) == link
    with pytest.raises(links.Forged):
        links.read(f"{facts}.{mac[:-2]}AA", SECRET)


def test_an_sms_link_is_a_short_code_for_its_token_that_only_the_secret_makes():
    token = links.sign(links.Link("SO20261124-713000163", "CU-00327", "ntf-3f42f08652494ed54fba-sms",
                                  "shipped", "sms", "", 1800770862), SECRET)
    code = links.short_code(token, SECRET)
    assert len(code) == 12 and re.fullmatch(r"[A-Za-z0-9_-]+", code)
    assert links.short_code(token, SECRET) == code  # a replay sends the same message
    assert code not in {links.short_code(token + "A", SECRET), links.short_code(token, "another-secret")}


def test_a_short_code_stands_for_its_token_until_the_token_expires():
    kept = links.ShortLinks()
    kept.keep("code-a", "token-a", expires=100, now=10)
    kept.keep("code-b", "token-b", expires=200, now=50)
    assert (kept.token("code-a"), kept.token("code-b"), kept.token("code-c")) == ("token-a", "token-b", None)
    kept.keep("code-c", "token-c", expires=300, now=150)  # code-a's token expired at 100
    assert (kept.token("code-a"), kept.token("code-b"), len(kept)) == (None, "token-b", 2)
    kept.keep("code-d", "token-d", expires=90, now=150)  # read late: gone at once
    assert kept.token("code-d") is None and len(kept) == 2


@pytest.mark.parametrize("locale", ["zh_CN", "zh_TW", "en"])
def test_the_shipped_sms_tells_carrier_and_number_with_its_link_in_two_segments(locale):
    from worker.domain.sms import segments
    from worker.render import for_channel, render

    url = "https://track.example-shop.cn/s/" + links.short_code("a-token", SECRET)
    shop = "London Tea Co" if locale == "en" else "星河小铺"  # a Chinese name makes any text UCS-2
    facts = {"shop": {"name": shop}, "customer": {"name": "林美"}, "order_id": "SO20261124-713000163",
             "tracking_url": url, "items": [], "expected_delivery": "2026-11-27T18:00:00+08:00",
             "shipment": {"carrier": "sf-express", "tracking_number": "SF1400255536810", "carrier_eta": None}}
    text = for_channel("sms", render("shipped", locale, "Asia/Shanghai", facts, whole=False),
                       facts["order_id"], url, "")["text"]
    assert "SF1400255536810" in text and url in text and segments(text).count <= 2
    assert {"zh_CN": "顺丰速运", "zh_TW": "順豐速運", "en": "SF Express"}[locale] in text
    assert {"zh_CN": "2026年11月27日", "zh_TW": "2026年11月27日", "en": "November 27, 2026"}[locale] in text


def test_guesses_are_limited_per_client_and_come_back_with_time():
    buckets = Buckets(per_minute=10, burst=10)
    assert all(buckets.take("1.2.3.4", 0.0) for _ in range(10))
    assert not buckets.take("1.2.3.4", 1.0) and buckets.retry_after("1.2.3.4") >= 1
    assert buckets.take("5.6.7.8", 1.0)  # another client is not held back
    assert buckets.take("1.2.3.4", 7.0)  # one try back every six seconds
    buckets.refund("1.2.3.4")  # a lookup that found its order costs nothing
    assert buckets.take("1.2.3.4", 7.0) and not buckets.take("1.2.3.4", 7.0)


def test_the_limiter_forgets_the_oldest_clients_first():
    buckets = Buckets(per_minute=1, burst=1, keys=2)
    buckets.take("a", 0.0), buckets.take("b", 0.0), buckets.take("c", 0.0)
    assert buckets.take("a", 0.0)  # forgotten, so a fresh bucket


def test_figures_add_up_across_partitions_with_rates():
    first = engagement.count(engagement.count(None, "notification.sent"), "notification.clicked")
    second = engagement.count(engagement.count(None, "notification.sent"), "notification.opened")
    key = engagement.key({"kind": "shipped", "channel": "email", "variant": "A"})
    [row] = engagement.summary([(key, first), (key, second)])
    assert row == {"kind": "shipped", "channel": "email", "variant": "A", "sent": 2, "failed": 0,
                   "delivered": 0, "opened": 1, "clicked": 1, "bounced": 0, "unsubscribed": 0,
                   "unique_clicked": 1, "unique_opened": 1,
                   "opened_rate": 0.5, "clicked_rate": 0.5, "bounced_rate": 0.0}
    assert engagement.key({"kind": "shipped", "channel": "sms"}) == "shipped|sms|-"


def test_a_message_opened_three_times_counts_three_opens_and_one_opened_message():
    figures = engagement.count(None, "notification.sent")
    for first in (True, False, False):
        figures = engagement.count(figures, "notification.opened", first)
    [row] = engagement.summary([("shipped|email|-", figures)])
    assert (row["opened"], row["unique_opened"], row["opened_rate"]) == (3, 1, 1.0)
    # A second delivery report of the same message is not a second delivery.
    assert not engagement.counts("notification.delivered", first=False)


def test_a_repeated_callback_changes_nothing_and_a_second_open_is_told_apart():
    customer = CustomerState("CU-1")
    opened = {"channel": "email", "notification_id": "ntf-1"}
    assert engaged(customer, "notification.opened", opened, NOW, RULES, "eng-1") == "first"
    assert engaged(customer, "notification.opened", opened, NOW, RULES, "eng-1") == "repeat"
    assert engaged(customer, "notification.opened", opened, NOW, RULES, "eng-2") == "again"
    assert engaged(customer, "notification.clicked", opened, NOW, RULES, "eng-3") == "first"
    # One email's bounce, its report repeated and then reported again anew, is one bounce
    # of the three in a row that stop email, not three.
    soft = {"channel": "email", "notification_id": "ntf-2"}
    for event_id in ("relay-1", "relay-1", "relay-2"):
        engaged(customer, "notification.bounced", soft, NOW, RULES, event_id)
    assert customer.soft_bounces == 1


def news() -> Intent:
    return Intent(notification_id="ntf-1", kind="shipped", priority="transactional", order_id="O-1",
                  customer_id="CU-1", created_at="2026-11-02T00:00:00+00:00", caused_by=["e1"],
                  received_at="2026-11-02T00:00:00+00:00", channels=["email", "sms"],
                  facts={"customer": {"id": "CU-1", "email": "li@example.cn", "phone": "+8613800000000",
                                      "locale": "zh-CN", "timezone": "Asia/Shanghai"}})


NOW = datetime(2026, 11, 2, tzinfo=UTC)


def test_an_unsubscribe_click_ends_marketing():
    customer = CustomerState("CU-1")
    engaged(customer, "notification.unsubscribed", {"channel": "email"}, NOW, RULES)
    assert customer.preferences(NOW)["marketing_opt_in"] is False


def test_bounces_stop_email_until_a_new_address_comes():
    customer = CustomerState("CU-1")
    sent = iter(range(100))

    def bounce(person: CustomerState, **extra: str) -> None:
        data = {"channel": "email", "notification_id": f"ntf-{next(sent)}", **extra}
        engaged(person, "notification.bounced", data, NOW, RULES)

    for _ in range(RULES.policy.bounce_limit - 1):
        bounce(customer)
    engaged(customer, "notification.opened", {"channel": "email", "notification_id": "ntf-x"},
            NOW, RULES)  # one arrives after all
    bounce(customer)
    assert route(news(), customer.preferences(NOW), RULES)[0].channel == "email"
    for _ in range(RULES.policy.bounce_limit - 1):
        bounce(customer)
    assert route(news(), customer.preferences(NOW), RULES)[0].channel == "sms"
    hard = CustomerState("CU-2")
    bounce(hard, bounce_type="hard")
    assert route(news(), hard.preferences(NOW), RULES)[0].channel == "sms"
    from worker.domain.customer import update_preferences
    later = NOW + timedelta(hours=1)
    update_preferences(hard, {"email": "new@example.cn"}, later)
    assert route(news(), hard.preferences(later), RULES)[0].recipient == {"email": "new@example.cn"}


TEMPLATES = Path(__file__).resolve().parents[2] / "worker" / "render" / "templates"
LOCALE = TEMPLATES.parent / "locale"


@pytest.mark.parametrize("catalog", ["zh_CN", "zh_TW"])
@pytest.mark.parametrize("template", ["track.html.j2", "unsubscribe.html.j2"])
def test_every_string_of_the_pages_is_translated(catalog, template):
    strings = set(re.findall(r'_\("((?:[^"\\]|\\.)*)"', (TEMPLATES / template).read_text()))
    strings |= set(re.findall(r'\bw\["([^"]*)"\]', (TEMPLATES / template).read_text()))
    with (LOCALE / catalog / "LC_MESSAGES" / "messages.po").open("rb") as fp:
        translated = {m.id for m in read_po(fp) if m.id and m.string}
    assert strings and not strings - translated


@pytest.mark.parametrize("catalog", ["zh_CN", "zh_TW"])
def test_every_message_of_the_tracking_site_is_translated(catalog):
    from worker import lookup_page

    with (LOCALE / catalog / "LC_MESSAGES" / "messages.po").open("rb") as fp:
        translated = {m.id for m in read_po(fp) if m.id and m.string}
    assert set(lookup_page.MESSAGES.values()) <= translated


def failed_delivery() -> Intent:
    return Intent(notification_id="ntf-df", kind="delivery_failed", priority="urgent", order_id="O-1",
                  customer_id="CU-1", created_at=NOW.isoformat(), caused_by=["e1"],
                  received_at=NOW.isoformat(), channels=["email", "sms"], shipment_id="P1",
                  facts={"customer": {"id": "CU-1", "email": "li@example.cn", "phone": "+8613800000000",
                                      "locale": "zh-CN", "timezone": "Asia/Shanghai"}})


def test_an_unopened_failed_delivery_email_goes_again_by_sms():
    from worker.domain.customer import Send, decide, release

    customer = CustomerState("CU-1")
    [sent] = decide(customer, failed_delivery(), NOW, RULES)
    assert isinstance(sent, Send) and [r.channel for r in sent.routes] == ["email"]
    after = RULES.kinds["delivery_failed"].escalate.after_minutes
    assert customer.next_release == stamp(NOW + timedelta(minutes=after))
    assert release(customer, NOW + timedelta(minutes=after - 1), RULES) == []
    [again] = release(customer, NOW + timedelta(minutes=after), RULES)
    assert isinstance(again, Send) and [(r.channel, r.notification_id) for r in again.routes] == [
        ("sms", "ntf-df-escalated")]
    assert customer.next_release is None  # once


def test_an_opened_email_or_newer_news_cancels_the_escalation():
    from worker.domain.customer import decide, release

    opened = CustomerState("CU-1")
    decide(opened, failed_delivery(), NOW, RULES)
    engaged(opened, "notification.opened", {"notification_id": "ntf-df", "channel": "email"}, NOW, RULES)
    assert release(opened, NOW + timedelta(days=1), RULES) == []
    delivered = CustomerState("CU-1")
    decide(delivered, failed_delivery(), NOW, RULES)
    news = failed_delivery()
    news.notification_id, news.kind, news.priority = "ntf-dl", "delivered", "transactional"
    decide(delivered, news, NOW + timedelta(minutes=30), RULES)
    assert not delivered.escalations


def test_the_inbox_keeps_each_message_once_and_the_latest_ones():
    from worker.domain import inbox

    def message(n: int, order: str = "O-1") -> dict:
        return {"notification_id": f"ntf-{n}", "order_id": order, "kind": "shipped", "title": f"t{n}",
                "text": "x", "created_at": f"2026-11-02T00:{n:02d}:00+00:00", "url": "ignored"}

    kept: list = []
    for n in (3, 1, 2, 3):  # out of order, and one read twice
        kept = inbox.keep(kept, message(n))
    assert [m["notification_id"] for m in kept] == ["ntf-1", "ntf-2", "ntf-3"] and "url" not in kept[0]
    kept = inbox.keep(kept, message(4, "O-2"))
    assert [m["notification_id"] for m in inbox.of_order(kept, "O-1")] == ["ntf-3", "ntf-2", "ntf-1"]
    for n in range(5, 5 + inbox.KEPT):
        kept = inbox.keep(kept, message(n % 60))
    assert len(kept) == inbox.KEPT


def test_parcels_on_their_way_are_counted_until_delivered_or_cancelled():
    from tests.unit.stories import cancelled

    assert state(created(), paid()).active_parcels == 0
    assert state(*SPLIT[:5]).active_parcels == 2  # two labels, one picked up
    assert state(*SPLIT).active_parcels == 1  # the second delivered
    assert state(*SPLIT[:5], cancelled(7)).active_parcels == 0


def test_a_carriers_delay_ratio_is_its_specific_lanes_stalls_per_parcel():
    from worker.domain.lanes import delay_ratios

    figures = {"zto|CN-GD|CN-BJ": {"parcels": 90, "stalls": 9}, "zto|CN-ZJ|CN-SH": {"parcels": 10, "stalls": 1},
               "zto|*|CN": {"parcels": 100, "stalls": 0}, "zto": {"parcels": 100, "stalls": 0},
               "sf-express|CN-GD|CN-SH": {"parcels": 0, "stalls": 0}}
    assert delay_ratios(figures) == {"zto": 0.1}
