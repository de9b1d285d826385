"""The rules file, parsed into plain typed data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
    trigger: str
    timing: str


@dataclass(frozen=True, slots=True)
class Rules:
    channel_order: tuple[str, ...]
    fallback_locale: str
    kinds: Mapping[str, KindRule]

    def kind(self, kind: str) -> KindRule | None:
        rule = self.kinds.get(kind)
        return rule if rule is not None and rule.enabled else None


def parse(raw: Mapping[str, Any]) -> Rules:
    defaults = raw.get("defaults", {})
    channel_order = tuple(defaults.get("channel_order", CHANNELS))
    _check_channels("defaults.channel_order", channel_order)
    kinds = {}
    for kind, table in raw.get("kinds", {}).items():
        where = f"kinds.{kind}"
        priority = table.get("priority", "transactional")
        if priority not in PRIORITIES:
            raise RulesError(f"{where}.priority: {priority!r} is not one of {', '.join(PRIORITIES)}")
        channels = tuple(table.get("channels", channel_order))
        _check_channels(f"{where}.channels", channels)
        kinds[kind] = KindRule(
            kind=kind,
            enabled=bool(table.get("enabled", True)),
            priority=priority,
            channels=channels,
            expires_after_hours=float(table.get("expires_after_hours", 72)),
            trigger=str(table.get("trigger", "")),
            timing=str(table.get("timing", "")),
        )
    return Rules(channel_order, str(defaults.get("fallback_locale", "en")), kinds)


def _check_channels(where: str, channels: tuple[str, ...]) -> None:
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown:
        raise RulesError(f"{where}: unknown channel(s) {', '.join(unknown)}")
