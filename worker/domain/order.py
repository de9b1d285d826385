"""Per-order state and the decisions each order event leads to."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from worker.domain.envelope import Envelope
from worker.domain.notification import Intent, notification_id
from worker.domain.rules import Rules

# Enough to recognise a redelivered or replayed event; an order sees a few dozen at most.
SEEN_LIMIT = 64


@dataclass(slots=True)
class OrderState:
    order_id: str
    order: dict[str, Any] | None = None  # the order.created data, kept for messages
    paid_at: str | None = None
    cancelled_at: str | None = None
    caused_by: dict[str, str] = field(default_factory=dict)  # event type -> ce_id
    notified: list[str] = field(default_factory=list)  # notification ids already decided
    seen: list[str] = field(default_factory=list)  # recent (ce_source, ce_id) pairs

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> OrderState:
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Outcome:
    state: OrderState
    intents: list[Intent]
    duplicate: bool = False


def apply(
    state: OrderState | None,
    event: Envelope,
    *,
    now: datetime,
    received_at: datetime,
    rules: Rules,
) -> Outcome:
    """Fold one order event into the order's state; return the new state and what to tell."""
    order_id = str(event.data["order_id"])
    state = state if state is not None else OrderState(order_id)
    if event.identity in state.seen:
        return Outcome(state, [], duplicate=True)
    state.seen = [*state.seen[-(SEEN_LIMIT - 1) :], event.identity]
    state.caused_by[event.type] = event.id

    data = event.data
    if event.type == "order.created":
        state.order = data
    elif event.type == "order.paid":
        state.paid_at = data["paid_at"]
    elif event.type == "order.cancelled":
        state.cancelled_at = data["cancelled_at"]

    intents = [i for i in _decide(state, now, received_at, rules) if i.notification_id not in state.notified]
    state.notified.extend(i.notification_id for i in intents)
    return Outcome(state, intents)


def _decide(state: OrderState, now: datetime, received_at: datetime, rules: Rules) -> list[Intent]:
    if state.order is None or state.cancelled_at:
        return []
    intents = []
    if state.paid_at:
        intent = _intent(state, "order_confirmed", ("order.created", "order.paid"), now, received_at, rules)
        if intent:
            intents.append(intent)
    return intents


def _intent(
    state: OrderState,
    kind: str,
    causes: tuple[str, ...],
    now: datetime,
    received_at: datetime,
    rules: Rules,
    occasion: str = "",
) -> Intent | None:
    rule = rules.kind(kind)
    if rule is None or state.order is None:
        return None
    order = state.order
    return Intent(
        notification_id=notification_id(state.order_id, kind, occasion),
        kind=kind,
        priority=rule.priority,
        order_id=state.order_id,
        customer_id=order["customer"]["id"],
        created_at=now.isoformat(),
        caused_by=[state.caused_by[c] for c in causes if c in state.caused_by],
        received_at=received_at.isoformat(),
        facts={
            "shop": order["shop"],
            "customer": order["customer"],
            "items": order["items"],
            "total": order["total"],
            "placed_at": order["placed_at"],
            "promised_delivery_by": order.get("promised_delivery_by"),
        },
        expires_at=(now + timedelta(hours=rule.expires_after_hours)).isoformat(),
        channels=list(rule.channels),
    )
