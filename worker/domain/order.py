"""Per-order state and the notifications it calls for.

Events only change the state (:func:`apply`); what to tell the customer is decided
from the state and the time (:func:`wake`, on what :mod:`worker.domain.calls` says the
facts call for), so checkpoints that arrive late, twice or
out of order between two decisions never change what is said. Each decision has a
deterministic id and is made once; :func:`wake` also says when to look again.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from worker.domain.calls import calls
from worker.domain.clock import arrival, stamp
from worker.domain.due import Due, plus
from worker.domain.lanes import Figures, Lesson, lane_keys, lesson, predict, stalled, starting_point
from worker.domain.plain import plain
from worker.domain.envelope import Envelope
from worker.domain.milestones import canonical
from worker.domain.notification import Alert, Intent, notification_id
from worker.domain.rules import Rules
from worker.domain.shipment import Shipment, known_late, last_delivery, told_eta

EXPECTED_BY = 0.75  # the quantile a "shipped" message gives as the date to expect a parcel by
SEEN_LIMIT = 16  # recent event digests, only to count redeliveries
RETURN_STEPS = {"order.return_requested": "requested", "order.return_received": "received",
                "order.refunded": "refunded"}
# The figures of the lanes named, most specific first; those without figures left out.
LaneLookup = Callable[[Sequence[str]], list[Figures]]


def no_lanes(keys: Sequence[str]) -> list[Figures]:
    return []


@dataclass(slots=True)
class OrderState:
    order_id: str
    order: dict[str, Any] | None = None  # the order.created data, kept for messages
    paid_at: str | None = None
    cancelled_at: str | None = None
    returns: dict[str, str] = field(default_factory=dict)  # step -> at
    shipments: dict[str, dict[str, Any]] = field(default_factory=dict)
    caused_by: dict[str, str] = field(default_factory=dict)  # trigger -> ce_id
    received_at: dict[str, str] = field(default_factory=dict)  # trigger -> wall arrival
    decided: list[str] = field(default_factory=list)  # notification and alert ids
    # The last decision time: decisions never go back in time, so a fact read after a
    # later decision (a late scan) is judged at that later time, never as of its own.
    woken_at: str | None = None
    stalls: dict[str, int] = field(default_factory=dict)  # shipment -> stalls told
    delays: dict[str, int] = field(default_factory=dict)  # shipment -> days late told
    seen: list[str] = field(default_factory=list)
    unknown_statuses: int = 0
    # Seconds between an order fact and the time it was known, where it was told late
    # ("paid", "cancelled", "return:<step>", "label:<shipment>"); scans keep their own.
    late: dict[str, int] = field(default_factory=dict)
    # When the order is next to be looked at (UTC stamp): an event makes it due from the
    # second it counts as known, each look says when next. Kept with the state, so the
    # worker's index of wake-ups is built again from the orders themselves.
    wake_at: str | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> OrderState:
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        return plain(self)

    def shipment(self, shipment_id: str) -> Shipment:
        return Shipment.from_dict(self.shipments[shipment_id])

    def parcels(self) -> list[Shipment]:
        return [Shipment.from_dict(s) for s in self.shipments.values()]

    @property
    def active_parcels(self) -> int:
        """Parcels on their way: labelled or scanned, not delivered, returned or cancelled."""
        if self.cancelled_at:
            return 0
        return sum(1 for p in self.parcels()
                   if not p.delivered_at and not any(c[1] == "RETURNED" for c in p.checkpoints))

    @property
    def delivered_at(self) -> str | None:
        """The order is delivered when its last parcel is."""
        return last_delivery(self.parcels())


@dataclass(frozen=True, slots=True)
class Applied:
    state: OrderState
    duplicate: bool = False
    unknown_status: str | None = None  # "source:code" of a checkpoint nobody could map


@dataclass(frozen=True, slots=True)
class Decisions:
    state: OrderState
    intents: list[Intent]
    alerts: list[Alert]
    # When to look again (UTC stamp): the next undecided notification coming due, the
    # next fact already known that has not happened yet, or the day to forget the order.
    next_wake: str | None = None
    lessons: list[Lesson] = field(default_factory=list)  # delivered parcels, for their lanes
    forget: bool = False  # nothing left to decide and kept long enough: delete the state


def apply(state: OrderState | None, event: Envelope, *, received_at: datetime,
          known_at: datetime | None = None) -> Applied:
    """Fold one order or tracking event into the order's state. ``known_at``: when it was
    known, on the clock decisions use (the event's own time unless said)."""
    state = state if state is not None else OrderState(str(event.data["order_id"]))
    digest = hashlib.blake2b(event.identity.encode(), digest_size=6).hexdigest()
    if digest in state.seen:
        return Applied(state, duplicate=True)
    state.seen = [*state.seen[-(SEEN_LIMIT - 1):], digest]
    known = known_at or event.time or received_at
    due = stamp(known_from(known))
    state.wake_at = min(state.wake_at or due, due)

    def told(fact: str, at: str) -> str:
        if late := _lateness(at, known):
            state.late[fact] = late
        else:
            state.late.pop(fact, None)
        return at

    data, kind = event.data, event.type
    trigger = kind
    if kind == "order.created":
        state.order = data
    elif kind == "order.paid":
        state.paid_at = told("paid", stamp(data["paid_at"]))
    elif kind == "order.cancelled":
        state.cancelled_at = told("cancelled", stamp(data["cancelled_at"]))
    elif kind in RETURN_STEPS:
        step = RETURN_STEPS[kind]
        if step not in state.returns:
            state.returns[step] = told(f"return:{step}", stamp(data["at"]))
    elif kind == "order.shipped":
        trigger = f"{kind}:{data['shipment_id']}"
        parcel = _parcel(state, data)
        parcel.label_at = told(f"label:{parcel.shipment_id}", stamp(data["shipped_at"]))
        parcel.origin, parcel.destination = data.get("origin", {}), data.get("destination", {})
        if estimate := data.get("carrier_estimated_delivery"):
            parcel.carrier_eta = parcel.label_eta = estimate
            parcel.first_eta = parcel.first_eta or estimate
        state.shipments[parcel.shipment_id] = parcel.to_dict()
    elif kind == "tracking.updated":
        trigger = f"{kind}:{data['shipment_id']}"
        reading = canonical(data["checkpoint"])
        parcel = _parcel(state, data)
        occurred = stamp(data["checkpoint"]["occurred_at"])
        estimate = stamp(data["estimated_delivery"]) if data.get("estimated_delivery") else None
        parcel.record(occurred, reading, _place(data["checkpoint"].get("location")),
                      late=_lateness(occurred, known), eta=estimate)
        if estimate and (parcel.eta_at is None or occurred >= parcel.eta_at):
            parcel.carrier_eta, parcel.eta_at = estimate, occurred
        state.shipments[parcel.shipment_id] = parcel.to_dict()
        if not reading.known:
            state.unknown_statuses += 1
            return Applied(state, unknown_status=reading.raw_code)
    state.caused_by[trigger] = event.id
    state.received_at[trigger] = arrival(received_at)
    return Applied(state)


def known_from(known_at: datetime) -> datetime:
    """The first whole second at which a fact told at ``known_at`` counts as known: when
    to decide on it."""
    whole = known_at.replace(microsecond=0)
    return whole if whole == known_at else whole + timedelta(seconds=1)


def _lateness(at: str, known: datetime) -> int:
    """Whole seconds, rounded up, from ``at`` until ``known``: a fact counts as known no
    earlier than it really was, so a decision never sees one its maker could not have read."""
    return max(0, math.ceil((known - datetime.fromisoformat(at)).total_seconds()))


def _place(location: Any) -> str:
    """Where a scan happened, as the tracking page shows it: the city, else the region."""
    if not isinstance(location, dict):
        return ""
    return str(location.get("city") or location.get("region") or location.get("country") or "")


def _parcel(state: OrderState, data: dict[str, Any]) -> Shipment:
    sid = str(data["shipment_id"])
    parcel = state.shipment(sid) if sid in state.shipments else Shipment(sid)
    parcel.carrier = data.get("carrier") or parcel.carrier
    parcel.tracking_number = data.get("tracking_number") or parcel.tracking_number
    return parcel


# -- decisions -------------------------------------------------------------------------------


def wake(state: OrderState, now: datetime, rules: Rules, lanes: LaneLookup = no_lanes) -> Decisions:
    """Everything due at ``now`` that was not decided before, judged on the facts known
    to have happened by ``now`` (a replay may have read later facts already)."""
    intents: list[Intent] = []
    alerts: list[Alert] = []
    lessons: list[Lesson] = []
    upcoming: list[str] = []
    when = max(stamp(now), state.woken_at or "")
    state.woken_at, moment = when, datetime.fromisoformat(when)
    view = as_of(state, when)
    for due in calls(view, rules, lanes):
        nid = notification_id(state.order_id, due.kind, due.occasion)
        if nid in state.decided:
            continue
        if due.at > when:
            upcoming.append(due.at)
            continue
        state.decided.append(nid)
        _count(state, due)
        if due.kind == "delivered" and due.shipment is not None:
            days_off = rules.prediction.non_working_days.get(due.shipment.carrier, ())
            lessons.append(lesson(state.order_id, due.shipment, days_off))
        if due.kind == "tracking_stalled" and due.shipment and "threshold_hours" in due.facts:
            lessons.append(stalled(state.order_id, due.shipment, due.at))
        if due.send and state.order is not None:
            intents.append(_intent(view, due, nid, moment, rules, lanes))
            alerts.extend(_alerts(view, due, moment, rules))
    state.decided.extend(a.alert_id for a in alerts)
    facts = _fact_times(state)
    upcoming += [t for t in facts if t > when]
    if not upcoming:
        placed = [stamp(state.order["placed_at"])] if state.order and state.order.get("placed_at") else []
        forget_at = plus(max([*facts, *placed], default=when), days=rules.policy.keep_days)
        if forget_at <= when:
            state.wake_at = None
            return Decisions(state, intents, alerts, None, lessons, forget=True)
        upcoming.append(forget_at)
    state.wake_at = min(upcoming)
    return Decisions(state, intents, alerts, state.wake_at, lessons)


def as_of(state: OrderState, when: str) -> OrderState:
    """The state as it stood at ``when``: facts that happened later, or were only known
    later, left out. A scan told hours late may be read before a decision due earlier (a
    restart, or the tracking topic read ahead of the orders topic): that decision must
    not see it, or it would differ from the one made in time."""
    def keep(fact: str, t: str | None) -> str | None:
        return t if t is not None and t <= when and _known(t, state.late.get(fact, 0)) <= when else None

    parcels = {}
    for sid, raw in state.shipments.items():
        p = Shipment.from_dict(raw)
        told = bool(p.label_at or p.checkpoints)
        p.label_at = keep(f"label:{sid}", p.label_at)
        p.checkpoints = [c for c in p.checkpoints if c[0] <= when and _known(c[0], known_late(c)) <= when]
        # A parcel is there from its label or its first scan, whichever came first. Both
        # may be known early, and a scan before its label: the two topics are read apart.
        if told and not (p.label_at or p.checkpoints):
            continue
        # The carrier's estimate as the latest scan known by then told it, else its label.
        estimates = [c for c in p.checkpoints if told_eta(c)]
        p.carrier_eta, p.eta_at = (told_eta(estimates[-1]), estimates[-1][0]) if estimates else (
            p.label_eta if p.label_at else None, None)
        p.first_eta = p.first_eta if p.label_at else None
        parcels[sid] = p.to_dict()
    return OrderState(
        order_id=state.order_id, order=state.order, paid_at=keep("paid", state.paid_at),
        cancelled_at=keep("cancelled", state.cancelled_at),
        returns={k: v for k, v in state.returns.items() if keep(f"return:{k}", v)},
        shipments=parcels, caused_by=state.caused_by, received_at=state.received_at,
        decided=state.decided, stalls=state.stalls, delays=state.delays,
    )


def _known(at: str, late: int) -> str:
    return plus(at, seconds=late) if late else at


def _fact_times(state: OrderState) -> list[str]:
    """When each fact is, or becomes, known to have happened."""
    facts = [("paid", state.paid_at), ("cancelled", state.cancelled_at),
             *((f"return:{k}", v) for k, v in state.returns.items())]
    times = [_known(t, state.late.get(fact, 0)) for fact, t in facts if t]
    for sid, raw in state.shipments.items():
        if raw.get("label_at"):
            times.append(_known(raw["label_at"], state.late.get(f"label:{sid}", 0)))
        times += [_known(c[0], known_late(c)) for c in raw["checkpoints"]]
    return times


def _count(state: OrderState, due: Due) -> None:
    """Remember how many stalls, and how late a delay, a parcel's customer was told of."""
    sid = due.shipment.shipment_id if due.shipment else ""
    if due.kind == "tracking_stalled" and due.facts.get("stage") != "before_first_scan":
        state.stalls[sid] = state.stalls.get(sid, 0) + 1
    if due.kind == "delay_notice":
        state.delays[sid] = max(state.delays.get(sid, 0), due.facts["days_late"])


def _intent(state: OrderState, due: Due, nid: str, now: datetime, rules: Rules,
            lanes: LaneLookup = no_lanes) -> Intent:
    order = state.order or {}
    rule = rules.kinds[due.kind]
    fanout = rules.high_value.channels if (
        due.kind in rules.high_value.kinds and rules.high_value.applies(order.get("total"))) else 1
    caused = [state.caused_by[c] for c in due.causes if c in state.caused_by]
    arrivals = [state.received_at[c] for c in due.causes if c in state.received_at]
    facts = {
        "shop": order["shop"], "customer": order["customer"], "items": order.get("items", []),
        "total": order.get("total"), "placed_at": order.get("placed_at"),
        "promised_delivery_by": order.get("promised_delivery_by"),
        "promised_ship_by": order.get("promised_ship_by"), **due.facts,
    }
    if due.shipment is not None:
        p = due.shipment
        facts["shipment"] = {"carrier": p.carrier, "tracking_number": p.tracking_number,
                             "milestone": p.milestone, "carrier_eta": p.carrier_eta}
        if due.kind == "shipped":
            # Which carrier, which number, and when it will arrive: the message that matters most.
            facts["expected_delivery"] = p.carrier_eta or _expected_by(
                p, order.get("promised_delivery_by"), now, rules, lanes)
    return Intent(
        notification_id=nid,
        kind=due.kind,
        priority=rule.priority,
        order_id=state.order_id,
        customer_id=order["customer"]["id"],
        created_at=stamp(now),
        caused_by=caused or list(state.caused_by.values())[:1],
        received_at=max(arrivals, default=stamp(now)),
        facts=facts,
        shipment_id=due.shipment.shipment_id if due.shipment else None,
        expires_at=stamp(now + timedelta(hours=rule.expires_after_hours)),
        channels=list(rule.channels),
        fanout=fanout,
        segment=order["customer"].get("segment"),
    )


def _expected_by(p: Shipment, promise: str | None, now: datetime, rules: Rules, lanes: LaneLookup) -> str | None:
    """When a parcel just handed over should have arrived by: the late end of the window the
    tracking page shows (its lanes' third quartile), else the shop's promise while ahead."""
    moment, start = stamp(now), starting_point(p)
    if start is not None:
        days_off = rules.prediction.non_working_days.get(p.carrier, ())
        [late] = predict(*start, lanes(lane_keys(p.carrier, p.origin, p.destination)), rules.prediction,
                         None, (EXPECTED_BY,), days_off)
        if late is not None:
            return max(late, moment)
    return stamp(promise) if promise and stamp(promise) > moment else None


def _alerts(state: OrderState, due: Due, now: datetime, rules: Rules) -> list[Alert]:
    order = state.order or {}
    if due.kind == "ship_delayed":
        return [Alert(
            alert_id=notification_id(state.order_id, "alert.ship_sla_breached", ""),
            type="alert.ship_sla_breached", severity="warning", key=state.order_id,
            summary="order paid but not shipped by its promised date", raised_at=stamp(now),
            order_id=state.order_id,
            figures={"paid_at": state.paid_at, "ship_by": due.facts["missed_ship_by"]})]
    if due.kind == "tracking_stalled":
        p = due.shipment
        label = due.facts["stage"] == "before_first_scan"
        return [Alert(
            alert_id=notification_id(state.order_id, "alert.tracking_stalled", due.occasion),
            type="alert.tracking_stalled", severity="warning", key=state.order_id,
            summary=("label printed but the carrier never picked the parcel up" if label
                     else "parcel in transit with no scan for longer than its lane allows"),
            raised_at=stamp(now), order_id=state.order_id,
            shipment_id=p.shipment_id if p else None,
            figures={"carrier": p.carrier if p else None, **due.facts,
                     "lanes": lane_keys(p.carrier, p.origin, p.destination) if p else []})]
    if due.kind == "delivery_exception" and rules.high_value.applies(order.get("total")):
        p = due.shipment
        return [Alert(
            alert_id=notification_id(state.order_id, "alert.high_value_exception", due.occasion),
            type="alert.high_value_exception", severity="critical", key=state.order_id,
            summary="delivery exception on a high-value order", raised_at=stamp(now),
            order_id=state.order_id, shipment_id=p.shipment_id if p else None,
            figures={"carrier": p.carrier if p else None, "reason": due.facts.get("reason"),
                     "total": order.get("total")})]
    return []
