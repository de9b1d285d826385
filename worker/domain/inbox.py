"""The in-app inbox as the tracking page shows it: each customer's latest messages.

The senders write every in-app message to the inbox topic (keyed by customer); the
customer stage keeps the latest :data:`KEPT` of each customer here, each once however often
it is read again, and the page shows those about its order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KEPT = 30  # a customer's latest messages; older ones stay in the app, not on the page
FIELDS = ("notification_id", "order_id", "kind", "title", "text", "created_at")


def keep(messages: list[dict[str, Any]], message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The customer's messages with ``message`` among them, newest last, at most KEPT."""
    entry = {name: message.get(name, "") for name in FIELDS}
    kept = [m for m in messages if m["notification_id"] != entry["notification_id"]]
    kept.append(entry)
    kept.sort(key=lambda m: m["created_at"])
    return kept[-KEPT:]


def of_order(messages: list[dict[str, Any]], order_id: str) -> list[dict[str, Any]]:
    return [m for m in reversed(messages) if m["order_id"] == order_id]
