"""The rules file, parsed into plain typed data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from decimal import Decimal, InvalidOperation
from typing import Any

PRIORITIES = ("urgent", "transactional", "marketing")
CHANNELS = ("email", "sms", "push", "wechat", "webhook", "in_app")


class RulesError(ValueError):
    pass


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

    def kind(self, kind: str, segment: str | None = None) -> KindRule | None:
        """The kind's rule when it is on for a customer of ``segment``, else None."""
        rule = self.kinds.get(kind)
        if rule is None:
            return None
        enabled = rule.enabled
        seg = self.segments.get(segment or "")
        if seg is not None:
            enabled = (enabled or kind in seg.enable) and kind not in seg.disable
        return rule if enabled else None


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
                 _policy(raw.get("policy", {})), segments, high_value)


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
    )


def _policy(table: Mapping[str, Any]) -> Policy:
    quiet = table.get("quiet_hours", {})
    try:
        return Policy(
            quiet_start=time.fromisoformat(quiet.get("start", "22:00")),
            quiet_end=time.fromisoformat(quiet.get("end", "08:00")),
            **{k: table[k] for k in (
                "daily_cap", "min_gap_minutes", "service_ratio", "ratio_window_days",
                "label_grace_hours", "ship_sla_hours", "ship_delay_days",
                "failed_attempts_notified") if k in table},
        )
    except (TypeError, ValueError) as error:
        raise RulesError(f"policy: {error}") from None


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
