import email
import email.policy
import re

import pytest

from tests.conftest import example
from worker.render import catalog_locale, render
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


def test_html_escapes_what_customers_typed():
    facts = {**FACTS, "customer": {**FACTS["customer"], "name": "<script>x</script>"}}
    content = render("order_confirmed", "en", "UTC", facts)
    assert "<script>" not in content.html and "&lt;script&gt;" in content.html
    assert "<script>x</script>" in content.text  # plain text is not HTML


def test_email_is_multipart_alternative_with_text_and_html():
    content = render("order_confirmed", "zh_CN", "Asia/Shanghai", FACTS)
    command = {"notification_id": "ntf-1", "kind": "order_confirmed", "priority": "transactional",
               "recipient": {"email": "zhangwei@example.cn"}, "content": content.as_dict(),
               "created_at": "2026-11-02T10:00:05+08:00"}
    raw = build_message(command, "shop@example.com", "http://127.0.0.1:6066").as_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    parts = {p.get_content_type(): p.get_content() for p in parsed.iter_parts()}
    assert "您的付款" not in parts["text/plain"] and "张伟，您好" in parts["text/plain"]
    assert re.search(r"<html lang=\"zh-CN\">", parts["text/html"])
    assert parsed["Subject"] == "【星河小铺】您的订单已确认"
    assert parsed["Message-ID"] == "<ntf-1@order-notifier>"
    assert "List-Unsubscribe" not in parsed
