"""What the tracking page shows of an order, and who may see it.

The page is opened either by a signed link from a notification (:mod:`worker.domain.links`)
or by the order number with the email address or the last four digits of the phone
number on the order. :func:`matches` compares in constant time and answers no for an
unknown order and a wrong pair alike, so neither can be told from the other.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from worker.domain.clock import stamp
from worker.domain.due import plus, seconds_between
from worker.domain.lanes import lane_keys, predict, starting_point
from worker.domain.milestones import RANK
from worker.domain.notification import notification_id
from worker.domain.order import EXPECTED_BY, LaneLookup, OrderState, no_lanes
from worker.domain.rules import Rules
from worker.domain.shipment import Shipment

# The progress bar: what a customer tells apart, each with the milestones it covers.
STEPS = (
    ("ordered", ()),
    ("shipped", ("LABEL_CREATED",)),
    ("in_transit", ("PICKED_UP", "IN_TRANSIT", "CUSTOMS", "ARRIVED_AT_DESTINATION")),
    ("out_for_delivery", ("OUT_FOR_DELIVERY", "AVAILABLE_FOR_PICKUP", "DELIVERY_FAILED")),
    ("delivered", ("DELIVERED",)),
)
WINDOW = (0.25, EXPECTED_BY)  # the predicted delivery window: the lane's middle half
# A parcel off the plain way to the door, by its latest scan: what the page says of it.
STATUSES = {"RETURNING": "returning", "RETURNED": "returned", "AVAILABLE_FOR_PICKUP": "pickup",
            "DELIVERY_FAILED": "failed"}
TOLD_AT_ONCE = frozenset({"lost", "damaged", "address"})  # exceptions the page names, late or not
GOING_BACK = frozenset({"returning", "returned"})
# Nothing to expect at the door: going back, waiting at a pickup point, or lost.
NO_DELIVERY = GOING_BACK | {"pickup", "lost"}


Credentials = tuple[str, str]  # what opens an order: its email, casefolded; its phone's last four digits


def credentials(state: OrderState | None) -> Credentials:
    """What opens the order; nothing opens an unknown one."""
    customer = _customer(state)
    return (str(customer.get("email") or "").strip().casefold(),
            "".join(ch for ch in str(customer.get("phone") or "") if ch.isdigit())[-4:])


def matches(known: Credentials, email: str = "", phone4: str = "") -> bool:
    """Does the pair match what opens an order? Compared in constant time, and the same work
    is done for an unknown order (no credentials), so the answer's timing tells nothing
    either."""
    known_email, known_phone4 = known
    email_ok = hmac.compare_digest(email.strip().casefold().encode(), known_email.encode())
    phone_ok = hmac.compare_digest(phone4.strip().encode(), known_phone4.encode())
    return (bool(email.strip()) and bool(known_email) and email_ok) or (
        len(phone4.strip()) == 4 and len(known_phone4) == 4 and phone_ok)


def order_locale(state: OrderState | None) -> str:
    """The language the order's customer reads (a BCP 47 tag), or "" when not known."""
    return str(_customer(state).get("locale", ""))


def customer_id(state: OrderState) -> str:
    return str(_customer(state).get("id", ""))


def _customer(state: OrderState | None) -> dict[str, Any]:
    return ((state.order or {}).get("customer") or {}) if state else {}


def view(state: OrderState, now: datetime, rules: Rules, lanes: LaneLookup = no_lanes) -> dict[str, Any]:
    """The page's facts: the shop, the order, and each parcel's progress, timeline and
    expected delivery. Times are UTC stamps; the page shows them in the customer's zone."""
    facts = outline(state)
    for parcel in facts["shipments"]:
        parcel.update(expected(parcel["arrival"], now, rules, lanes))
    return facts


def outline(state: OrderState) -> dict[str, Any]:
    """:func:`view` less what moves with the clock and the lanes: each parcel's expected
    delivery is left as its :class:`Arrival`, for :func:`expected`."""
    order = state.order or {}
    customer = order.get("customer") or {}
    parcels = sorted(state.parcels(), key=lambda p: (p.label_at or "", p.shipment_id))
    return {
        "order_id": state.order_id,
        "shop": (order.get("shop") or {}).get("name", ""),
        "support_url": (order.get("shop") or {}).get("support_url", ""),
        "locale": customer.get("locale", ""),
        "timezone": customer.get("timezone", "UTC"),
        "placed_at": order.get("placed_at"),
        "cancelled_at": state.cancelled_at,
        "preparing": _preparing(state),
        "items": [{"name": i.get("name", ""), "quantity": i.get("quantity", 1)}
                  for i in order.get("items", [])],
        "shipments": [_parcel_view(state, p, n) for n, p in enumerate(parcels, start=1)],
    }


def _preparing(state: OrderState) -> dict[str, Any] | None:
    """An order not shipped yet: paid when, to ship by when, and whether the customer was
    told it ships late. None once a parcel is on its way, or the order is cancelled."""
    if state.shipments or state.cancelled_at:
        return None
    ship_by = (state.order or {}).get("promised_ship_by")
    return {"paid_at": state.paid_at, "ship_by": stamp(ship_by) if ship_by else None,
            "late": notification_id(state.order_id, "ship_delayed") in state.decided}


