"""A small language for whole order stories, run through the pure decision code.

A story is a list of steps at offsets (hours) from a fixed start; ``tick`` steps are
the moments the worker decides, as clock ticks do in the worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.domain import customer, order
from worker.domain.envelope import Envelope
from worker.domain.notification import Intent
from worker.domain.rules import Rules
from worker.settings import Settings
from worker.stream import load_rules

RULES = load_rules(Settings())
START = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
ORDER = "SO-1"


def at(hours: float) -> datetime:
    return START + timedelta(hours=hours)


def created(hours: float = 0, *, total: str = "199.00", currency: str = "CNY", segment: str = "regular",
            timezone: str = "Asia/Shanghai", items: list[dict[str, Any]] | None = None,
            **extra: Any) -> Envelope:
    data = {
        "order_id": ORDER,
        "shop": {"id": "s1", "name": "星河小铺"},
        "customer": {"id": "CU-1", "name": "张伟", "email": "zw@example.cn", "phone": "+8613800000000",
                     "locale": "zh-CN", "timezone": timezone, "segment": segment},
        "items": items or [{"sku": "A", "name": "茶", "quantity": 1, "unit_price": total,
                            "category": "general"}],
        "total": {"amount": total, "currency": currency},
        "placed_at": at(hours).isoformat(),
        "promised_ship_by": at(hours + 48).isoformat(),
        **extra,
    }
    return _event("order.created", hours, data)


def paid(hours: float = 0.1) -> Envelope:
    return _event("order.paid", hours, {"order_id": ORDER, "paid_at": at(hours).isoformat()})


def cancelled(hours: float) -> Envelope:
    return _event("order.cancelled", hours, {"order_id": ORDER, "cancelled_at": at(hours).isoformat()})


def returned(step: str, hours: float) -> Envelope:
    return _event(f"order.{step}", hours, {"order_id": ORDER, "at": at(hours).isoformat()})


def shipped(hours: float, parcel: str = "P1", carrier: str = "sf-express") -> Envelope:
    return _event("order.shipped", hours, {
        "order_id": ORDER, "shipment_id": parcel, "carrier": carrier,
        "tracking_number": f"SF{parcel}", "shipped_at": at(hours).isoformat(),
        "origin": {"country": "CN", "region": "ZJ"}, "destination": {"country": "CN", "region": "SH"},
    })


def scan(hours: float, status: str | dict[str, str], parcel: str = "P1", *,
         reason: str | None = None, ident: str | None = None, told: float | None = None) -> Envelope:
    """A checkpoint at ``hours``, told (the event's time) at ``told`` if later."""
    checkpoint: dict[str, Any] = {"occurred_at": at(hours).isoformat()}
    if isinstance(status, dict):
        checkpoint["raw_status"] = status
    else:
        checkpoint["status"] = status
    if reason:
        checkpoint["exception_reason"] = reason
    data = {"order_id": ORDER, "shipment_id": parcel, "carrier": "sf-express",
            "tracking_number": f"SF{parcel}", "checkpoint": checkpoint}
    return _event("tracking.updated", hours if told is None else told, data,
                  ident=ident or f"{parcel}-{status}-{hours}")


@dataclass(frozen=True)
class Tick:
    hours: float


@dataclass(frozen=True)
class Prefs:
    """The customer changes their preferences."""

    hours: float
    update: dict[str, Any]


@dataclass(frozen=True)
class Erase:
    """A tombstone on ``customers.preferences``."""

    hours: float


@dataclass(frozen=True)
class Fail:
    """The provider of ``channel`` rejects the ``kind`` notification for good."""

    hours: float
    kind: str
    channel: str = "email"


def tick(hours: float) -> Tick:
    return Tick(hours)


Step = Envelope | Tick | Prefs | Erase | Fail


_counter = iter(range(10**9))


def _event(kind: str, hours: float, data: dict[str, Any], ident: str | None = None) -> Envelope:
    return Envelope(id=ident or f"{kind}-{hours}-{next(_counter)}", source="urn:test", type=kind,
                    time=at(hours), subject=ORDER, data=data)


@dataclass
class Told:
    """What the order stage decided, and what the customer stage did with it."""

    intents: list[Intent] = field(default_factory=list)
    alerts: list[Any] = field(default_factory=list)
    actions: list[tuple[datetime, customer.Action]] = field(default_factory=list)
    state: order.OrderState | None = None

    def kinds(self) -> list[str]:
        return [i.kind for i in self.intents]

    def sent(self) -> list[tuple[str, str]]:
        """(kind, local time in the customer's zone) of everything that went out."""
        return [(a.intent.kind, when.isoformat()) for when, a in self.actions
                if isinstance(a, customer.Send)]

    def sent_kinds(self) -> list[str]:
        return [k for k, _ in self.sent()]

    def channels(self, kind: str) -> list[str]:
        """Every channel ``kind`` went out on, in order."""
        return [r.channel for _, a in self.actions if isinstance(a, customer.Send)
                and a.intent.kind == kind for r in a.routes]

    def route_id(self, kind: str, channel: str) -> str:
        return next(r.notification_id for _, a in reversed(self.actions)
                    if isinstance(a, customer.Send) and a.intent.kind == kind
                    for r in a.routes if r.channel == channel)

    def suppressed(self) -> list[tuple[str, str]]:
        return [(a.intent.kind, a.reason) for _, a in self.actions if isinstance(a, customer.Suppress)]


def run(*steps: Step, rules: Rules = RULES, preferences: dict[str, Any] | None = None,
        through_customer: bool = True, lanes: order.LaneLookup = order.no_lanes) -> Told:
    """Fold the events, decide at every tick (order stage, then customer stage)."""
    told = Told()
    state: order.OrderState | None = None
    person = customer.CustomerState("CU-1")
    if preferences:
        customer.update_preferences(person, preferences, START - timedelta(days=1))
    for step in steps:
        if isinstance(step, Envelope):
            state = order.apply(state, step, received_at=step.time).state
            continue
        now = at(step.hours)
        if isinstance(step, Prefs):
            customer.update_preferences(person, step.update, now)
            continue
        if isinstance(step, Erase):
            told.actions += [(now, a) for a in customer.erase(person, now)]
            continue
        if isinstance(step, Fail):
            failed = told.route_id(step.kind, step.channel)
            told.actions += [(now, a) for a in customer.fallback(person, failed, now, rules)]
            continue
        if through_customer:
            told.actions += [(now, a) for a in customer.release(person, now, rules)]
        if state is None:
            continue
        decisions = order.wake(state, now, rules, lanes)
        told.intents += decisions.intents
        told.alerts += decisions.alerts
        if through_customer:
            for intent in decisions.intents:
                told.actions += [(now, a) for a in customer.decide(person, intent, now, rules)]
    told.state = state
    return told


def ticks(until_hours: float, every: float = 0.25, since: float = 0) -> list[Tick]:
    return [Tick(since + n * every) for n in range(int((until_hours - since) / every) + 1)]


def story(*steps: Step, until: float = 24 * 14, every: float = 0.25, since: float = 0) -> list[Step]:
    """Steps merged with regular ticks, each step before the tick at or after it."""
    merged: list[tuple[float, int, Step]] = []
    for e in steps:
        hours = (e.time - START).total_seconds() / 3600 if isinstance(e, Envelope) else e.hours
        merged.append((hours, 0, e))
    for t in ticks(until, every, since):
        merged.append((t.hours, 1, t))
    return [s for _, _, s in sorted(merged, key=lambda x: (x[0], x[1]))]
