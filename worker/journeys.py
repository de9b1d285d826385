"""Parcel journeys on realistic lanes, and the truth about each one, for evaluation.

Each lane has legs with log-normal durations and a scan rhythm; carriers rest on their
days off (no scans, no movement). On top: injected stalls (a long silence in a moving
leg), lost parcels (silence for good), and lane incidents (every parcel moving on one
lane during a window waits two more days). :class:`Truth` records what really happened,
so predictions and stall alerts can be scored against it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

# milestone (or UNKNOWN), occurred_at, reason, the carrier's estimated delivery then (or None)
Scan = tuple[str, datetime, str | None, datetime | None]


@dataclass(frozen=True, slots=True)
class Leg:
    milestone: str
    median_hours: float  # how long the parcel stays in this leg
    spread: float = 0.35  # log-normal sigma
    scan_every_hours: float = 0  # repeat scans while in the leg (0: one scan)


@dataclass(frozen=True, slots=True)
class LaneModel:
    carrier: str
    origin: dict[str, str]
    destination: dict[str, str]
    legs: tuple[Leg, ...]
    days_off: tuple[int, ...] = ()  # weekdays without scans (Monday = 0)
    gives_eta: bool = False  # the carrier's scans carry its estimated delivery

    @property
    def key(self) -> str:
        o, d = self.origin, self.destination
        return f"{self.carrier}|{o['country']}-{o['region']}|{d['country']}-{d['region']}"

    @property
    def typical_hours(self) -> float:
        return sum(leg.median_hours for leg in self.legs)


# Carriers whose tracking gives an estimated delivery date that they move when a parcel
# misses a connection (as UPS, DHL, SF Express and JD do; ZTO and Chunghwa Post do not).
GIVE_ETA = ("ups", "dhl", "sf-express", "jd")


def _lane(carrier: str, origin: str, destination: str, *legs: Leg, days_off: tuple[int, ...] = ()) -> LaneModel:
    (oc, orr), (dc, dr) = origin.split("-"), destination.split("-")
    return LaneModel(carrier, {"country": oc, "region": orr}, {"country": dc, "region": dr}, legs,
                     days_off, carrier in GIVE_ETA)


LANES: dict[str, tuple[LaneModel, ...]] = {
    "CNY": (
        _lane("sf-express", "CN-ZJ", "CN-SH", Leg("PICKED_UP", 3), Leg("IN_TRANSIT", 14, 0.3, 5),
              Leg("ARRIVED_AT_DESTINATION", 6), Leg("OUT_FOR_DELIVERY", 3, 0.3)),
        _lane("zto", "CN-GD", "CN-BJ", Leg("PICKED_UP", 5), Leg("IN_TRANSIT", 40, 0.35, 8),
              Leg("ARRIVED_AT_DESTINATION", 10), Leg("OUT_FOR_DELIVERY", 4, 0.3)),
        _lane("jd", "CN-JS", "CN-SC", Leg("PICKED_UP", 2), Leg("IN_TRANSIT", 30, 0.3, 6),
              Leg("ARRIVED_AT_DESTINATION", 8), Leg("OUT_FOR_DELIVERY", 3, 0.3)),
    ),
    "TWD": (
        _lane("chunghwa-post", "TW-TPE", "TW-KHH", Leg("PICKED_UP", 6), Leg("IN_TRANSIT", 20, 0.3, 8),
              Leg("ARRIVED_AT_DESTINATION", 8), Leg("OUT_FOR_DELIVERY", 4, 0.3), days_off=(6,)),
    ),
    "USD": (
        _lane("ups", "US-CA", "US-NY", Leg("PICKED_UP", 4), Leg("IN_TRANSIT", 60, 0.3, 10),
              Leg("ARRIVED_AT_DESTINATION", 10), Leg("OUT_FOR_DELIVERY", 5, 0.3), days_off=(5, 6)),
        _lane("dhl", "CN-GD", "US-CA", Leg("PICKED_UP", 6), Leg("IN_TRANSIT", 30, 0.3, 10),
              Leg("CUSTOMS", 20, 0.4), Leg("IN_TRANSIT", 24, 0.3, 10),
              Leg("ARRIVED_AT_DESTINATION", 8), Leg("OUT_FOR_DELIVERY", 4, 0.3), days_off=(6,)),
    ),
    "GBP": (
        _lane("dhl", "GB-LND", "GB-MAN", Leg("PICKED_UP", 4), Leg("IN_TRANSIT", 18, 0.3, 6),
              Leg("ARRIVED_AT_DESTINATION", 6), Leg("OUT_FOR_DELIVERY", 3, 0.3), days_off=(6,)),
    ),
}


@dataclass(frozen=True, slots=True)
class Incident:
    lane: str
    start: datetime
    end: datetime
    extra_hours: float = 48


@dataclass(slots=True)
class Truth:
    """What really happened to one parcel."""

    shipment_id: str
    order_id: str
    lane: str
    promised: str
    delivered_at: str | None = None
    stalls: list[list[str]] = field(default_factory=list)  # [silence from, to] injected
    lost: bool = False
    incident: bool = False
    ring: bool = False  # one of many customers' orders to one doorstep
    shipped_late: bool = False  # the shop handed it over after its promised ship date
    failed_attempt: bool = False

    @property
    def cause(self) -> str:
        """What made it late, the first that applies."""
        for cause, applies in (("lost", self.lost), ("lane incident", self.incident),
                               ("stall", bool(self.stalls)), ("late handover", self.shipped_late),
                               ("failed attempt", self.failed_attempt)):
            if applies:
                return cause
        return "slow journey"

    @property
    def late(self) -> bool:
        """Delivered (or never) more than 12 hours after the promise."""
        limit = datetime.fromisoformat(self.promised) + timedelta(hours=12)
        return self.delivered_at is None or datetime.fromisoformat(self.delivered_at) > limit


def journey(rng: random.Random, lane: LaneModel, label_at: datetime, truth: Truth,
            incidents: tuple[Incident, ...] = (), stall_rate: float = 0.04,
            lost_rate: float = 0.005) -> list[Scan]:
    """One parcel's checkpoints in physical order, from the label on."""
    scans: list[Scan] = []
    # Its own generator: the carrier's estimates leave every other draw as it was.
    estimates = random.Random(f"{truth.shipment_id}:eta")
    at = label_at
    stall_leg = rng.randrange(1, len(lane.legs)) if rng.random() < stall_rate else -1
    lost_leg = rng.randrange(1, len(lane.legs)) if rng.random() < lost_rate else -1
    for index, leg in enumerate(lane.legs):
        at = _working(at, lane.days_off)
        leg_scans = len(scans)
        if leg.milestone == "ARRIVED_AT_DESTINATION" and rng.random() < 0.02:
            scans.append(("EXCEPTION", at, rng.choice(["weather", "address", "damaged"]), None))
            at = _advance(at, timedelta(hours=rng.uniform(6, 20)), lane.days_off)
        scans.append((leg.milestone, at, None, None))
        if leg.milestone == "IN_TRANSIT" and rng.random() < 0.01:
            scans.append(("UNKNOWN", _working(at + timedelta(minutes=30), lane.days_off), None, None))
        stay = timedelta(hours=leg.median_hours * rng.lognormvariate(0, leg.spread))
        eta = _carrier_estimate(estimates, lane, index, at, stay)
        scans[leg_scans:] = [(m, t, r, eta) for m, t, r, _ in scans[leg_scans:]]
        if index == lost_leg:
            truth.lost = True
            truth.stalls.append([_stamp(at), ""])
            return scans
        leave = _advance(at, stay, lane.days_off)
        if index == stall_leg:
            silence = timedelta(hours=rng.uniform(40, 120))
            truth.stalls.append([_stamp(at), _stamp(at + silence)])
            leave = _advance(at, silence + stay, lane.days_off)
        held_up = False
        for incident in incidents:
            if incident.lane == lane.key and incident.start <= at < incident.end and leg.scan_every_hours:
                truth.incident = held_up = True
                truth.stalls.append([_stamp(at), _stamp(at + timedelta(hours=incident.extra_hours))])
                leave = _advance(leave, timedelta(hours=incident.extra_hours), lane.days_off)
        if leg.scan_every_hours and index != stall_leg and not held_up:
            step = timedelta(hours=leg.scan_every_hours)
            repeat = _working(at + step * rng.uniform(0.7, 1.3), lane.days_off)
            while repeat < leave:
                scans.append((leg.milestone, repeat, None, eta))
                repeat = _working(repeat + step * rng.uniform(0.7, 1.3), lane.days_off)
        at = leave
    if rng.random() < 0.06:  # a failed attempt, then out again the next day
        truth.failed_attempt = True
        failed_at = at
        at = _working(at + timedelta(hours=rng.uniform(18, 26)), lane.days_off)
        again = _advance(at, timedelta(hours=rng.uniform(0.5, 3)), lane.days_off)
        scans.append(("DELIVERY_FAILED", failed_at, None, again if lane.gives_eta else None))
        scans.append(("OUT_FOR_DELIVERY", at, None, again if lane.gives_eta else None))
        at = again
    scans.append(("DELIVERED", at, None, None))
    truth.delivered_at = _stamp(at)
    return scans


