"""The watch on parcels in motion: has one stalled, will it be late, does it arrive tomorrow?

Answers in :class:`~worker.domain.due.Due` calls like the order's other rules, from the
parcel's scans and its lanes' figures (:mod:`worker.domain.lanes`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from worker.domain.clock import stamp
from worker.domain.due import Due, plus, seconds_between
from worker.domain.lanes import (
    MOVING, Figures, add_working, in_incident, long_silence, predict, stall_after, starting_point,
    usual_gap, working_seconds,
)
from worker.domain.rules import Rules
from worker.domain.shipment import Shipment

if TYPE_CHECKING:
    from worker.domain.order import OrderState

DAY = 86400
# What this watch decides rests on the lanes' figures, which every order partition learns
# from all of them: when another partition's lesson arrives is a race, not a fact.
KINDS = frozenset({"tracking_stalled", "delay_notice", "arriving_soon"})


def watch_calls(state: OrderState, p: Shipment, on: frozenset[str], rules: Rules,
                 lanes: list[Figures]) -> Iterator[Due]:
    """A parcel on its way: has it stalled, will it be late, does it arrive tomorrow?"""
    sid, pred = p.shipment_id, rules.prediction
    cause = (f"tracking.updated:{sid}", f"order.shipped:{sid}")
    scans = [c for c in p.scans if c[1] in MOVING]
    days_off = pred.non_working_days.get(p.carrier, ())
    stall: str | None = None  # when the current silence becomes a stall
    if scans and p.milestone in MOVING:
        last, leg = p.scans[-1][0], p.scans[-1][1]
        leg = leg if leg in MOVING else p.milestone  # silences are learned per leg
        after = stall_after(leg, lanes, pred)
        stall = add_working(last, after, days_off)
    if "tracking_stalled" in on:
        if not p.scans and p.label_at:
            yield Due("tracking_stalled", f"{sid}:label", plus(p.label_at, hours=pred.label_stall_hours),
                      cause, p, facts={"stage": "before_first_scan", "silent_since": p.label_at})
        elif stall and state.stalls.get(sid, 0) < pred.stalls_per_shipment:
            # In a lane incident the lane's alert and one cohort delay notice speak for
            # every parcel: no storm of stall messages and alerts, one per parcel.
            yield Due("tracking_stalled", f"{sid}:{last}", stall, cause, p,
                      send=not in_incident(lanes, stall, pred),
                      facts={"stage": leg, "silent_since": last,
                             "threshold_hours": round(after / 3600, 1)})
    order = state.order or {}
    promise = order.get("promised_delivery_by") or p.first_eta
    start = starting_point(p)
    if start is None:
        return
    milestone, reached = start
    # The median, and for a delay notice the optimistic end too, from one ranking of the lane.
    quantiles = (0.5, pred.delay_confidence) if promise and "delay_notice" in on else (0.5,)
    expected, *optimistic = predict(milestone, reached, lanes, pred, p.carrier_eta, quantiles, days_off)
    if expected is None:
        return
    if optimistic:
        sure = optimistic[0]
        notice = _delay_notice(state, p, stamp(promise), reached, expected, sure or expected, rules)
        if notice is None and stall:
            # A stall: the lane's past stalls in this leg say how long it will last.
            usual = usual_gap(leg, lanes, pred)
            likely = long_silence(leg, lanes, pred, after, 0.5)
            surely = long_silence(leg, lanes, pred, after, pred.delay_confidence)
            if likely is not None and surely is not None:
                notice = _delay_notice(state, p, stamp(promise), stall,
                                       add_working(expected, likely - usual, days_off),
                                       add_working(sure or expected, surely - usual, days_off), rules,
                                       cohort=in_incident(lanes, stall, pred))
        if notice is None and stall:
            # An unusual silence: everything ahead slides by the silence beyond the usual gap.
            unusual = add_working(last, stall_after(leg, lanes, pred, floor=False), days_off)
            late_from = add_working(last, usual_gap(leg, lanes, pred), days_off)
            # In the carrier's working time, as silences are learned: a weekend moves nothing.
            slack = working_seconds(sure or expected, plus(stamp(promise), hours=pred.delay_tolerance_hours),
                                    days_off)
            at = max(unusual, add_working(late_from, slack + 60, days_off))
            if in_incident(lanes, stall, pred) and not state.delays.get(sid):
                at = stall  # the lane is held up: its customers hear it now, once, as a cohort
            shift = working_seconds(late_from, at, days_off)
            notice = _delay_notice(state, p, stamp(promise), at, add_working(expected, shift, days_off),
                                   add_working(sure or expected, shift, days_off), rules,
                                   cohort=in_incident(lanes, at, pred))
        if notice is not None:
            yield notice
    if "arriving_soon" in on:
        zone = _zone(order["customer"].get("timezone", "UTC"))
        eve = datetime.fromisoformat(expected).astimezone(zone).date() - timedelta(days=1)
        at = stamp(datetime.combine(eve, time(10, 0), tzinfo=zone))
        if at >= reached:
            yield Due("arriving_soon", sid, at, cause, p, facts={"expected_delivery": expected})


def _delay_notice(state: OrderState, p: Shipment, promise: str, at: str, expected: str,
                  sure: str, rules: Rules, cohort: bool = False) -> Due | None:
    """`delay_notice` at ``at`` when even the optimistic prediction ``sure`` passes the
    promise by more than the tolerance, and the delay is worse than any told before.
    A ``cohort`` notice (the parcel's lane is in an incident) goes out whatever the
    prediction: the lane's figures do not know yet how long the hold-up lasts."""
    pred, order = rules.prediction, state.order or {}
    if not cohort and seconds_between(promise, sure) <= pred.delay_tolerance_hours * 3600:
        return None
    days = max(1, math.ceil(seconds_between(promise, expected) / DAY))
    if days <= state.delays.get(p.shipment_id, 0):
        return None
    if cohort:
        expected = max(expected, plus(promise, seconds=days * DAY))
    facts: dict[str, Any] = {"expected_delivery": expected, "promised": promise, "days_late": days,
                             "lane_incident": cohort}
    if pred.coupon and (order["customer"].get("segment") == "vip"
                        or rules.high_value.applies(order.get("total"))):
        facts["coupon"] = dict(pred.coupon)
    cause = (f"tracking.updated:{p.shipment_id}", f"order.shipped:{p.shipment_id}")
    return Due("delay_notice", f"{p.shipment_id}:{days}", at, cause, p, facts=facts)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):
        return ZoneInfo("UTC")
