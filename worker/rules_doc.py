"""Writes docs/notifications.md from the rules file: ``python -m worker.rules_doc``.

tests/unit/test_rules_doc.py fails when the page and the rules drift apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

from worker.domain.rules import Rules
from worker.settings import PROJECT_ROOT, Settings
from worker.stream import load_rules

PAGE = PROJECT_ROOT / "docs" / "notifications.md"


def markdown(rules: Rules) -> str:
    lines = [
        "# Notifications",
        "",
        "Generated from `worker/rules.toml` by `python -m worker.rules_doc`; do not edit by hand.",
        "Point `NOTIFIER_RULES` at a copy of the rules file to change any of this.",
        "",
        f"Default channel order (when the customer chose none): {', '.join(rules.channel_order)}.",
        f"Language: the customer's locale (zh-CN, zh-TW, en catalogs), else `{rules.fallback_locale}`.",
        "",
        "| kind | on | priority | channels | trigger | timing | expires after | A/B variants |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rule in rules.kinds.values():
        lines.append(
            f"| `{rule.kind}` | {'yes' if rule.enabled else 'no'} | {rule.priority} | "
            f"{', '.join(rule.channels)} | {rule.trigger} | {rule.timing} | "
            f"{rule.expires_after_hours:g} h | {', '.join(rule.variants) or '–'} |"
        )
    p, high = rules.policy, rules.high_value
    lines += [
        "",
        "## Policy",
        "",
        f"- Quiet hours {p.quiet_start:%H:%M}–{p.quiet_end:%H:%M} in the customer's own timezone "
        "(their `quiet_hours` preference overrides it): urgent goes at once, transactional waits "
        "for the end, marketing waits and is dropped (`quiet_hours_expired`) if it expires first.",
        f"- At most {p.daily_cap} non-urgent notifications per customer per local day "
        "(`frequency_capped`); kinds marked uncapped count but are never stopped.",
        f"- Two non-urgent updates of one order at least {p.min_gap_minutes:g} minutes apart "
        "(the later one waits).",
        f"- Service messages stay at least {p.service_ratio:.0%} of what a customer got in "
        f"{p.ratio_window_days} days (`marketing_ratio`); marketing needs `marketing_opt_in`.",
        f"- `shipped` without a carrier scan: {p.label_grace_hours:g} h after the label. "
        f"Not shipped {p.ship_sla_hours:g} h after payment (or by `promised_ship_by`): "
        f"`ship_delayed` promising {p.ship_delay_days} more day(s), and `alert.ship_sla_breached`.",
        f"- At most {p.failed_attempts_notified} `delivery_failed` per parcel.",
        "- Fallback: a channel that fails for good (bounced address, rejected by the provider, "
        f"retries exhausted) within {p.fallback_hours:g} h of the send hands the notification to "
        "the customer's next channel, with the id `<id>-fallback`.",
        "- A tombstone on `customers.preferences` erases the customer: held notifications are "
        "suppressed (`erased`) and orders placed before it stay silent.",
        f"- Engagement: an unsubscribe click ends marketing; a hard bounce, or {p.bounce_limit} "
        "soft bounces in a row, stops email to that address until a new one comes.",
        f"- An order with nothing left to decide is forgotten {p.keep_days:g} days after its last "
        "fact (its state deleted, so the worker's memory stays bounded): its tracking page "
        "answers until then, and a late or repeated event within that time is still recognised.",
        *(f"- `{r.kind}` by email not opened within {r.escalate.after_minutes:g} minutes goes "
          f"again by {r.escalate.to} (the id `<id>-escalated`)."
          for r in rules.kinds.values() if r.escalate),
        "",
        "High-value orders (total at or above "
        + ", ".join(f"{amount} {cur}" for cur, amount in high.thresholds.items())
        + f"): {', '.join(f'`{k}`' for k in high.kinds)} go on {high.channels} channels, and "
        "exceptions raise `alert.high_value_exception`.",
        "",
        "Stale tracking and delays ([prediction.md](prediction.md)): a moving parcel has stalled "
        f"after the {rules.prediction.stall_quantile:.0%} quantile of its lane's silences in the "
        f"same leg (at least {rules.prediction.stall_floor_hours:g} h; "
        f"{rules.prediction.stall_default_hours:g} h while the lane has fewer than "
        f"{rules.prediction.min_samples} samples), not counting the carrier's days off "
        + (", ".join(f"{c}: {'/'.join(('mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun')[d] for d in days)}"
                     for c, days in rules.prediction.non_working_days.items()) or "none")
        + f"; at most {rules.prediction.stalls_per_shipment} stalls told per parcel; a label never "
        f"picked up raises its own alert after {rules.prediction.label_stall_hours:g} h. "
        f"`delay_notice` when the predicted delivery passes the promise by more than "
        f"{rules.prediction.delay_tolerance_hours:g} h.",
        "",
        "Segments (`customer.segment` of the order):",
        "",
    ]
    for name, seg in rules.segments.items():
        changes = [f"also {', '.join(f'`{k}`' for k in seg.enable)}" if seg.enable else "",
                   f"not {', '.join(f'`{k}`' for k in seg.disable)}" if seg.disable else "",
                   "service messages only" if seg.service_only else ""]
        lines.append(f"- `{name}`: {'; '.join(c for c in changes if c) or 'the defaults'}.")
    lines += [
        "",
        "## Channel choice",
        "",
        "The first channel, in the customer's order, that the kind allows, the",
        "customer opted into (`customer.preferences_updated`), and has a recipient (email address,",
        "E.164 phone, push token, WeChat openid). None left: `notification.suppressed` with reason",
        "`opted_out` or `no_reachable_channel`.",
        "",
        "What each channel carries: email the whole message, HTML and plain text, with the",
        "tracking link; SMS, push and in-app the news in a line or two (the shop, what happened,",
        "the carrier and tracking number, and for `shipped` when to expect the parcel); WeChat its",
        "template's fields. An SMS ends with a short link (`/s/` and a 12-character code, see",
        "[tracking.md](tracking.md)) and keeps to two segments: where the news and the link would",
        "take more, it carries the subject and the link.",
        "",
        "Ids: `notification_id` is a hash of the order, the kind and the occasion, so a replay or a",
        "redelivery never yields a second notification.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    text = markdown(load_rules(Settings()))
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if PAGE.read_text() == text else 1)
    Path(PAGE).write_text(text)
    print(f"wrote {PAGE}")
