import pytest

from worker.domain.customer import Route, route
from worker.domain.notification import Intent
from worker.stream import load_rules
from worker.settings import Settings

RULES = load_rules(Settings())


def intent(**customer) -> Intent:
    who = {"id": "CU-1", "name": "Li", "locale": "zh-CN", "timezone": "Asia/Shanghai",
           "email": "li@example.cn", **customer}
    return Intent(notification_id="ntf-1", kind="order_confirmed", priority="transactional",
                  order_id="O-1", customer_id="CU-1", created_at="2026-11-02T00:00:00+00:00",
                  caused_by=["e1"], received_at="2026-11-02T00:00:00+00:00",
                  facts={"customer": who}, channels=["email", "wechat", "push", "in_app"])


def test_without_preferences_the_default_order_picks_email():
    assert route(intent(), None, RULES) == [Route("email", {"email": "li@example.cn"}, "zh-CN",
                                                  "Asia/Shanghai", "ntf-1")]


def test_customer_channel_order_and_opt_ins_are_respected():
    prefs = {"channels": {"email": True, "wechat": True}, "channel_order": ["wechat", "email"]}
    chosen = route(intent(wechat_openid="o-1"), prefs, RULES)
    assert chosen[0].channel == "wechat" and chosen[0].recipient == {"wechat_openid": "o-1"}


def test_a_channel_without_a_recipient_is_skipped():
    prefs = {"channels": {"email": True, "wechat": True}, "channel_order": ["wechat", "email"]}
    assert route(intent(), prefs, RULES)[0].channel == "email"


def test_opted_out_of_every_allowed_channel_is_suppressed():
    prefs = {"channels": {"email": False, "sms": True}}
    assert route(intent(), prefs, RULES) == "opted_out"


def test_later_preferences_override_the_order_contact():
    prefs = {"channels": {"email": True}, "email": "new@example.cn", "locale": "en"}
    chosen = route(intent(), prefs, RULES)
    assert chosen[0].recipient == {"email": "new@example.cn"} and chosen[0].locale == "en"


@pytest.mark.parametrize("kind_channels", [["sms"]])
def test_no_reachable_channel_is_suppressed(kind_channels):
    i = intent(email=None)
    i.channels = kind_channels
    assert route(i, None, RULES) == "no_reachable_channel"


def test_an_unregistered_push_token_is_dropped_and_the_news_goes_to_the_next_channel():
    from datetime import datetime

    from worker.domain.customer import CustomerState, Send, decide, fallback, update_preferences

    tokens = [{"platform": "fcm", "token": "old-phone"}, {"platform": "fcm", "token": "new-phone"}]
    news = intent(push_tokens=tokens)
    news.channels = ["push", "email"]
    state, now = CustomerState("CU-1"), datetime.fromisoformat("2026-11-02T04:00:00+00:00")
    prefs = {"channels": {"push": True, "email": True}, "channel_order": ["push", "email"]}
    update_preferences(state, prefs, datetime.fromisoformat("2026-11-01T00:00:00+00:00"))
    [first] = decide(state, news, now, RULES)
    assert isinstance(first, Send) and first.routes[0].recipient["push_token"] == "old-phone"
    [again] = fallback(state, "ntf-1", now, RULES, reason="unregistered_token")
    assert again.routes[0].channel == "email"
    later = intent(push_tokens=tokens)
    later.notification_id, later.channels = "ntf-2", ["push", "email"]
    assert route(later, state.preferences(now), RULES)[0].recipient["push_token"] == "new-phone"
