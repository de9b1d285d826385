"""What the order stage asks the customer stage to tell a customer."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


def notification_id(order_id: str, kind: str, occasion: str = "") -> str:
    """The same facts always give the same id, so a replay never makes a second notification.

    ``occasion`` tells apart notifications of one kind that may rightly repeat
    (a shipment id, a stall number, a delay day).
    """
    digest = hashlib.blake2b(f"{order_id}\x1f{kind}\x1f{occasion}".encode(), digest_size=10)
    return "ntf-" + digest.hexdigest()


@dataclass(slots=True)
class Intent:
    """A decision to notify, before channel, language and quiet hours are applied."""

    notification_id: str
    kind: str
    priority: str
    order_id: str
    customer_id: str
    created_at: str
    caused_by: list[str]
    received_at: str
    facts: dict[str, Any]
    shipment_id: str | None = None
    not_before: str | None = None
    expires_at: str | None = None
    channels: list[str] = field(default_factory=list)
    fanout: int = 1  # how many channels to use (high-value orders: two)
    segment: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Intent:
        return cls(**raw)


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert for the people who run the shop (``ops.alerts``)."""

    alert_id: str
    type: str
    severity: str
    key: str  # the order id or lane id
    summary: str
    raised_at: str
    figures: dict[str, Any]
    order_id: str | None = None
    shipment_id: str | None = None
    lane: str | None = None

    def data(self) -> dict[str, Any]:
        data = {"alert_id": self.alert_id, "severity": self.severity, "summary": self.summary,
                "raised_at": self.raised_at, "figures": self.figures}
        for name in ("order_id", "shipment_id", "lane"):
            if getattr(self, name):
                data[name] = getattr(self, name)
        return data
