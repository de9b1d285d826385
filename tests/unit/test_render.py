import base64
import email
import email.policy
import hashlib
import re

import pytest

from tests.conftest import example
from tests.unit.stories import RULES, Tick, at, created, paid, run, scan, shipped
from worker.domain import histogram, tracking
from worker.domain.order import no_lanes
from worker.domain.milestones import MILESTONES
from worker.lookup_page import SECURITY_HEADERS
from worker.render import catalog_locale, page, render
from worker.senders.smtp import build_message

FACTS = {**example("order.created")["value"], "tracking_url": "https://shop.example/track?o=1"}


@pytest.mark.parametrize(
    ("tag", "catalog"),
    [("zh-CN", "zh_CN"), ("zh", "zh_CN"), ("zh-Hans-SG", "zh_CN"), ("zh-TW", "zh_TW"),
     ("zh-HK", "zh_TW"), ("zh-Hant", "zh_TW"), ("en", "en"), ("en-GB", "en"), ("fr-FR", "en"),
     ("", "en")],
)
def test_bcp47_tags_map_to_catalogs(tag, catalog):
    assert catalog_locale(tag) == catalog


def test_simplified_chinese_confirmation():
    content = render("order_confirmed", "zh_CN", "Asia/Shanghai", FACTS)
    assert content.subject == "【星河小铺】您的订单已确认"
    assert "张伟，您好" in content.text
    assert "¥395.00" in content.text and "SO20261102-0001" in content.text
    assert "2026年11月5日" in content.text
    assert "明前龙井 250g × 2" in content.text


def test_traditional_chinese_uses_traditional_characters():
    content = render("order_confirmed", "zh_TW", "Asia/Taipei", FACTS)
    assert content.subject == "【星河小铺】您的訂單已確認"
    for simplified in "订单确认们备货发进联系":
        template_text = content.text.replace("星河小铺", "").replace("张伟", "")
        template_text = template_text.replace("明前龙井", "").replace("玻璃茶杯", "")
        assert simplified not in template_text, simplified


def test_english_confirmation_has_dates_in_the_customer_zone():
    content = render("order_confirmed", "en", "America/Los_Angeles", FACTS)
    assert content.subject == "[星河小铺] Your order is confirmed"
    # 2026-11-05T22:00+08:00 is the morning of 5 November in Los Angeles.
    assert "Expected delivery by November 5, 2026." in content.text


def test_customers_of_one_language_each_see_their_own_zone():
    # 2026-11-05T22:00+08:00 is already 6 November on Kiritimati (UTC+14). One language
    # shares its templates across zones: each render keeps its own.
    for zone, day in (("Pacific/Kiritimati", "November 6"), ("America/Los_Angeles", "November 5"),
                      ("Pacific/Kiritimati", "November 6")):
        assert f"Expected delivery by {day}, 2026." in render("order_confirmed", "en", zone, FACTS).text


def test_html_escapes_what_customers_typed():
    facts = {**FACTS, "customer": {**FACTS["customer"], "name": "<script>x</script>"}}
    content = render("order_confirmed", "en", "UTC", facts)
    assert "<script>" not in content.html and "&lt;script&gt;" in content.html
    assert "<script>x</script>" in content.text  # plain text is not HTML


HOSTILE = "<img src=x onerror=alert(1)> \"quoted\" 'single' & more"
ESCAPED = "&lt;img src=x onerror=alert(1)&gt; &#34;quoted&#34; &#39;single&#39; &amp; more"


def tracking_page(locale: str, **context) -> str:
    return page("track.html.j2", locale, "UTC", {
        "view": None, "form": {}, "message": "", "languages": [], "switch": {}, "inbox": [],
        **context})


def a_parcel_view() -> dict:
    told = run(created(), shipped(5, "P1"), shipped(6, "P2"), scan(8, "PICKED_UP", "P1"))
    return tracking.view(told.state, at(34), RULES)


