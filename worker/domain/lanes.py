"""Lanes: what delivered parcels teach about a route, and what that says of a parcel now.

A lane is carrier × origin region × destination region, with two broader fallbacks
(carrier × destination country, then the carrier alone) for lanes with few samples.
Every delivered parcel contributes its journey (:func:`journey`) to all three, in a
day bucket of log histograms; the figures of a lane (:func:`figures`) merge the buckets
of the window. The order stage asks :func:`stall_after` and :func:`predict` with the
figures of the parcel's lanes, most specific first.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.domain import histogram
from worker.domain.clock import stamp
from worker.domain.notification import Alert, notification_id
from worker.domain.rules import Prediction
from worker.domain.shipment import Shipment

INCIDENT_BASELINE_DAYS = 7  # days of a lane's history before it can have an incident
# Legs in which a parcel is moving and silence means something. A parcel waiting at a
# pickup point or after a failed attempt waits for its customer, not its carrier.
MOVING = ("PICKED_UP", "IN_TRANSIT", "CUSTOMS", "ARRIVED_AT_DESTINATION", "OUT_FOR_DELIVERY")
# The time left is learned from the label too: a parcel handed over late is late from then.
LABEL = "LABEL_CREATED"
Figures = Mapping[str, Any]  # {"gaps": {leg: histogram}, "remaining": {milestone: histogram}}
PARTS = ("gaps", "remaining")


@dataclass(frozen=True, slots=True)
class Lesson:
    """One delivered parcel's journey, for each of its lanes' day bucket."""

    lanes: list[str]
    day: str  # the delivery's UTC date
    journey: dict[str, dict[str, list[float]]]
    parcel: str  # "<order id>:<shipment id>", for logs
    stalled_at: str | None = None  # not a delivery: a stall, for the lane's incident watch


def lesson(order_id: str, parcel: Shipment, days_off: Sequence[int] = ()) -> Lesson:
    delivered = parcel.delivered_at or ""
    return Lesson(lane_keys(parcel.carrier, parcel.origin, parcel.destination), delivered[:10],
                  journey(parcel, days_off), f"{order_id}:{parcel.shipment_id}")


def stalled(order_id: str, parcel: Shipment, at: str) -> Lesson:
    """A stall, told to the parcel's own lane only: incidents are a lane's, not a carrier's."""
    return Lesson(lane_keys(parcel.carrier, parcel.origin, parcel.destination)[:1], at[:10], {},
                  f"{order_id}:{parcel.shipment_id}", stalled_at=at)


def incident(days: Sequence[Mapping[str, Any]], now: str, rules: Prediction) -> dict[str, Any] | None:
    """Is the lane in an incident at ``now``: its stalls of the last 24 h far above its own
    baseline (its stalls per day over the rest of the window)?"""
    if len(days) < INCIDENT_BASELINE_DAYS:
        return None  # no baseline yet to be far above
    since = stamp(datetime.fromisoformat(now) - timedelta(hours=24))
    recent: list[str] = []
    before = 0  # stalls up to ``since``: the baseline's
    for day in days:
        # A day at a time: most of the window lies wholly before the last 24 h and is only
        # counted (a busy lane has thousands of stalls in it, and each new one asks again).
        stalls = day.get("stalls")
        if not stalls:
            continue
        if max(stalls) <= since:
            before += len(stalls)
        elif min(stalls) > since:
            recent += [t for t in stalls if t <= now]
        else:
            before += sum(1 for t in stalls if t <= since)
            recent += [t for t in stalls if since < t <= now]
    recent.sort()
    baseline = before / (len(days) - 1)
    if len(recent) < max(rules.incident_min_stalls, rules.incident_factor * baseline):
        return None
    return {"since": recent[0], "last": now, "stalls_24h": len(recent),
            "baseline_24h": round(baseline, 2)}


def incident_alert(lane: str, found: Mapping[str, Any]) -> Alert:
    """The one alert of a lane incident."""
    return Alert(
        alert_id=notification_id(lane, "alert.lane_delay", found["since"]), type="alert.lane_delay",
        severity="critical", key=lane, lane=lane, raised_at=found["last"],
        summary=f"{found['stalls_24h']} parcels stalled on this lane in 24 h "
                f"(usually {found['baseline_24h']:g} a day): customers get delay notices, not stall messages",
        figures=dict(found))


def in_incident(lanes: Sequence[Figures], at: str, rules: Prediction) -> bool:
    """Whether the parcel's own lane was in an incident at ``at``: from its first stall
    until ``incident_hours`` after its latest."""
    found = lanes[0].get("incident") if lanes else None
    if not found:
        return False
    until = stamp(datetime.fromisoformat(found["last"]) + timedelta(hours=rules.incident_hours))
    return bool(found["since"] <= at <= until)


def lane_keys(carrier: str, origin: Mapping[str, Any], destination: Mapping[str, Any]) -> list[str]:
    """The parcel's lanes, most specific first."""
    keys = []
    if origin.get("region") and destination.get("region"):
        keys.append(f"{carrier}|{origin.get('country', '')}-{origin['region']}"
                    f"|{destination.get('country', '')}-{destination['region']}")
    if destination.get("country"):
        keys.append(f"{carrier}|*|{destination['country']}")
    keys.append(carrier)
    return keys


