"""The engagement loop's figures: per kind, channel and template variant, how many
notifications were sent, failed, delivered, bounced and unsubscribed from; how many times
they were opened and clicked, and how many of them were (``unique_opened``,
``unique_clicked``): the rates people compare variants by are of those.

Each customer partition counts its own events; the figures of all partitions add up
(:func:`summary`), so any worker can answer for the whole stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

COUNTED = {
    "notification.sent": "sent",
    "notification.failed": "failed",
    "notification.delivered": "delivered",
    "notification.opened": "opened",
    "notification.clicked": "clicked",
    "notification.bounced": "bounced",
    "notification.unsubscribed": "unsubscribed",
}
REPEATABLE = frozenset({"opened", "clicked"})  # counted each time; the rest once a notification
FIGURES = (*COUNTED.values(), *(f"unique_{name}" for name in sorted(REPEATABLE)))
ENGAGEMENT_TYPES = frozenset(COUNTED) - {"notification.sent", "notification.failed"}


def key(data: Mapping[str, Any]) -> str:
    """What the figures are kept by: ``kind|channel|variant`` (``-`` without a variant)."""
    return f"{data.get('kind') or '-'}|{data.get('channel') or '-'}|{data.get('variant') or '-'}"


def counts(event_type: str, first: bool) -> bool:
    """Does the event count in the figures? Not a second delivery, bounce or unsubscribe
    of the same notification; every open and click does."""
    return first or COUNTED[event_type] in REPEATABLE


def count(figures: Mapping[str, int] | None, event_type: str, first: bool = True) -> dict[str, int]:
    """The figures with one more event of ``event_type``, the ``first`` of its type about
    its notification or not (see :func:`counts`)."""
    counted = {name: 0 for name in FIGURES} | dict(figures or {})
    name = COUNTED[event_type]
    if counts(event_type, first):
        counted[name] += 1
    if first and name in REPEATABLE:
        counted[f"unique_{name}"] += 1
    return counted


def summary(partials: Iterable[tuple[str, Mapping[str, int]]]) -> list[dict[str, Any]]:
    """Partial figures (``kind|channel|variant`` and counts) added up, with the rates a
    person compares variants by: the notifications opened, clicked and bounced per
    notification sent."""
    totals: dict[str, dict[str, int]] = {}
    for figures_key, figures in partials:
        total = totals.setdefault(figures_key, {name: 0 for name in FIGURES})
        for name in FIGURES:
            total[name] += int(figures.get(name, 0))
    rows = []
    for figures_key, total in sorted(totals.items()):
        kind, channel, variant = figures_key.split("|")
        sent = total["sent"]
        rates = {f"{name}_rate": round(total[counted] / sent, 4) if sent else None
                 for name, counted in (("opened", "unique_opened"), ("clicked", "unique_clicked"),
                                       ("bounced", "bounced"))}
        rows.append({"kind": kind, "channel": channel, "variant": None if variant == "-" else variant,
                     **total, **rates})
    return rows