def _parcel_view(state: OrderState, p: Shipment, number: int) -> dict[str, Any]:
    milestone, delivered_at = p.milestone, p.delivered_at  # each read once: both are derived
    step = _STEP_REACHED[RANK.get(milestone, 0) if p.label_at or p.checkpoints else -1]
    timeline = [{"at": c[0], "milestone": c[1], "detail": c[2], "place": c[3] if len(c) > 3 else ""}
                for c in reversed(p.checkpoints) if c[1]]
    if p.label_at and not p.times("LABEL_CREATED"):  # the shop's label: the journey's start
        timeline.append({"at": p.label_at, "milestone": "LABEL_CREATED", "detail": None, "place": ""})
    status = None if delivered_at else _status(p.latest)
    return {
        "number": number,
        "shipment_id": p.shipment_id,
        "carrier": p.carrier,
        "tracking_number": p.tracking_number,
        # The heading: a parcel going back says so, though its progress stays where it got to.
        "milestone": status["milestone"] if status and status["kind"] in GOING_BACK else milestone,
        "status": status,
        "step": STEPS[step][0],
        "steps": [{"name": name, "done": i <= step, "current": i == step}
                  for i, (name, _) in enumerate(STEPS)],
        "timeline": timeline,
        "delivered_at": delivered_at,
        "exception": p.open_exception,
        "arrival": arrival(state, p, delivered_at, no_delivery=bool(status and status["kind"] in NO_DELIVERY)),
    }


def _status(latest: list[Any] | None) -> dict[str, str] | None:
    """Going back to the sender, waiting at a pickup point, a failed attempt, lost, damaged
    or a better address needed, from the parcel's latest scan, with when and where; None on
    the plain way to the door."""
    if latest is None:
        return None
    milestone, detail = latest[1], latest[2]
    kind = STATUSES.get(milestone) or (detail if milestone == "EXCEPTION" and detail in TOLD_AT_ONCE else None)
    if kind is None:
        return None
    return {"kind": kind, "milestone": milestone, "at": latest[0], "place": latest[3] if len(latest) > 3 else ""}


def _step(reached: int) -> int:
    """The progress bar's step for the furthest milestone reached (its rank; -1: none)."""
    return max((i for i, (_, covers) in enumerate(STEPS)
                if any(RANK[m] <= reached for m in covers)), default=0)


_STEP_REACHED = {reached: _step(reached) for reached in range(-1, max(RANK.values()) + 1)}


@dataclass(frozen=True, slots=True)
class Arrival:
    """What a parcel's expected delivery is worked out from, as the order's state has it.
    The window itself moves with the clock and with what the lanes learn: :func:`expected`."""

    settled: bool  # delivered, cancelled, going back, at a pickup point or lost: nothing to expect
    promise: str | None  # the shop's promise, else the carrier's first estimate
    carrier: str
    lanes: tuple[str, ...]
    start: tuple[str, str] | None  # the milestone the prediction starts from, and when
    carrier_eta: str | None
    told: int  # days late a delay notice said, 0 for none

    def as_list(self) -> list[Any]:
        """As JSON keeps it: :meth:`of` reads it back."""
        return [self.settled, self.promise, self.carrier, self.lanes, self.start, self.carrier_eta, self.told]

    @classmethod
    def of(cls, fields: list[Any]) -> Arrival:
        settled, promise, carrier, lanes, start, carrier_eta, told = fields
        return cls(settled, promise, carrier, tuple(lanes), tuple(start) if start else None, carrier_eta, told)


def arrival(state: OrderState, p: Shipment, delivered_at: str | None, no_delivery: bool = False) -> Arrival:
    return Arrival(
        settled=bool(delivered_at or state.cancelled_at or no_delivery),
        promise=(state.order or {}).get("promised_delivery_by") or p.first_eta,
        carrier=p.carrier,
        lanes=tuple(lane_keys(p.carrier, p.origin, p.destination)),
        start=starting_point(p),
        carrier_eta=p.carrier_eta,
        told=state.delays.get(p.shipment_id, 0),
    )


def expected(a: Arrival, now: datetime, rules: Rules, lanes: LaneLookup) -> dict[str, Any]:
    """The predicted delivery window, and how late that is against the promise."""
    if a.settled:
        return {"window": None, "days_late": 0}
    window, moment = None, stamp(now)
    if a.start:
        days_off = rules.prediction.non_working_days.get(a.carrier, ())
        ends = predict(*a.start, lanes(a.lanes), rules.prediction, a.carrier_eta, WINDOW, days_off)
        if None not in ends:
            early, late = sorted(e for e in ends if e)
            window = [max(early, moment), max(late, moment)]
    promise = stamp(a.promise) if a.promise else None
    if window is None and a.start and a.start[0] == "OUT_FOR_DELIVERY":
        # Nothing learned yet about the lane, but the parcel is on its way to the door: today,
        # as its out-for-delivery message said, not the promise days ahead.
        window = [moment] * 2
    if window is None and promise:
        # Nothing learned yet about the lane: the shop's promise; once that has passed, never
        # a date gone by: from now, and how late that is, as a prediction would say.
        window = [max(promise, moment)] * 2
    told = a.told
    if window and promise and not told:
        lateness = seconds_between(promise, window[0])
        told = int(lateness // 86400) + 1 if lateness > rules.prediction.delay_tolerance_hours * 3600 else 0
    if window and told and promise:
        # The page never promises sooner than the delay notice did.
        floor = plus(promise, seconds=told * 86400)
        window = [max(window[0], floor), max(window[1], floor)]
    return {"window": window, "days_late": told, "promised": promise}
