"""The rules file, parsed into plain typed data."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from decimal import Decimal, InvalidOperation
from typing import Any

from worker.domain.risk import Risk

PRIORITIES = ("urgent", "transactional", "marketing")
CHANNELS = ("email", "sms", "push", "wechat", "webhook", "in_app")


class RulesError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Escalation:
    """An email of the kind not opened (nor clicked) within ``after_minutes`` goes again on
    ``to``: a customer who missed "delivery failed" in their inbox gets an SMS."""

    after_minutes: float
    to: str


@dataclass(frozen=True, slots=True)
class KindRule:
    kind: str
    enabled: bool
    priority: str
    channels: tuple[str, ...]
    expires_after_hours: float
    delay_minutes: float = 0  # wait this long after the trigger (collapse, review, care)
    capped: bool = True  # counts against, and is stopped by, the daily cap
    supersedes: tuple[str, ...] = ()  # held notifications of these kinds are dropped
    trigger: str = ""
    timing: str = ""
    variants: tuple[str, ...] = ()  # an A/B test of the kind's wording
    escalate: Escalation | None = None  # an email nobody opened is followed on another channel

    def variant(self, customer_id: str) -> str | None:
        """The customer's variant: a hash of the customer and the kind, so one customer
        always sees the same wording and the split is even."""
        if not self.variants:
            return None
        digest = hashlib.blake2b(f"{customer_id}\x1f{self.kind}".encode(), digest_size=8).digest()
        return self.variants[int.from_bytes(digest, "big") % len(self.variants)]


@dataclass(frozen=True, slots=True)
class Policy:
    quiet_start: time = time(22, 0)
    quiet_end: time = time(8, 0)
    daily_cap: int = 3
    min_gap_minutes: float = 15
    service_ratio: float = 0.6
    ratio_window_days: int = 30
    label_grace_hours: float = 4
    ship_sla_hours: float = 48
    ship_delay_days: int = 1  # how far past the missed date the apology promises
    failed_attempts_notified: int = 3
    fallback_hours: float = 24  # a channel's permanent failure this soon tries the next one
    bounce_limit: int = 3  # soft bounces in a row that stop email to an address (a hard one: 1)
    keep_days: float = 90  # an order with nothing left to decide is forgotten this long after its last fact


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Prediction:
    """Stale tracking and delay prediction (lanes learn from delivered parcels)."""

    window_days: int = 14  # lane figures cover the last this many days
    min_samples: int = 30  # fewer samples: the broader lane, then the defaults
    min_tail_samples: int = 10  # past stalls a lane needs before it predicts how long one lasts
    stall_quantile: float = 0.95
    stall_floor_hours: float = 24
    stall_default_hours: float = 48
    label_stall_hours: float = 72  # a label printed and never picked up
    stalls_per_shipment: int = 2
    delay_tolerance_hours: float = 12
    delay_confidence: float = 0.35  # warn when even this quantile of the time left is late
    carrier_eta_margin_hours: float = 5  # the carrier's date, less this, is the sure one
    coupon: Mapping[str, Any] = field(default_factory=dict)  # {code, percent}: vip and high value
    incident_min_stalls: int = 8  # stalls in 24 h on one lane, at least, for an incident
    incident_factor: float = 5  # and this many times the lane's usual stalls a day
    incident_hours: float = 24  # after the lane's latest stall, the incident is over
    non_working_days: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # carrier -> weekdays


@dataclass(frozen=True, slots=True)
class Segment:
    enable: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    service_only: bool = False


@dataclass(frozen=True, slots=True)
class HighValue:
    thresholds: Mapping[str, Decimal] = field(default_factory=dict)
    kinds: tuple[str, ...] = ()
    channels: int = 2

    def applies(self, total: Mapping[str, str] | None) -> bool:
        if not total or total.get("currency") not in self.thresholds:
            return False
        return Decimal(total["amount"]) >= self.thresholds[total["currency"]]


@dataclass(frozen=True, slots=True)
class Rules:
    channel_order: tuple[str, ...]
    fallback_locale: str
    kinds: Mapping[str, KindRule]
    policy: Policy = Policy()
    segments: Mapping[str, Segment] = field(default_factory=dict)
    high_value: HighValue = HighValue()
    prediction: Prediction = Prediction()
    risk: Risk = Risk()
    # segment -> the kinds on for it, worked out once: every decision asks.
    _on: dict[str | None, frozenset[str]] = field(default_factory=dict, init=False,
                                                  repr=False, compare=False)

    def kinds_on(self, segment: str | None = None) -> frozenset[str]:
        """The kinds on for a customer of ``segment``."""
        if (on := self._on.get(segment)) is None:
            on = self._on[segment] = frozenset(k for k in self.kinds if self._is_on(k, segment))
        return on

    def _is_on(self, kind: str, segment: str | None) -> bool:
        enabled = self.kinds[kind].enabled
        seg = self.segments.get(segment or "")
        if seg is not None:
            enabled = (enabled or kind in seg.enable) and kind not in seg.disable
        return enabled


def parse(raw: Mapping[str, Any]) -> Rules:
    defaults = raw.get("defaults", {})
    channel_order = tuple(defaults.get("channel_order", CHANNELS))
    _check_channels("defaults.channel_order", channel_order)
    kinds = {kind: _kind(kind, table, channel_order) for kind, table in raw.get("kinds", {}).items()}
    segments = {
        name: Segment(tuple(t.get("enable", ())), tuple(t.get("disable", ())),
                      bool(t.get("service_only", False)))
        for name, t in raw.get("segments", {}).items()
    }
    for name, seg in segments.items():
        _check_kinds(f"segments.{name}", (*seg.enable, *seg.disable), kinds)
    high = raw.get("high_value", {})
    high_value = HighValue(
        {cur: _decimal(f"high_value.thresholds.{cur}", v)
         for cur, v in high.get("thresholds", {}).items()},
        tuple(high.get("kinds", ())), int(high.get("channels", 2)),
    )
    _check_kinds("high_value.kinds", high_value.kinds, kinds)
    return Rules(channel_order, str(defaults.get("fallback_locale", "en")), kinds,
                 _policy(raw.get("policy", {})), segments, high_value,
                 _prediction(raw.get("prediction", {})), _risk(raw.get("risk", {})))


def _kind(kind: str, table: Mapping[str, Any], channel_order: tuple[str, ...]) -> KindRule:
    where = f"kinds.{kind}"
    priority = table.get("priority", "transactional")
    if priority not in PRIORITIES:
        raise RulesError(f"{where}.priority: {priority!r} is not one of {', '.join(PRIORITIES)}")
    channels = tuple(table.get("channels", channel_order))
    _check_channels(f"{where}.channels", channels)
    return KindRule(
        kind=kind,
        enabled=bool(table.get("enabled", True)),
        priority=priority,
        channels=channels,
        expires_after_hours=float(table.get("expires_after_hours", 72)),
        delay_minutes=float(table.get("delay_minutes", 0)),
        capped=bool(table.get("capped", priority != "urgent")),
        supersedes=tuple(table.get("supersedes", ())),
        trigger=str(table.get("trigger", "")),
        timing=str(table.get("timing", "")),
        variants=tuple(str(v) for v in table.get("variants", ())),
        escalate=_escalation(where, table.get("escalate")),
    )


def _escalation(where: str, table: Mapping[str, Any] | None) -> Escalation | None:
    if table is None:
        return None
    to = str(table.get("to", ""))
    _check_channels(f"{where}.escalate.to", (to,))
    if to == "email":
        raise RulesError(f"{where}.escalate.to: an unopened email escalates to another channel")
    return Escalation(float(table.get("after_minutes", 120)), to)


def _policy(table: Mapping[str, Any]) -> Policy:
    quiet = table.get("quiet_hours", {})
    try:
        return Policy(
            quiet_start=time.fromisoformat(quiet.get("start", "22:00")),
            quiet_end=time.fromisoformat(quiet.get("end", "08:00")),
            **{k: table[k] for k in (
                "daily_cap", "min_gap_minutes", "service_ratio", "ratio_window_days",
                "label_grace_hours", "ship_sla_hours", "ship_delay_days",
                "failed_attempts_notified", "fallback_hours", "bounce_limit", "keep_days") if k in table},
        )
    except (TypeError, ValueError) as error:
        raise RulesError(f"policy: {error}") from None


def _prediction(table: Mapping[str, Any]) -> Prediction:
    days = {}
    for carrier, names in table.get("non_working_days", {}).items():
        unknown = [n for n in names if n not in WEEKDAYS]
        if unknown:
            raise RulesError(f"prediction.non_working_days.{carrier}: unknown day(s) "
                             f"{', '.join(unknown)} (use {', '.join(WEEKDAYS)})")
        days[carrier] = tuple(WEEKDAYS.index(n) for n in names)
    try:
        return Prediction(**{k: v for k, v in table.items() if k != "non_working_days"},
                          non_working_days=days)
    except TypeError as error:
        raise RulesError(f"prediction: {error}") from None


def _risk(table: Mapping[str, Any]) -> Risk:
    try:
        return Risk(**table)
    except TypeError as error:
        raise RulesError(f"risk: {error}") from None


def _decimal(where: str, value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise RulesError(f"{where}: {value!r} is not a decimal amount") from None


def _check_channels(where: str, channels: tuple[str, ...]) -> None:
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown:
        raise RulesError(f"{where}: unknown channel(s) {', '.join(unknown)}")


def _check_kinds(where: str, names: tuple[str, ...], kinds: Mapping[str, KindRule]) -> None:
    unknown = [k for k in names if k not in kinds]
    if unknown:
        raise RulesError(f"{where}: unknown kind(s) {', '.join(unknown)}")