def journey(parcel: Shipment, days_off: Sequence[int] = ()) -> dict[str, dict[str, list[float]]]:
    """What a delivered parcel teaches its lanes: the silences in each moving leg (seconds
    from a checkpoint to the next), and the time left to delivery from each milestone and
    from the label, all in the carrier's working time (its days off left out, so a weekend
    is neither a slow lane nor a usual silence)."""
    delivered = parcel.delivered_at
    main = [c for c in parcel.checkpoints if c[1] and c[1] not in ("EXCEPTION",)]
    gaps: dict[str, list[float]] = {}
    for (at, milestone, *_), (later, *_) in zip(main, main[1:]):
        if milestone in MOVING and (delivered is None or at < delivered):
            gaps.setdefault(milestone, []).append(working_seconds(at, later, days_off))
    remaining: dict[str, list[float]] = {}
    if delivered and parcel.label_at and parcel.label_at <= delivered:
        remaining[LABEL] = [working_seconds(parcel.label_at, delivered, days_off)]
    if delivered:
        for milestone in MOVING:
            reached = parcel.times(milestone)
            if reached and reached[0] <= delivered:
                remaining[milestone] = [working_seconds(reached[0], delivered, days_off)]
    return {"gaps": gaps, "remaining": remaining}


def delay_ratios(lanes: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Per carrier, the share of its parcels that stalled over the window, from its most
    specific lanes (those that count stalls)."""
    parcels: dict[str, int] = {}
    stalls: dict[str, int] = {}
    for key, lane in lanes.items():
        if key.count("|") == 2 and "|*|" not in key:
            carrier = key.split("|")[0]
            parcels[carrier] = parcels.get(carrier, 0) + lane.get("parcels", 0)
            stalls[carrier] = stalls.get(carrier, 0) + lane.get("stalls", 0)
    return {c: stalls[c] / parcels[c] for c in parcels if parcels[c]}


def learn(day: dict[str, Any], lesson: Mapping[str, Mapping[str, list[float]]]) -> None:
    """Add one parcel's journey to a lane's day bucket."""
    day["parcels"] = day.get("parcels", 0) + 1
    for part in PARTS:
        for name, samples in lesson.get(part, {}).items():
            bucket = day.setdefault(part, {}).setdefault(name, {})
            for seconds in samples:
                histogram.add(bucket, seconds)


def figures(days: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A lane's figures over a window: its day buckets merged, with how many parcels it
    delivered and how many stalled (what the lane's delay ratio is made of)."""
    window = Window()
    for day in days:
        window.add(day)
    return window.figures()


class Window:
    """A lane's day buckets merged, kept up to date a day at a time: a lesson changes one
    day, so the window takes that day's old bucket out and its new one in, instead of
    merging every day of the window again."""

    def __init__(self) -> None:
        self.parcels = self.stalls = 0
        self.merged: dict[str, dict[str, histogram.Histogram]] = {part: {} for part in PARTS}
        # part -> name -> the days that have it: a name stays while one does, even empty.
        self.holders: dict[str, dict[str, int]] = {part: {} for part in PARTS}

    def add(self, day: Mapping[str, Any], sign: int = 1) -> None:
        """Count a day's bucket in (``sign`` 1) or out (-1)."""
        self.parcels += sign * day.get("parcels", 0)
        self.stalls += sign * len(day.get("stalls", ()))
        for part in PARTS:
            merged, holders = self.merged[part], self.holders[part]
            for name, counts in day.get(part, {}).items():
                into = merged.setdefault(name, {})
                for key, count in counts.items():
                    if left := into.get(key, 0) + sign * count:
                        into[key] = left
                    else:  # counts are positive: no day has this bucket any more
                        del into[key]
                if held := holders.get(name, 0) + sign:
                    holders[name] = held
                else:
                    del holders[name], merged[name]

    def remove(self, day: Mapping[str, Any]) -> None:
        self.add(day, -1)

    def figures(self) -> dict[str, Any]:
        """A copy: the figures handed out must not change when the window learns more."""
        return {"parcels": self.parcels, "stalls": self.stalls,
                **{part: {name: dict(counts) for name, counts in merged.items()}
                   for part, merged in self.merged.items()}}


def stall_after(leg: str, lanes: Sequence[Figures], rules: Prediction, floor: bool = True) -> float:
    """Seconds of silence after which a parcel in ``leg`` has stalled: the lane's high
    quantile of that leg's silences, never under the floor (unless ``floor`` is False:
    an unusual silence, for predictions); the default without samples."""
    for lane in lanes:
        gaps = lane.get("gaps", {}).get(leg, {})
        if histogram.total(gaps) >= rules.min_samples:
            learned = histogram.quantile(gaps, rules.stall_quantile) or 0.0
            return max(learned, rules.stall_floor_hours * 3600 if floor else 0.0)
    return rules.stall_default_hours * 3600


def long_silence(leg: str, lanes: Sequence[Figures], rules: Prediction, silent: float,
                 q: float) -> float | None:
    """How long (seconds, quantile ``q``) a silence in ``leg`` that has lasted ``silent``
    will last in all, from the lane's past silences at least that long; None when the lane
    has seen too few of them to say."""
    for lane in lanes:
        gaps = lane.get("gaps", {}).get(leg, {})
        if histogram.count_above(gaps, silent) >= rules.min_tail_samples:
            return histogram.quantile_above(gaps, silent, q)
    return None


@functools.lru_cache(maxsize=1 << 14)  # the watch asks the same of a parcel on every decision
def add_working(start: str, seconds: float, non_working: tuple[int, ...]) -> str:
    """``seconds`` of the carrier's working time after ``start``: its non-working weekdays
    (Monday = 0; whole days of ``start``'s offset, UTC for stamps) do not count, and the
    result never falls on one."""
    at = datetime.fromisoformat(start)
    left = timedelta(seconds=seconds)
    if not non_working or len(set(non_working)) >= 7:
        return stamp(at + left)
    # Day by day in whole microseconds of the start's own calendar: the same steps in
    # datetime arithmetic took three times as long a day.
    t, left_us = _local_us(at), left // _US
    while left_us > 0:
        day = t // _DAY_US
        midnight = (day + 1) * _DAY_US
        if (day + 3) % 7 in non_working:  # the weekday (1970-01-01 was a Thursday)
            t = midnight
            continue
        step = min(left_us, midnight - t)
        t, left_us = t + step, left_us - step
    while (t // _DAY_US + 3) % 7 in non_working:  # a deadline never falls on a day off
        t = (t // _DAY_US + 1) * _DAY_US
    # As a stamp: whole seconds, UTC.
    offset = at.utcoffset()
    utc_us = t - (offset // _US if offset else 0)
    return datetime.fromtimestamp(utc_us // 1_000_000, UTC).isoformat()


def working_seconds(start: str, end: str, non_working: Sequence[int]) -> float:
    """Seconds between two times, less the carrier's non-working days."""
    at, until = datetime.fromisoformat(start), datetime.fromisoformat(end)
    if not non_working:
        return max((until - at).total_seconds(), 0.0)
    t = _local_us(at)
    end_us = t + (until - at) // _US
    total = 0.0
    while t < end_us:
        day = t // _DAY_US
        step = min(end_us, (day + 1) * _DAY_US) - t
        if _weekday(day) not in non_working:
            total += step / 1_000_000  # a day at a time, as the figures were always summed
        t += step
    return total


_US = timedelta(microseconds=1)
_DAY_US = 86_400_000_000
_EPOCH = datetime(1970, 1, 1)


def _local_us(at: datetime) -> int:
    """Microseconds from 1970-01-01 to ``at`` on its own (local) calendar."""
    return (at.replace(tzinfo=None) - _EPOCH) // _US


def _weekday(day: int) -> int:
    """The weekday (Monday = 0) of the ``day``-th day after 1970-01-01, a Thursday."""
    return (day + 3) % 7


def starting_point(parcel: Shipment) -> tuple[str, str] | None:
    """Where a parcel's prediction starts: the milestone it is moving in and when it got
    there; before any scan, its label (handed over, not picked up yet). None otherwise."""
    if parcel.scans and parcel.milestone in MOVING:
        return parcel.milestone, parcel.times(parcel.milestone)[0]
    if not parcel.scans and parcel.label_at:
        return LABEL, parcel.label_at
    return None


def predict(milestone: str, reached: str, lanes: Sequence[Figures], rules: Prediction,
            carrier_eta: str | None, quantiles: tuple[float, ...],
            days_off: tuple[int, ...] = ()) -> list[str | None]:
    """When the parcel will be delivered, at each of ``quantiles`` (the lane found and
    ranked once): the time it reached ``milestone`` plus the lane's quantile of the time left
    from there; the carrier's latest estimate wins when later (the carrier knows of a missed
    connection), less a margin for an optimistic quantile. None where neither can say."""
    predicted: list[str | None] = [None] * len(quantiles)
    for lane in lanes:
        left = lane.get("remaining", {}).get(milestone, {})
        if histogram.total(left) >= rules.min_samples:
            predicted = [add_working(reached, seconds or 0.0, days_off)
                         for seconds in histogram.quantiles(left, quantiles)]
            break
    if carrier_eta:
        told = datetime.fromisoformat(carrier_eta)
        for i, quantile in enumerate(quantiles):
            # A carrier's date is its best guess, not a sure one.
            eta = stamp(told - timedelta(hours=rules.carrier_eta_margin_hours) if quantile < 0.5 else told)
            known = predicted[i]
            if known is None or eta > known:
                predicted[i] = eta
    return predicted


def usual_gap(leg: str, lanes: Sequence[Figures], rules: Prediction) -> float:
    """The lane's median silence in ``leg`` (seconds); 0 when unknown."""
    for lane in lanes:
        gaps = lane.get("gaps", {}).get(leg, {})
        if histogram.total(gaps) >= rules.min_samples:
            return histogram.quantile(gaps, 0.5) or 0.0
    return 0.0
