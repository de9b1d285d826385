"""Many orders to one address from different customers in a short window: a risk alert.

A reseller ring, a card-testing run, or stolen accounts all look alike from here: parcels
to one doorstep ordered by customers who have nothing else in common. The order stage
tells the address stage of every shipment's destination (:func:`sightings`); the address
stage keeps each address's recent orders (:func:`seen`) and raises one
``alert.suspicious_orders`` per burst.

An address is only ever handled as a fingerprint: a keyed hash of its normalised fields, so
no street or postal code reaches a log, a topic key or an alert.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from worker.domain.clock import stamp
from worker.domain.notification import Alert, notification_id

# Fields that tell one doorstep from another; without one of them a destination is a
# postal area, which many honest customers share.
STREET_FIELDS = ("line1", "address1", "street")
TOLD_BY = ("order.created", "order.shipped")  # the events after which an order's parcels are told
ADDRESS_FIELDS = ("country", "region", "city", "postal_code", *STREET_FIELDS, "line2", "address2")


@dataclass(frozen=True, slots=True)
class Risk:
    distinct_customers: int = 5  # this many different customers ordering to one address…
    window_hours: float = 24  # …within this long raise one alert
    max_orders_kept: int = 200  # per address: a busy address stays a bounded entry


@dataclass(frozen=True, slots=True)
class Sighting:
    address: str  # fingerprint
    order_id: str
    customer_id: str
    at: str


def fingerprint(destination: Mapping[str, Any]) -> str | None:
    """A stable, non-reversible name for a doorstep; None when the destination has no street."""
    if not any(destination.get(f) for f in STREET_FIELDS):
        return None
    parts = [_normal(destination.get(f)) for f in ADDRESS_FIELDS]
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=12,
                             person=b"notifier-address").hexdigest()
    return f"addr-{digest}"


def sightings(order_id: str, order: Mapping[str, Any] | None, shipments: Mapping[str, Mapping[str, Any]]) -> list[Sighting]:
    """The doorsteps the order's parcels go to, for the address stage, once the order (and
    so its customer) is known."""
    order = order or {}
    customer_id, placed = (order.get("customer") or {}).get("id"), order.get("placed_at")
    if not customer_id or not placed:
        return []
    found = (fingerprint(parcel.get("destination") or {}) for parcel in shipments.values())
    addresses = {a for a in found if a is not None}
    # The window is of orders placed: that is when a ring acts, whenever the shop ships.
    return [Sighting(a, order_id, customer_id, stamp(placed)) for a in sorted(addresses)]


def seen(entry: Mapping[str, Any] | None, s: Sighting, rules: Risk) -> tuple[dict[str, Any], Alert | None]:
    """Add one order to its address's recent orders; answers the new entry and, when the
    address now has too many customers in the window and no alert for this burst, the alert.

    ``entry``: {"orders": [[at, order_id, customer_id], …], "burst": {since, last} | None}.
    """
    orders = [o for o in (entry or {}).get("orders", []) if o[1] != s.order_id]
    orders = sorted([*orders, [s.at, s.order_id, s.customer_id]])
    latest = orders[-1][0]
    since = stamp(datetime.fromisoformat(latest) - timedelta(hours=rules.window_hours))
    orders = [o for o in orders if o[0] >= since][-rules.max_orders_kept:]
    burst = (entry or {}).get("burst")
    if burst and burst["last"] < since:
        burst = None  # the last burst is over: a new one may alert again
    # The window ends with the latest order placed, in whatever order the parcels were told.
    customers = len({o[2] for o in orders})
    alert = None
    if customers >= rules.distinct_customers:
        if burst is None:
            alert = _alert(s, orders, customers, rules)
        burst = {"since": (burst or {}).get("since", orders[0][0]), "last": latest}
    return {"orders": orders, "burst": burst, "last": latest}, alert


def _alert(s: Sighting, window: list[list[str]], customers: int, rules: Risk) -> Alert:
    return Alert(
        alert_id=notification_id(s.address, "alert.suspicious_orders", window[0][0]),
        type="alert.suspicious_orders", severity="warning", key=s.order_id, order_id=s.order_id,
        raised_at=s.at,
        summary=f"{len(window)} orders from {customers} different customers to one address "
                f"within {rules.window_hours:g} h: check them, and hold what has not shipped yet",
        figures={"address": s.address, "customers": customers, "orders": [o[1] for o in window],
                 "first_at": window[0][0], "window_hours": rules.window_hours})


def _normal(value: Any) -> str:
    """Case, spacing and punctuation do not make a different doorstep."""
    return re.sub(r"[\W_]+", " ", str(value or "")).strip().casefold()