@pytest.mark.parametrize("locale", ["en", "zh_CN"])
def test_the_tracking_page_escapes_what_carriers_and_customers_sent(locale):
    view = a_parcel_view()
    view["shipments"][0]["timeline"][0]["place"] = HOSTILE  # a carrier's scan location
    html = tracking_page(locale, view=view, languages=[("en", "English")],
                         switch={"en": "/track?order=" + HOSTILE},
                         inbox=[{"created_at": at(10).isoformat(), "title": HOSTILE, "text": HOSTILE}])
    assert HOSTILE not in html and html.count(ESCAPED) == 4  # the place, the link, the message
    form = tracking_page(locale, form={"order": HOSTILE, "email": HOSTILE}, message=HOSTILE)
    assert HOSTILE not in form and form.count(ESCAPED) == 3  # typed into the form, echoed back


@pytest.mark.parametrize(("last", "says", "expects_delivery"), [
    (scan(30, "IN_TRANSIT"), None, True),
    (scan(30, "DELIVERY_FAILED"), "The carrier tried to deliver it on Nov 3, 2026, 8:00\u202fAM but could not.", True),
    (scan(30, "AVAILABLE_FOR_PICKUP"), "It is waiting for you to pick it up.", False),
    (scan(30, "RETURNING"), "This parcel is on its way back to the sender.", False),
    (scan(30, "RETURNED"), "This parcel went back to the sender.", False),
    (scan(30, "EXCEPTION", reason="lost"), "The carrier reports this parcel lost.", False),
    (scan(30, "EXCEPTION", reason="damaged"), "The carrier reports this parcel damaged.", True),
    (scan(30, "EXCEPTION", reason="address"), "The carrier needs a better address: please contact us.", True),
    (scan(30, "EXCEPTION", reason="weather"), None, True),
])
def test_a_parcel_off_its_way_to_the_door_says_so_and_promises_no_date_it_will_not_keep(last, says, expects_delivery):
    told = run(created(promised_delivery_by=at(72).isoformat()), shipped(5), scan(8, "PICKED_UP"), last)
    html = tracking_page("en", view=tracking.view(told.state, at(34), RULES))
    status = re.search(r'<p class="status" role="status">([^<]*)</p>', html)
    assert status.group(1).startswith(says) if says else status is None  # the time as the page's zone has it
    assert ("Expected delivery: November 5, 2026." in html) is expects_delivery


def test_an_order_not_shipped_yet_says_it_was_paid_and_when_it_ships_or_that_it_ships_late():
    waiting = tracking_page("en", view=tracking.view(run(created(), paid()).state, at(1), RULES))
    assert "Paid on Nov 2, 2026, 2:06\u202fAM. We are getting your order ready." in waiting
    assert "It will ship by November 4, 2026." in waiting and "longer to ship" not in waiting
    late = tracking_page("zh_CN", view=tracking.view(run(created(), paid(), Tick(60)).state, at(60), RULES))
    assert "发货时间比我们承诺的要晚" in late and "前发货" not in late
    assert "We have your order." in tracking_page("en", view=tracking.view(run(created()).state, at(1), RULES))
    shipped_ = tracking_page("en", view=tracking.view(run(created(), paid(), shipped(5)).state, at(6), RULES))
    assert "Paid on" not in shipped_ and "ship by" not in shipped_


def test_a_parcel_going_back_is_headed_so_though_its_progress_stays():
    told = run(created(), shipped(5), scan(8, "PICKED_UP"), scan(20, "IN_TRANSIT"), scan(30, "RETURNING"))
    html = tracking_page("zh_CN", view=tracking.view(told.state, at(34), RULES))
    assert re.search(r"<h2 [^>]*>退回中</h2>", html) and 'aria-current="step">运输中' in html
    assert "此包裹正在退回寄件方" in html


@pytest.mark.parametrize("locale", ["en", "zh_CN", "zh_TW"])
def test_the_tracking_page_names_every_milestone_a_scan_can_have(locale):
    view = a_parcel_view()
    view["shipments"][0]["timeline"] = [{"at": at(8).isoformat(), "milestone": m, "place": ""}
                                        for m in sorted(MILESTONES)]
    shown = dict(re.findall(r'<li data-milestone="(\w+)"><time [^>]*>[^<]*</time>([^<]+)</li>',
                            tracking_page(locale, view=view)))
    assert shown.keys() == MILESTONES and not MILESTONES & set(shown.values())


