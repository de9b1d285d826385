"""Prometheus metrics. Labels are bounded: topic, event type, reason, kind, channel, provider."""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics, generate_latest,
)

from worker.domain.milestones import carrier_table

disable_created_metrics()
registry = CollectorRegistry()

build_info = Info("notifier_build", "Version of the running program", registry=registry)
try:
    build_info.info({"version": version("order-notifier")})
except PackageNotFoundError:
    build_info.info({"version": "unknown"})
events_consumed = Counter(
    "notifier_events_consumed_total", "Input events read", ["topic", "type"], registry=registry
)
invalid_inputs = Counter(
    "notifier_invalid_inputs_total", "Inputs that could not be used", ["topic", "reason"],
    registry=registry,
)
dlq_writes = Counter(
    "notifier_dlq_writes_total", "Records written to the dead-letter topic", ["topic"],
    registry=registry,
)
duplicates = Counter(
    "notifier_duplicate_events_total", "Inputs seen before, with no second effect", ["topic"],
    registry=registry,
)
decided = Counter(
    "notifier_notifications_decided_total", "Notifications decided by the order stage", ["kind"],
    registry=registry,
)
dispatched = Counter(
    "notifier_notifications_dispatched_total", "Notification commands sent to a channel",
    ["kind", "channel"], registry=registry,
)
suppressed = Counter(
    "notifier_notifications_suppressed_total", "Notifications not sent, by reason",
    ["kind", "reason"], registry=registry,
)
fallbacks = Counter(
    "notifier_notification_fallbacks_total",
    "Notifications handed to the next channel after a permanent failure on this one",
    ["kind", "channel"], registry=registry,
)
outcomes = Counter(
    "notifier_notifications_total", "Final outcomes of notifications at the senders",
    ["kind", "channel", "outcome"], registry=registry,
)
provider_calls = Counter(
    "notifier_provider_calls_total", "Calls to providers", ["provider", "outcome"],
    registry=registry,
)
send_seconds = Histogram(
    "notifier_send_duration_seconds", "Time of one provider call", ["provider"], registry=registry,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
event_to_send_seconds = Histogram(
    "notifier_event_to_send_seconds", "From the causing input's arrival to provider acceptance",
    ["channel"], registry=registry,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

held = Counter(
    "notifier_notifications_held_total",
    "Notifications held for quiet hours or the gap between updates of one order", ["kind"],
    registry=registry,
)
alerts_raised = Counter(
    "notifier_alerts_total", "Alerts written to ops.alerts", ["type"], registry=registry,
)
unknown_statuses = Counter(
    "notifier_unknown_carrier_status_total",
    "Checkpoints whose carrier status code has no mapping (kept, milestone unchanged)",
    ["source"], registry=registry,
)
retries_waiting = Gauge(
    "notifier_retries_waiting", "Notifications on the retry topic waiting for their next attempt",
    ["channel"], registry=registry,
)
circuit_open = Gauge(
    "notifier_circuit_open", "1 while a provider's circuit breaker is open or half-open",
    ["provider"], registry=registry,
)
stalled_shipments = Counter(
    "notifier_stalled_shipments_total", "Parcels found stalled (silent past their lane's threshold)",
    ["carrier"], registry=registry,
)
agent_errors = Counter(
    "notifier_agent_errors_total", "Unexpected errors while processing an input (it goes to the DLQ)",
    ["stage"], registry=registry,
)
ready = Gauge(
    "notifier_ready", "1 while this worker has partitions and is neither rebalancing nor recovering",
    registry=registry,
)
partition_rereads = Counter(
    "notifier_partition_rereads_total", "Input partitions read again from their frontier: records "
    "past it were fetched and not handled (reason: later_came_first, none_came)", ["topic", "reason"],
    registry=registry,
)
table_recovery_seconds = Histogram(
    "notifier_table_recovery_seconds", "Time a worker spent recovering its tables after a rebalance",
    registry=registry, buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)

orders_forgotten = Counter(
    "notifier_orders_forgotten", "Orders whose state was deleted: nothing left to decide, "
    "kept for the rules' keep_days after their last fact", registry=registry,
)
active_shipments = Gauge(
    "notifier_active_shipments", "Parcels on their way (not delivered, returned or cancelled) in "
    "the order partitions this worker owns", registry=registry,
)
lane_delay_ratio = Gauge(
    "notifier_lane_delay_ratio", "Share of a carrier's parcels that stalled over the lanes' window "
    "(known carriers, else other)", ["carrier"], registry=registry,
)
lookups = Counter(
    "notifier_tracking_lookups_total", "Tracking-page lookups by outcome (found, not_found, "
    "expired, forged, rate_limited, forwarded)", ["outcome"], registry=registry,
)
engagement = Counter(
    "notifier_engagement_events_total", "Notification outcomes and engagement counted, by kind, "
    "channel, template variant and event (sent, delivered, opened, clicked, bounced, …)",
    ["kind", "channel", "variant", "event"], registry=registry,
)

# ``labels()`` takes a lock and checks its arguments on every call (a few per cent of the
# senders' CPU). The labels are bounded, so each metric keeps the children it has made.
for _metric in [m for m in list(globals().values()) if isinstance(m, (Counter, Gauge, Histogram))]:
    _metric.labels = functools.cache(_metric.labels)  # type: ignore[method-assign]


KNOWN_CARRIERS = frozenset(carrier_table())


def carrier(slug: str) -> str:
    """A carrier as a label: one the carrier table knows, or ``other``. Inputs name any."""
    return slug if slug in KNOWN_CARRIERS else "other"


def exposition() -> bytes:
    return generate_latest(registry)
