"""Score stall detection and delay prediction against the simulator's ground truth.

``notifier simulate --evaluate`` generates a stream with :mod:`worker.journeys` (stalls,
lost parcels, one lane incident), runs it through the pure decision code
(:mod:`worker.replay`), and compares what was decided with what really happened.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from worker import journeys, simulate
from worker.figures import write_block
from worker.replay import Outcome, Replay
from worker.settings import Settings
from worker.stream import load_rules

INCIDENT_LANE = "zto|CN-GD|CN-BJ"
RING_ORDERS = 6


@dataclass(frozen=True, slots=True)
class Scores:
    shipments: int
    late: int
    warned: int
    precision: float
    recall: float
    median_lead_hours: float | None
    leads_by_cause: dict[str, tuple[int, int, float | None]]  # cause -> late, warned, median lead
    leads_by_eta: dict[str, tuple[int, int, float | None]]  # carriers with or without ETAs
    stalls: int
    stalls_caught: int
    false_stall_share: float
    incident_parcels: int
    incident_alerts: int  # alert.lane_delay on the incident's lane
    other_lane_alerts: int  # alert.lane_delay anywhere else: false incidents
    incident_stall_alerts: int  # single stall alerts on the incident's lane after its alert
    cohort_notices: int  # delay notices sent as the incident's cohort
    ring_orders: int  # orders of the injected ring (different customers, one doorstep)
    ring_alerts: int  # alert.suspicious_orders naming ring orders
    other_risk_alerts: int  # alert.suspicious_orders about anything else: false alarms

    @property
    def stall_catch_rate(self) -> float:
        return self.stalls_caught / self.stalls if self.stalls else 1.0

    def lines(self) -> list[str]:
        lead = "n/a" if self.median_lead_hours is None else f"{self.median_lead_hours:.1f} h"
        return [
            f"shipments scored: {self.shipments} (late: {self.late}; warned: {self.warned})",
            f"delay prediction: precision {self.precision:.3f}, recall {self.recall:.3f}, "
            f"median warning {lead} before the promise passed",
            "warning by cause of lateness: " + "; ".join(
                f"{cause} {late} late, {warned} warned, median "
                + ("n/a" if lead is None else f"{lead:.1f} h") + " before"
                for cause, (late, warned, lead) in self.leads_by_cause.items()),
            "warning by carrier: " + "; ".join(
                f"{group} {late} late, {warned} warned, median "
                + ("n/a" if lead is None else f"{lead:.1f} h") + " before"
                for group, (late, warned, lead) in self.leads_by_eta.items()),
            f"stalls: {self.stalls_caught} of {self.stalls} injected caught "
            f"({self.stall_catch_rate:.1%}); false stalls on {self.false_stall_share:.2%} of "
            f"parcels without one",
            f"lane incident ({INCIDENT_LANE}): {self.incident_parcels} parcels held up, "
            f"{self.incident_alerts} alert.lane_delay, {self.cohort_notices} cohort delay notices, "
            f"{self.incident_stall_alerts} single stall alerts on the lane after its alert; "
            f"{self.other_lane_alerts} alert.lane_delay elsewhere",
            f"suspicious orders: a ring of {self.ring_orders} orders to one address raised "
            f"{self.ring_alerts} alert.suspicious_orders; {self.other_risk_alerts} elsewhere",
        ]


def run(settings: Settings, *, orders: int, days: float, seed: int, start: datetime) -> Scores:
    truths: list[journeys.Truth] = []
    incident = journeys.Incident(INCIDENT_LANE, start + timedelta(days=days / 3),
                                 start + timedelta(days=days / 3 + 2))
    ring = (start + timedelta(days=days / 2), RING_ORDERS)
    records = simulate.stories(settings, count=orders, seed=seed, start=start, days=days,
                               truths=truths, incidents=(incident,), tick_minutes=30, ring=ring)
    outcome = Replay(load_rules(settings)).run(records)
    return score(truths, outcome, horizon=start + timedelta(days=days), incident=incident)


def score(truths: list[journeys.Truth], outcome: Outcome, horizon: datetime,
          incident: journeys.Incident) -> Scores:
    cancelled = {i.order_id for i in outcome.intents if i.kind == "order_cancelled"}
    first_warning: dict[str, str] = {}
    cohort_notices: dict[str, list[str]] = {}  # delay notices of a lane incident
    for intent in outcome.intents:
        if intent.kind == "delay_notice" and intent.shipment_id:
            first_warning.setdefault(intent.shipment_id, intent.created_at)
            if intent.facts.get("lane_incident"):
                cohort_notices.setdefault(intent.shipment_id, []).append(intent.created_at)
    stall_alerts: dict[str, list[str]] = {}
    for alert in outcome.alerts:
        if alert.type == "alert.tracking_stalled" and alert.shipment_id and (
                alert.figures.get("stage") != "before_first_scan"):
            stall_alerts.setdefault(alert.shipment_id, []).append(alert.raised_at)

    end = horizon.isoformat()
    # Scored: parcels whose fate is known inside the horizon, of orders not cancelled.
    scored = [t for t in truths if t.order_id not in cancelled and (
        (t.delivered_at and t.delivered_at <= end) or (t.lost and t.promised <= end))]
    late = [t for t in scored if t.late]
    warned = [t for t in scored if t.shipment_id in first_warning]
    hits = [t for t in late if t.shipment_id in first_warning]

    def lead(t: journeys.Truth) -> float:
        return (datetime.fromisoformat(t.promised)
                - datetime.fromisoformat(first_warning[t.shipment_id])).total_seconds() / 3600

    leads = [lead(t) for t in hits]

    def leads_by(group: Any) -> dict[str, tuple[int, int, float | None]]:
        found = {}
        for name in sorted({group(t) for t in late}):
            of_group = [lead(t) for t in hits if group(t) == name]
            found[name] = (sum(1 for t in late if group(t) == name), len(of_group),
                           statistics.median(of_group) if of_group else None)
        return found

    def eta(t: journeys.Truth) -> str:
        gives = t.lane.split("|")[0] in journeys.GIVE_ETA
        return "with the carrier's ETA" if gives else "without"

    injected = [(t, s) for t in scored for s in t.stalls]
    # Caught: its own stall alert, or (in a lane incident) the lane's cohort delay notice.
    caught = sum(1 for t, (since, until) in injected if any(
        since <= at <= (until or end) for at in
        stall_alerts.get(t.shipment_id, []) + cohort_notices.get(t.shipment_id, [])))
    quiet = [t for t in scored if not t.stalls]
    false = sum(1 for t in quiet if t.shipment_id in stall_alerts)
    lane_alerts = [a for a in outcome.alerts if a.type == "alert.lane_delay"]
    on_lane = {t.shipment_id for t in truths if t.lane == INCIDENT_LANE}
    # After the lane's alert, until a day after the hold-up ended: single alerts would be a storm.
    raised = min((a.raised_at for a in lane_alerts if a.lane == INCIDENT_LANE), default=end)
    window = (raised, (incident.end + timedelta(hours=24)).isoformat())
    risk_alerts = [a for a in outcome.alerts if a.type == "alert.suspicious_orders"]
    ring = {t.order_id for t in truths if t.ring}
    return Scores(
        shipments=len(scored), late=len(late), warned=len(warned),
        precision=len(hits) / len(warned) if warned else 0.0,
        recall=len(hits) / len(late) if late else 0.0,
        median_lead_hours=statistics.median(leads) if leads else None,
        leads_by_cause=leads_by(lambda t: t.cause), leads_by_eta=leads_by(eta),
        stalls=len(injected), stalls_caught=caught,
        false_stall_share=false / len(quiet) if quiet else 0.0,
        incident_parcels=sum(1 for t in scored if t.incident),
        incident_alerts=sum(1 for a in lane_alerts if a.lane == INCIDENT_LANE),
        other_lane_alerts=sum(1 for a in lane_alerts if a.lane != INCIDENT_LANE),
        cohort_notices=sum(len(times) for times in cohort_notices.values()),
        incident_stall_alerts=sum(1 for sid, times in stall_alerts.items() if sid in on_lane
                                  for at in times if window[0] <= at <= window[1]),
        ring_orders=len(ring),
        ring_alerts=sum(1 for a in risk_alerts if set(a.figures["orders"]) <= ring),
        other_risk_alerts=sum(1 for a in risk_alerts if not set(a.figures["orders"]) <= ring),
    )


def write_doc(page: Path, scores: Scores, how: str) -> None:
    """Put the figures between the page's evaluate marks."""
    write_block(page, "evaluate", "Evaluation", f"`{how}`:", scores.lines())