def shipped_message(*steps, lanes=no_lanes) -> str:
    [intent] = [i for i in run(*steps, lanes=lanes).intents if i.kind == "shipped"]
    return render("shipped", "en", "Asia/Shanghai", {**intent.facts, "order_id": "SO-1",
                                                      "tracking_url": "https://t.example/x"}).text


def test_a_shipped_message_says_when_to_expect_the_parcel_never_a_date_gone_by():
    handed_over = (paid(), shipped(5), scan(8, "PICKED_UP"), Tick(9))
    promised = created(promised_delivery_by=at(72).isoformat())
    assert "Expected delivery by November 5, 2026." in shipped_message(promised, *handed_over)
    missed = created(promised_delivery_by=at(6).isoformat())
    assert "Expected delivery" not in shipped_message(missed, *handed_over)
    # Its lanes have learned: the late end of the window its tracking page shows.
    two_days: dict[str, int] = {}
    for _ in range(RULES.prediction.min_samples):
        histogram.add(two_days, 2 * 86400)
    learned = shipped_message(promised, *handed_over, lanes=lambda keys: [{"remaining": {"PICKED_UP": two_days}}])
    assert "Expected delivery by November 4, 2026." in learned  # picked up 18:00 on the 2nd, Shanghai


def test_email_is_multipart_alternative_with_text_and_html():
    content = render("order_confirmed", "zh_CN", "Asia/Shanghai", FACTS)
    command = {"notification_id": "ntf-1", "kind": "order_confirmed", "priority": "transactional",
               "recipient": {"email": "zhangwei@example.cn"}, "content": content.as_dict(),
               "created_at": "2026-11-02T10:00:05+08:00", "link_token": "abc.def"}
    raw = build_message(command, "shop@example.com", "http://127.0.0.1:6066")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    parts = {p.get_content_type(): p.get_content() for p in parsed.iter_parts()}
    assert "您的付款" not in parts["text/plain"] and "张伟，您好" in parts["text/plain"]
    assert re.search(r"<html lang=\"zh-CN\">", parts["text/html"])
    assert parsed["Subject"] == "【星河小铺】您的订单已确认"
    assert parsed["Message-ID"] == "<ntf-1@order-notifier>"
    assert "List-Unsubscribe" not in parsed


def _simplified_only() -> set[str]:
    """Characters OpenCC's dictionary converts to another Traditional form and never keeps."""
    from importlib.resources import files

    table = files("opencc") / "dictionary" / "STCharacters.txt"
    only = set()
    for line in table.read_text(encoding="utf-8").splitlines():
        simplified, _, traditional = line.partition("\t")
        if simplified and simplified not in traditional.split():
            only.add(simplified)
    return only


def test_every_traditional_chinese_string_is_free_of_simplified_only_characters():
    from babel.messages.pofile import read_po

    from worker.render import CARRIER_NAMES, HERE

    only = _simplified_only()
    assert {"们", "订", "单", "发"} <= only  # the table is the one we mean
    with (HERE / "locale" / "zh_TW" / "LC_MESSAGES" / "messages.po").open("rb") as fp:
        strings = [m.string for m in read_po(fp) if m.id and m.string]
    strings += [names["zh_TW"] for names in CARRIER_NAMES.values() if "zh_TW" in names]
    assert len(strings) > 60
    found = {(s, c) for s in strings for c in s if c in only}
    assert found == set()


def test_an_ab_variant_is_the_same_for_a_customer_splits_evenly_and_changes_the_subject():
    from worker.domain.rules import KindRule

    rule = KindRule("shipped", True, "transactional", ("email",), 72, variants=("A", "B"))
    assert rule.variant("C-1") == rule.variant("C-1")
    split = [rule.variant(f"C-{n}") for n in range(2000)]
    assert 900 < split.count("A") < 1100
    shipped = {**FACTS, "shipment": {"carrier": "sf-express", "tracking_number": "SF1",
                                     "carrier_eta": None}}
    assert render("shipped", "zh_CN", "Asia/Shanghai", {**shipped, "variant": "A"}).subject == (
        "【星河小铺】您的订单已发货")
    assert render("shipped", "zh_CN", "Asia/Shanghai", {**shipped, "variant": "B"}).subject == (
        "【星河小铺】您的包裹已由顺丰速运揽收")


