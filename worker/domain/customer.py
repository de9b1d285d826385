"""Per-customer policy: channels, quiet hours, caps, segments, and the choice of recipient.

:func:`decide` takes one intent from the order stage and answers with actions: send it
(on one or more channels), hold it until a time, or suppress it with a reason. Held
intents live in the customer's state and come back through :func:`release` when the
clock reaches them. A channel that fails for good hands the intent on to the
customer's next channel through :func:`fallback`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from worker.domain.clock import stamp
from worker.domain.plain import plain
from worker.domain.notification import Intent
from worker.domain.rules import KindRule, Policy, Rules

DECIDED_LIMIT = 200  # recent notification ids, to recognise a redelivered intent
VERSIONS_LIMIT = 8  # preference updates kept apart; older ones are folded together
DELIVERING_LIMIT = 20  # recent sends that could still fall back to another channel
ENGAGED_LIMIT = 64  # recent notifications (and engagement events) whose engagement is known


@dataclass(frozen=True, slots=True)
class Route:
    channel: str
    recipient: dict[str, str]
    locale: str
    timezone: str
    notification_id: str


@dataclass(frozen=True, slots=True)
class Send:
    intent: Intent
    routes: list[Route]


@dataclass(frozen=True, slots=True)
class Hold:
    intent: Intent
    until: str


@dataclass(frozen=True, slots=True)
class Suppress:
    intent: Intent
    reason: str


Action = Send | Hold | Suppress


@dataclass(slots=True)
class CustomerState:
    customer_id: str
    # [effective at, update]: updates apply from their own event time, so a replay that
    # reads preferences ahead of the orders still judges each notification by the
    # preferences of its moment.
    versions: list[list[Any]] = field(default_factory=list)
    held: list[dict[str, Any]] = field(default_factory=list)  # {"until": stamp, "intent": {...}}
    sent: list[list[Any]] = field(default_factory=list)  # [at, priority, order_id, first id]
    decided: list[str] = field(default_factory=list)
    # Sends with channels left to try: {"at", "routes": {id: channel}, "intent": {...}}
    delivering: list[dict[str, Any]] = field(default_factory=list)
    # Set by a tombstone: everything above is gone, and orders placed before it stay silent.
    erased_at: str | None = None
    soft_bounces: int = 0  # in a row, since the last email that arrived
    # Emails that go again on another channel unless opened: {"due", "id", "to", "intent"}
    escalations: list[dict[str, Any]] = field(default_factory=list)
    # Notification id -> the engagement event types heard of it, and the events' ids: a
    # provider that repeats a callback, or a customer opening a message twice, is told apart.
    engaged: dict[str, list[str]] = field(default_factory=dict)
    engagement_ids: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CustomerState:
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        return plain(self)

    @property
    def next_release(self) -> str | None:
        return min([h["until"] for h in self.held] + [e["due"] for e in self.escalations], default=None)

    def preferences(self, now: datetime) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for at, update in self.versions:
            if at <= stamp(now):
                merged.update(update)
        return merged


def update_preferences(state: CustomerState, update: dict[str, Any], at: datetime) -> None:
    """Later values override earlier ones (contract section 3) from ``at`` on. A new email
    address is a fresh start for email, whatever the old one did."""
    if update.get("email") and "email_disabled" not in update:
        update = {**update, "email_disabled": False}
    state.versions.append([stamp(at), update])
    state.versions.sort(key=lambda v: v[0])
    if len(state.versions) > VERSIONS_LIMIT:
        (_, first), (at2, second) = state.versions[:2]
        state.versions[:2] = [[at2, {**first, **second}]]


def decide(state: CustomerState, intent: Intent, now: datetime, rules: Rules,
           webhook_url: str = "") -> list[Action]:
    """What to do with one intent now: send, hold or suppress (and what it supersedes)."""
    if intent.notification_id in state.decided or any(
            h["intent"]["notification_id"] == intent.notification_id for h in state.held):
        return []
    actions: list[Action] = _supersede(state, intent, rules)
    actions.append(_judge(state, intent, now, rules, webhook_url))
    _remember(state, actions, now, rules)
    return actions


def release(state: CustomerState, now: datetime, rules: Rules,
            webhook_url: str = "") -> list[Action]:
    """Held intents whose time has come, judged again against today's preferences; and
    unopened emails whose escalation is due, on their escalation channel."""
    when = stamp(now)
    due = sorted((h for h in state.held if h["until"] <= when),
                 key=lambda h: (h["until"], h["intent"]["created_at"]))
    state.held = [h for h in state.held if h["until"] > when]
    actions: list[Action] = []
    for held in due:
        intent = Intent.from_dict(held["intent"])
        intent.not_before = stamp(now)  # the moment it really goes, not the one planned
        actions.append(_judge(state, intent, now, rules, webhook_url))
        _remember(state, actions[-1:], now, rules)
    unopened = [e for e in state.escalations if e["due"] <= when]
    state.escalations = [e for e in state.escalations if e["due"] > when]
    for escalation in unopened:
        intent = Intent.from_dict(escalation["intent"])
        intent.notification_id, intent.channels = f"{escalation['id']}-escalated", [escalation["to"]]
        intent.fanout, intent.not_before = 1, stamp(now)
        actions.append(_judge(state, intent, now, rules, webhook_url))
        _remember(state, actions[-1:], now, rules)
    return actions


def fallback(state: CustomerState, failed_id: str, now: datetime, rules: Rules,
             webhook_url: str = "", reason: str = "") -> list[Action]:
    """A channel failed for good: the same news through the next channel the customer
    accepts, judged like a new notification (quiet hours hold it, the cap does not count
    the failed one). Unknown or already handled failures change nothing. A push token the
    provider no longer knows (``unregistered_token``) is never used again."""
    entry = next((d for d in state.delivering if failed_id in d["routes"]), None)
    if entry is not None and reason == "unregistered_token" and entry["routes"][failed_id] == "push":
        tokens = contact(Intent.from_dict(entry["intent"]), state.preferences(now)).get("push_tokens")
        if tokens:
            dead = state.preferences(now).get("dead_push_tokens", [])
            update_preferences(state, {"dead_push_tokens": [*dead, tokens[0]["token"]]}, now)
    too_late = stamp(now - timedelta(hours=rules.policy.fallback_hours))
    if entry is None or entry["at"] < too_late:
        return []
    state.delivering.remove(entry)
    state.sent = [s for s in state.sent if s[3] != failed_id]
    intent = Intent.from_dict(entry["intent"])
    used = set(entry["routes"].values())
    intent.channels = [c for c in intent.channels if c not in used]
    intent.notification_id = f"{failed_id}-fallback"
    intent.fanout = 1
    intent.not_before = stamp(now)
    actions = [_judge(state, intent, now, rules, webhook_url)]
    _remember(state, actions, now, rules)
    return actions


def engaged(state: CustomerState, event_type: str, data: dict[str, Any], now: datetime,
            rules: Rules, event_id: str = "") -> str:
    """What a customer's engagement changes in their preferences: an unsubscribe click ends
    marketing; a hard bounce, or ``bounce_limit`` soft ones in a row, ends email to that
    address; an email that arrived, or was opened, resets the count.

    Answers ``"repeat"`` for an event seen before (``event_id``: a provider repeating its
    callback), which changes nothing; ``"again"`` for another event of the same type about
    the same notification (a second open, a second bounce report of one email), which
    changes nothing either; else ``"first"``."""
    if event_id:
        # Kept short (64 bits): uuids do not compress, and the state is kept for every customer.
        short = hashlib.blake2b(event_id.encode(), digest_size=8).hexdigest()
        if short in state.engagement_ids:
            return "repeat"
        state.engagement_ids = [*state.engagement_ids, short][-ENGAGED_LIMIT:]
    notification_id = str(data.get("notification_id", ""))
    heard = state.engaged.pop(notification_id, [])
    state.engaged[notification_id] = heard  # the latest last, the oldest forgotten first
    while len(state.engaged) > ENGAGED_LIMIT:
        del state.engaged[next(iter(state.engaged))]
    if event_type in heard:
        return "again"
    heard.append(event_type)
    if event_type == "notification.unsubscribed":
        update_preferences(state, {"marketing_opt_in": False}, now)
    elif event_type == "notification.bounced" and data.get("channel", "email") == "email":
        state.soft_bounces += 1
        if data.get("bounce_type") == "hard" or state.soft_bounces >= rules.policy.bounce_limit:
            update_preferences(state, {"email_disabled": True}, now)
            state.soft_bounces = 0
    elif event_type in ("notification.delivered", "notification.opened", "notification.clicked") \
            and data.get("channel") == "email":
        state.soft_bounces = 0
    if event_type in ("notification.opened", "notification.clicked"):
        state.escalations = [e for e in state.escalations if e["id"] != notification_id]
    return "first"


def erase(state: CustomerState, at: datetime) -> list[Action]:
    """A tombstone: forget the customer, cancel what was waiting for them, and keep only
    the moment (no personal data), so news of their earlier orders stays unsent."""
    actions: list[Action] = [Suppress(Intent.from_dict(h["intent"]), "erased") for h in state.held]
    kept = state.decided
    for name, value in plain(CustomerState(state.customer_id)).items():
        setattr(state, name, value)
    state.decided, state.erased_at = kept, stamp(at)
    return actions


def _judge(state: CustomerState, intent: Intent, now: datetime, rules: Rules,
           webhook_url: str) -> Action:
    policy, prefs = rules.policy, state.preferences(now)
    placed = intent.facts.get("placed_at")
    if state.erased_at and (not placed or stamp(datetime.fromisoformat(placed)) <= state.erased_at):
        return Suppress(intent, "erased")
    if intent.expires_at and intent.expires_at < stamp(now):
        return Suppress(intent, "expired")
    if intent.priority == "marketing":
        segment = rules.segments.get(intent.segment or "")
        if not prefs.get("marketing_opt_in", False):
            return Suppress(intent, "opted_out")
        if segment is not None and segment.service_only:
            return Suppress(intent, "segment_service_only")
        if not _ratio_allows_marketing(state, now, policy):
            return Suppress(intent, "marketing_ratio")
    routes = route(intent, prefs, rules, webhook_url=webhook_url)
    if isinstance(routes, str):
        return Suppress(intent, routes)
    if intent.priority != "urgent":
        zone = _zone(routes[0].timezone)
        wait = max(filter(None, (_quiet_until(now, zone, prefs, policy),
                                 _gap_until(state, intent, now, policy))), default=None)
        if wait is not None:
            if intent.priority == "marketing" and intent.expires_at and intent.expires_at < stamp(wait):
                return Suppress(intent, "quiet_hours_expired")
            return Hold(intent, stamp(wait))
        if rules.kinds[intent.kind].capped and _sent_today(state, now, zone) >= policy.daily_cap:
            return Suppress(intent, "frequency_capped")
    return Send(intent, routes)


def _supersede(state: CustomerState, intent: Intent, rules: Rules) -> list[Action]:
    """Held news that this intent makes stale (delivered makes `shipped` stale)."""
    rule = rules.kinds.get(intent.kind)
    if rule is None or not rule.supersedes:
        return []
    # An email waiting to escalate about news that is now stale goes nowhere.
    state.escalations = [e for e in state.escalations if not _stale(e["intent"], intent, rule)]
    stale, kept = [], []
    for held in state.held:
        if _stale(held["intent"], intent, rule):
            stale.append(Suppress(Intent.from_dict(held["intent"]), "superseded"))
        else:
            kept.append(held)
    state.held = kept
    return list(stale)


def _stale(old: dict[str, Any], intent: Intent, rule: KindRule) -> bool:
    """Does ``intent`` make the earlier news ``old`` stale (same order and parcel)?"""
    same_parcel = None in (old.get("shipment_id"), intent.shipment_id) or (
        old.get("shipment_id") == intent.shipment_id)
    return old["order_id"] == intent.order_id and same_parcel and old["kind"] in rule.supersedes


def _remember(state: CustomerState, actions: list[Action], now: datetime, rules: Rules) -> None:
    for action in actions:
        intent = action.intent
        if isinstance(action, Hold):
            state.held.append({"until": action.until, "intent": plain(intent)})
            continue
        state.decided = [*state.decided[-(DECIDED_LIMIT - 1):], intent.notification_id]
        if isinstance(action, Send):
            # One entry a send, however many channels: the cap counts news, not messages.
            state.sent.append([stamp(now), intent.priority, intent.order_id,
                               action.routes[0].notification_id])
            used = {r.channel for r in action.routes}
            escalate = rules.kinds[intent.kind].escalate if intent.kind in rules.kinds else None
            email = next((r for r in action.routes if r.channel == "email"), None)
            if escalate and email and escalate.to not in used and not intent.notification_id.endswith(
                    ("-escalated", "-fallback")):
                state.escalations.append({
                    "due": stamp(now + timedelta(minutes=escalate.after_minutes)),
                    "id": email.notification_id, "to": escalate.to, "intent": plain(intent)})
            if any(c not in used for c in intent.channels):
                state.delivering = [*state.delivering[-(DELIVERING_LIMIT - 1):], {
                    "at": stamp(now), "intent": plain(intent),
                    "routes": {r.notification_id: r.channel for r in action.routes}}]


def prune(state: CustomerState, now: datetime, rules: Rules) -> None:
    """Forget sends older than the ratio window, and fallbacks past their time."""
    horizon = stamp(now - timedelta(days=rules.policy.ratio_window_days))
    state.sent = [s for s in state.sent if s[0] >= horizon]
    too_late = stamp(now - timedelta(hours=rules.policy.fallback_hours))
    state.delivering = [d for d in state.delivering if d["at"] >= too_late]


# -- timing ------------------------------------------------------------------------------


def _quiet_until(now: datetime, zone: ZoneInfo, prefs: dict[str, Any],
                 policy: Policy) -> datetime | None:
    """The end of the quiet hours ``now`` falls in, in the customer's own timezone."""
    quiet = prefs.get("quiet_hours") or {}
    start = time.fromisoformat(quiet["start"]) if quiet.get("start") else policy.quiet_start
    end = time.fromisoformat(quiet["end"]) if quiet.get("end") else policy.quiet_end
    local = now.astimezone(zone)
    t = local.time().replace(tzinfo=None)
    if start == end:
        return None
    inside = start <= t < end if start < end else (t >= start or t < end)
    if not inside:
        return None
    day = local.date() if t < end else local.date() + timedelta(days=1)
    return _local(day, end, zone)


