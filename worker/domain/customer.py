"""Per-customer preferences and the choice of channel and recipient."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.domain.notification import Intent
from worker.domain.rules import Rules


@dataclass(frozen=True, slots=True)
class Route:
    channel: str
    recipient: dict[str, str]
    locale: str
    timezone: str


@dataclass(frozen=True, slots=True)
class Suppressed:
    reason: str


def contact(intent: Intent, preferences: dict[str, Any] | None) -> dict[str, Any]:
    """The customer as the order knew them, with later preference updates on top."""
    merged = dict(intent.facts.get("customer", {}))
    for key in ("email", "phone", "locale", "timezone"):
        if preferences and preferences.get(key):
            merged[key] = preferences[key]
    return merged


def route(
    intent: Intent,
    preferences: dict[str, Any] | None,
    rules: Rules,
    *,
    webhook_url: str = "",
) -> Route | Suppressed:
    """The first channel the kind allows, the customer accepts, and we can address."""
    who = contact(intent, preferences)
    order = (preferences or {}).get("channel_order") or rules.channel_order
    opted_in = (preferences or {}).get("channels")
    candidates = [c for c in order if c in intent.channels]
    if opted_in is not None:
        accepted = [c for c in candidates if opted_in.get(c, False)]
        if candidates and not accepted:
            return Suppressed("opted_out")
        candidates = accepted
    for channel in candidates:
        recipient = _recipient(channel, who, intent.customer_id, webhook_url)
        if recipient:
            return Route(channel, recipient, who.get("locale", ""), who.get("timezone", "UTC"))
    return Suppressed("no_reachable_channel")


def _recipient(
    channel: str, who: dict[str, Any], customer_id: str, webhook_url: str
) -> dict[str, str] | None:
    if channel == "email" and who.get("email"):
        return {"email": who["email"]}
    if channel == "sms" and who.get("phone"):
        return {"phone": who["phone"]}
    if channel == "push" and who.get("push_tokens"):
        token = who["push_tokens"][0]
        return {"push_token": token["token"], "platform": token["platform"]}
    if channel == "wechat" and who.get("wechat_openid"):
        return {"wechat_openid": who["wechat_openid"]}
    if channel == "webhook" and webhook_url:
        return {"url": webhook_url}
    if channel == "in_app":
        return {"customer_id": customer_id}
    return None
