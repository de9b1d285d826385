"""What an order's facts call for: every notification, decided or not, with its due time.

The rules of an order's milestones (paid, shipped, out for delivery, delivered, returns,
and the follow-ups after delivery); the watch on parcels in motion
(:mod:`worker.domain.watch`) adds stalls, delays and arrivals. :func:`worker.domain.order.wake`
decides the calls that have come due and were not decided before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from worker.domain.clock import stamp
from worker.domain.due import Due, plus
from worker.domain.lanes import lane_keys
from worker.domain.rules import Rules
from worker.domain.shipment import Shipment, last_delivery
from worker.domain.watch import watch_calls

if TYPE_CHECKING:
    from worker.domain.order import LaneLookup, OrderState

CARE_CATEGORIES = frozenset({"fresh", "fragile", "beauty", "apparel"})
CONSUMABLE_CATEGORIES = frozenset({"fresh", "beauty"})


def calls(state: OrderState, rules: Rules, lanes: LaneLookup) -> Iterator[Due]:
    """Every notification the order's facts call for, decided or not, with its due time."""
    order = state.order
    if order is None:
        return
    segment = order["customer"].get("segment")
    on = rules.kinds_on(segment)
    if state.cancelled_at:
        if "order_cancelled" in on:
            yield Due("order_cancelled", "", state.cancelled_at, ("order.created", "order.cancelled"))
        return
    policy = rules.policy
    if state.paid_at and "order_confirmed" in on:
        yield Due("order_confirmed", "", state.paid_at, ("order.created", "order.paid"))
    if state.paid_at and not state.shipments and "ship_delayed" in on:
        ship_by = order.get("promised_ship_by")
        due = stamp(ship_by) if ship_by else plus(state.paid_at, hours=policy.ship_sla_hours)
        new_date = plus(due, days=policy.ship_delay_days)
        yield Due("ship_delayed", "", due, ("order.paid",),
                  facts={"missed_ship_by": due, "new_ship_by": new_date})
    for step, at in state.returns.items():
        if "return_update" in on:
            yield Due("return_update", step, at, (f"order.return_{step}", "order.refunded"),
                      facts={"return_step": step})
    parcels = state.parcels()
    delivered = last_delivery(parcels)  # the whole order's
    for number, parcel in enumerate(parcels, 1):
        yield from _parcel_calls(parcel, on, rules, number, len(parcels), delivered is not None)
        if not parcel.delivered_at and not parcel.open_exception:
            yield from watch_calls(state, parcel, on, rules, lanes(
                lane_keys(parcel.carrier, parcel.origin, parcel.destination)))
    if delivered and not state.returns:
        items = order.get("items", [])
        categories = {i.get("category") for i in items}
        late = [("review_request", True), ("post_delivery_care", bool(categories & CARE_CATEGORIES)),
                ("replenishment_reminder", bool(categories & CONSUMABLE_CATEGORIES))]
        for kind, applies in late:
            if applies and kind in on:
                yield Due(kind, "", plus(delivered, minutes=rules.kinds[kind].delay_minutes),
                          ("order.created",), facts={"categories": sorted(c for c in categories if c)})


def _parcel_calls(p: Shipment, on: frozenset[str], rules: Rules, number: int, count: int,
                  all_delivered: bool) -> Iterator[Due]:
    sid, policy = p.shipment_id, rules.policy
    cause = (f"tracking.updated:{sid}", f"order.shipped:{sid}")
    times: dict[str | None, list[str]] = {}  # milestone -> when, in one pass over the scans
    for c in p.checkpoints:
        times.setdefault(c[1], []).append(c[0])
    delivered = times.get("DELIVERED", [None])[0]  # p.delivered_at, from the same pass
    facts = {"parcel_number": number, "parcel_count": count}

    def due(kind: str, occasion: str, at: str, send: bool = True, **extra: Any) -> Due | None:
        if kind not in on:
            return None
        delay = rules.kinds[kind].delay_minutes
        return Due(kind, f"{sid}{occasion}", plus(at, minutes=delay) if delay else at, cause, p,
                   send, {**facts, **extra})

    found: list[Due | None] = []
    first_scan = p.first_scan_at
    if first_scan or p.label_at:
        grace = plus(p.label_at, hours=policy.label_grace_hours) if p.label_at else first_scan
        at = min(t for t in (first_scan, grace) if t)
        # Never on a label alone and never after delivery: a parcel whose first news is
        # its delivery only gets `delivered`.
        found.append(due("shipped", "", at, send=not delivered))
    if delivered:
        found.append(due("delivered", "", delivered, all_delivered=all_delivered))
    arrived = times.get("ARRIVED_AT_DESTINATION")
    if arrived:
        not_yet = not delivered and p.milestone == "ARRIVED_AT_DESTINATION"
        found.append(due("in_transit_update", "", arrived[0], send=not_yet))
    customs = times.get("CUSTOMS", []) + [c[0] for c in p.checkpoints
                                          if c[1] == "EXCEPTION" and c[2] == "customs"]
    if customs:
        found.append(due("customs_hold", "", min(customs), send=not delivered))
    failures = times.get("DELIVERY_FAILED", [])
    for attempt, at in enumerate(failures[: policy.failed_attempts_notified], 1):
        found.append(due("delivery_failed", f"#{attempt}", at, send=not delivered,
                         attempt=attempt))
    pickup = times.get("AVAILABLE_FOR_PICKUP", [])
    for round_, at in enumerate(times.get("OUT_FOR_DELIVERY", []), 1):
        superseded = delivered or any(f > at for f in failures) or any(a > at for a in pickup)
        found.append(due("out_for_delivery", f"#{round_}", at, send=not superseded))
    if pickup:
        found.append(due("available_for_pickup", "", pickup[0], send=not delivered))
    reason = p.open_exception
    if reason and reason != "customs" and p.latest:
        found.append(due("delivery_exception", f":{reason}", p.latest[0], reason=reason))
    yield from (c for c in found if c is not None)