def _gap_until(state: CustomerState, intent: Intent, now: datetime,
               policy: Policy) -> datetime | None:
    previous = [s[0] for s in state.sent if s[2] == intent.order_id]
    if not previous:
        return None
    ready = datetime.fromisoformat(max(previous)) + timedelta(minutes=policy.min_gap_minutes)
    return ready if ready > now else None


def _sent_today(state: CustomerState, now: datetime, zone: ZoneInfo) -> int:
    today = now.astimezone(zone).date()
    return sum(1 for at, priority, *_ in state.sent
               if priority != "urgent" and datetime.fromisoformat(at).astimezone(zone).date() == today)


def _ratio_allows_marketing(state: CustomerState, now: datetime, policy: Policy) -> bool:
    """Would one more marketing message keep service at or above its share?"""
    horizon = stamp(now - timedelta(days=policy.ratio_window_days))
    recent = [s for s in state.sent if s[0] >= horizon]
    service = sum(1 for s in recent if s[1] != "marketing")
    return service >= policy.service_ratio * (len(recent) + 1)


def _local(day: date, at: time, zone: ZoneInfo) -> datetime:
    # zoneinfo resolves a wall time that DST skips or repeats with fold=0: the earlier offset.
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):
        return ZoneInfo("UTC")


# -- channels ----------------------------------------------------------------------------