def _carrier_estimate(rng: random.Random, lane: LaneModel, index: int, at: datetime,
                      stay: timedelta) -> datetime | None:
    """What the carrier tells of the delivery while the parcel is in leg ``index``: the end of
    this leg as its network plans it (well, not exactly), then the usual time of every leg
    after. It knows a missed connection; it cannot know a stall or a failed attempt ahead."""
    if not lane.gives_eta:
        return None
    planned = _advance(at, stay * rng.lognormvariate(0, 0.1), lane.days_off)
    ahead = sum(leg.median_hours for leg in lane.legs[index + 1:])
    return _advance(planned, timedelta(hours=ahead), lane.days_off)


def _advance(at: datetime, duration: timedelta, days_off: tuple[int, ...]) -> datetime:
    """``duration`` of working time after ``at``: nothing moves on a day off."""
    left = duration
    while left > timedelta(0):
        at = _working(at, days_off)
        midnight = datetime.combine(at.date() + timedelta(days=1), datetime.min.time(), at.tzinfo)
        step = min(left, midnight - at)
        at, left = at + step, left - step
    return _working(at, days_off)


def _working(at: datetime, days_off: tuple[int, ...]) -> datetime:
    while at.weekday() in days_off:
        at = datetime.combine(at.date() + timedelta(days=1), datetime.min.time(), at.tzinfo)
    return at


def _stamp(at: datetime) -> str:
    return at.replace(microsecond=0).isoformat()