def test_tips_follow_the_items_categories():
    items = [{"sku": "A", "name": "草莓", "quantity": 1, "unit_price": "30", "category": "fresh"},
             {"sku": "B", "name": "玻璃杯", "quantity": 1, "unit_price": "20", "category": "fragile"}]
    shipment = {"carrier": "sf-express", "tracking_number": "SF1", "carrier_eta": None}
    facts = {**FACTS, "items": items, "shipment": shipment}
    out = render("out_for_delivery", "en", "Asia/Shanghai", facts).text
    assert "check the parcel before you sign" in out and "refrigerate" in out
    delivered = render("delivered", "zh_TW", "Asia/Taipei", facts).text
    assert "check the parcel" not in delivered  # signed for already
    presale = {**FACTS, "items": [{**items[0], "category": "presale"}],
               "promised_ship_by": "2026-12-01T10:00:00+08:00"}
    confirmed = render("order_confirmed", "zh_CN", "Asia/Shanghai", presale)
    assert "预售商品：预计 2026年12月1日 前发货。" in confirmed.text and "预售商品" in confirmed.html
    plain = render("out_for_delivery", "en", "Asia/Shanghai", {**FACTS, "items": [], "shipment": shipment}).text
    assert "refrigerate" not in plain and "sign for it" not in plain


def test_a_long_chinese_subject_and_a_marketing_unsubscribe_survive_the_wire():
    subject = "【星河小铺】" + "您的订单已发货，请注意查收" * 5
    command = {"notification_id": "ntf-9", "kind": "replenishment_reminder", "priority": "marketing",
               "recipient": {"email": "zhangwei@example.cn"},
               "content": {"subject": subject, "text": "正文\n第二行", "html": "<p>正文</p>"},
               "created_at": "2026-11-02T10:00:05+08:00", "link_token": "abc.def"}
    raw = build_message(command, "shop@example.com", "http://127.0.0.1:6066")
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))  # RFC 5322 line length
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Subject"] == subject
    assert parsed["List-Unsubscribe"] == "<http://127.0.0.1:6066/u/abc.def>"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed.get_body(("plain",)).get_content() == "正文\n第二行"


def test_messages_keep_their_words_and_escape_only_what_they_were_told():
    """The templates' words are translated when they are compiled: the translation goes out
    as written (an apostrophe, a percent sign), the values put into it are escaped in HTML."""
    facts = {**FACTS, "expected_delivery": "2026-11-09T12:00:00+00:00", "days_late": 3,
             "promised": "2026-11-05T22:00:00+08:00", "lane_incident": False,
             "coupon": {"percent": 10, "code": "SORRY<10>"},
             "shipment": {"carrier": "ups", "tracking_number": "1Z&9", "milestone": "IN_TRANSIT",
                          "carrier_eta": "2026-11-09T12:00:00+00:00"}}
    content = render("delay_notice", "en", "UTC", facts)
    assert "Carrier's estimated delivery: November 9, 2026." in content.html
    assert "take 10% off your next order with the code SORRY&lt;10&gt;." in content.html
    assert "take 10% off your next order with the code SORRY<10>." in content.text
    assert "tracking number 1Z&amp;9." in content.html and "tracking number 1Z&9." in content.text
    chinese = render("delay_notice", "zh_CN", "Asia/Shanghai", facts)
    assert "SORRY&lt;10&gt;" in chinese.html and "1Z&amp;9" in chinese.html
    assert "%" not in chinese.subject and "【星河小铺】" in chinese.subject


@pytest.mark.parametrize("locale", ["en", "zh_CN", "zh_TW"])
def test_the_pages_styles_are_the_only_ones_their_content_security_policy_allows(locale):
    allowed = re.search(r"style-src ([^;]+)", SECURITY_HEADERS["Content-Security-Policy"]).group(1).split()
    pages = [tracking_page(locale, form={"order": "", "email": ""}), tracking_page(locale, view=a_parcel_view()),
             page("unsubscribe.html.j2", locale, "UTC", {"done": False})]
    for html in pages:
        styles = re.findall(r"<style>(.*?)</style>", html, re.S)
        assert styles and "style=" not in html  # no inline style attributes: hashes cannot allow them
        for css in styles:
            digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in allowed
    assert "'unsafe-inline'" not in allowed