def contact(intent: Intent, preferences: dict[str, Any] | None) -> dict[str, Any]:
    """The customer as the order knew them, with later preference updates on top."""
    merged = dict(intent.facts.get("customer", {}))
    for key in ("email", "phone", "locale", "timezone"):
        if preferences and preferences.get(key):
            merged[key] = preferences[key]
    dead = (preferences or {}).get("dead_push_tokens")
    if dead and merged.get("push_tokens"):
        merged["push_tokens"] = [t for t in merged["push_tokens"] if t["token"] not in dead]
    return merged


def route(intent: Intent, preferences: dict[str, Any] | None, rules: Rules,
          *, webhook_url: str = "") -> list[Route] | str:
    """The first channels (``intent.fanout`` of them) the kind allows, the customer
    accepts and we can address; else the reason there are none."""
    who = contact(intent, preferences)
    order = (preferences or {}).get("channel_order") or rules.channel_order
    opted_in = (preferences or {}).get("channels")
    candidates = [c for c in order if c in intent.channels]
    if opted_in is not None:
        accepted = [c for c in candidates if opted_in.get(c, False)]
        if candidates and not accepted:
            return "opted_out"
        candidates = accepted
    routes: list[Route] = []
    if (preferences or {}).get("email_disabled"):
        candidates = [c for c in candidates if c != "email"]
    for channel in candidates:
        recipient = _recipient(channel, who, intent.customer_id, webhook_url)
        if recipient and len(routes) < intent.fanout:
            nid = intent.notification_id + ("" if not routes else f"-{channel}")
            routes.append(Route(channel, recipient, who.get("locale", ""),
                                who.get("timezone", "UTC"), nid))
    return routes or "no_reachable_channel"


def _recipient(channel: str, who: dict[str, Any], customer_id: str,
               webhook_url: str) -> dict[str, str] | None:
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
